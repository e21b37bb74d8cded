"""Judges and the frozen text encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.data.build import build_caption_dataset
from lib.data.caption_dataset import load_split
from lib.judges.classifier import DomainClassifier, evaluate_classifier, train_classifier
from lib.judges.contrastive import ContrastiveJudge
from lib.store import repo_root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    build_caption_dataset(repo_root() / "data" / "fashion-mnist", out, seed=0,
                          max_per_split={"train": 512, "val": 64, "test": 256}, write_fashioniq=False)
    return {s: load_split(out, s) for s in ("train", "test")}


def test_classifier_learns_colour_far_above_chance(tiny, tmp_path):
    model, hist = train_classifier(tiny["train"], tmp_path / "clf.safetensors", steps=60, batch_size=64,
                                   lr=1e-2, width=8, progress=False)
    ev = evaluate_classifier(model, tiny["test"])
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert ev["accuracy_colour"] > 0.5          # chance is 0.1
    assert np.array(ev["confusion_category"]).sum() == 256


def test_classifier_outputs(tiny):
    model = DomainClassifier(8)
    x = torch.randn(5, 3, 32, 32)
    pred = model.predict(x)
    assert pred["features"].shape == (5, 256)
    assert torch.allclose(pred["probs_colour"].sum(-1), torch.ones(5))


def test_infonce_aligned_batch_beats_shuffled():
    torch.manual_seed(0)
    judge = ContrastiveJudge(width=8, embed_dim=16)
    images = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        # texts constructed to match: aligned pairs share a direction after projection
        img = judge.embed_images(images)
    text = torch.randn(16, 384)
    opt = torch.optim.Adam(judge.text_proj.parameters(), lr=1e-2)
    for _ in range(200):  # fit the text projection to the image embeddings
        loss = ((judge.embed_texts(text) - img) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        aligned = judge.loss(images, text)
        shuffled = judge.loss(images, text[torch.randperm(16, generator=torch.Generator().manual_seed(1))])
    assert aligned < shuffled


def test_text_encoder_is_real_and_frozen():
    from lib.text.encoder import shared_encoder

    enc = shared_encoder()
    out = enc(["a red striped dress", "striped dress in red", "a black plain ankle boot"])
    assert out["tokens"].shape == (3, enc.max_length, 384)
    assert torch.allclose(out["pooled"].norm(dim=-1), torch.ones(3), atol=1e-5)
    sim = out["pooled"] @ out["pooled"].T
    assert sim[0, 1] > sim[0, 2] + 0.2         # a real pretrained encoder: paraphrases are close
    assert not any(p.requires_grad for p in enc.parameters())
    batch = enc.encode(["a red striped dress", "a black plain ankle boot", "tee"], batch_size=2)
    assert torch.allclose(batch["pooled"][0], out["pooled"][0], atol=1e-5)
    assert torch.allclose(batch["pooled"][1], out["pooled"][2], atol=1e-5)


def test_judge_scorer_interface_and_open_clip_missing_file(tmp_path):
    from lib.judges.contrastive import clip_score_texts, judge_scorer, open_clip_scorer

    judge = ContrastiveJudge(width=8, embed_dim=16)
    out = clip_score_texts(judge_scorer(judge), torch.randn(3, 3, 32, 32), ["a red dress", "a bag", "a boot"])
    assert out["per_sample"].shape == (3,) and -1 <= out["clip_score"] <= 1 and "MiniLM" in out["network"]
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        judge_scorer(judge)(torch.randn(3, 3, 32, 32), ["a", "b"])
    with pytest.raises(FileNotFoundError, match=r"clip\.pt: CLIP checkpoint not found"):
        open_clip_scorer("ViT-B-32", tmp_path / "clip.pt")
