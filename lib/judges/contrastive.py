"""In-domain contrastive image-text judge: our stand-in for CLIP when scoring CLIP-score.

Its own conv image encoder and the *frozen pretrained* MiniLM sentence encoder
(:mod:`lib.text.encoder`), each followed by a learned projection into a shared space, trained with
the symmetric InfoNCE loss of CLIP (Radford et al. 2021, Eq. in Fig. 3's pseudo-code) with a learnable
temperature. CLIP-score is then the raw cosine similarity of image and text embeddings -- the scale
M6-Fashion and Muse report (~0.3 for real CLIP); ours is not comparable in absolute value, which the
tables say in words.

Where a user supplies a real CLIP checkpoint, :func:`open_clip_scorer` loads it from a local path
through ``open_clip`` and returns a scorer with the same call signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.io import AtelierInputError
from lib.judges.backbone import ConvEncoder, images_to_tensor
from lib.text.encoder import shared_encoder
from lib.training import ResumableTrainer, arch_of, batch_indices, load_model_weights, lr_factor, set_lr

TEXT_DIM = 384  # MiniLM sentence embedding


class ContrastiveJudge(nn.Module):
    def __init__(self, width: int = 32, embed_dim: int = 128):
        super().__init__()
        self.hparams = {"width": width, "embed_dim": embed_dim}
        self.image_encoder = ConvEncoder(width, 256)
        self.image_proj = nn.Linear(256, embed_dim)
        self.text_proj = nn.Sequential(nn.Linear(TEXT_DIM, 256), nn.SiLU(), nn.Linear(256, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))

    @property
    def arch(self) -> dict:
        return arch_of("contrastive_judge", text_encoder="all-MiniLM-L6-v2", **self.hparams)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.image_encoder(images)), dim=-1)

    def embed_texts(self, pooled_text: torch.Tensor) -> torch.Tensor:
        """From frozen MiniLM sentence embeddings ``[B, 384]``."""
        return F.normalize(self.text_proj(pooled_text), dim=-1)

    def loss(self, images: torch.Tensor, pooled_text: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the batch (matching pairs on the diagonal)."""
        img, txt = self.embed_images(images), self.embed_texts(pooled_text)
        logits = self.logit_scale.clamp(max=np.log(100)).exp() * img @ txt.T
        target = torch.arange(len(img), device=img.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def train_judge(train: dict, caption_ids: np.ndarray, text_table: torch.Tensor, ckpt_path: str | Path, *,
                steps: int, batch_size: int = 128, lr: float = 2e-3, seed: int = 0, width: int = 32,
                embed_dim: int = 128, device: str = "cpu", progress: bool = True):
    """Train (or resume). ``caption_ids[i, j]`` indexes ``text_table`` (MiniLM embeddings of unique captions)
    for caption ``j`` of image ``i``; each step pairs every image with one of its captions at random."""
    torch.manual_seed(seed)
    model = ContrastiveJudge(width, embed_dim).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n_caps = caption_ids.shape[1]

    def step_fn(step: int) -> dict:
        set_lr(opt, lr * lr_factor(step, steps, min(50, steps)))
        idx = batch_indices(len(train["images"]), batch_size, step, seed)
        pick = torch.randint(n_caps, (len(idx),)).numpy()
        text = text_table[caption_ids[idx, pick]].to(device)
        loss = model.loss(images_to_tensor(train["images"][idx], device), text)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "temperature": float(1 / model.logit_scale.detach().exp())}

    trainer = ResumableTrainer(model, opt, ckpt_path, model.arch, seed, steps, ckpt_every=max(50, steps // 10),
                               desc="contrastive judge")
    history = trainer.run(step_fn, progress=progress)
    return model.eval(), history


def load_judge(ckpt_path: str | Path, width: int = 32, embed_dim: int = 128, device: str = "cpu") -> ContrastiveJudge:
    model = ContrastiveJudge(width, embed_dim)
    return load_model_weights(model, ckpt_path, model.arch).to(device)


@torch.no_grad()
def clip_score(judge: ContrastiveJudge, images: torch.Tensor, pooled_text: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Per-pair raw cosine between images ``[N,3,H,W]`` in [-1,1] and their texts' MiniLM embeddings ``[N,384]``."""
    judge.eval()
    device = next(judge.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        img = judge.embed_images(images[i:i + batch_size].to(device))
        txt = judge.embed_texts(pooled_text[i:i + batch_size].to(device))
        out.append((img * txt).sum(-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def evaluate_judge(judge: ContrastiveJudge, arrays: dict, pooled_text: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Held-out quality: text->image retrieval where a hit is an image with the caption's exact
    (category, colour, pattern), since many images share a composition; plus the gap between
    matched and mismatched CLIP-scores."""
    images = images_to_tensor(arrays["images"])
    img = torch.cat([judge.embed_images(images[i:i + 512]) for i in range(0, len(images), 512)])
    txt = judge.embed_texts(pooled_text)
    sim = txt @ img.T
    attrs = np.stack([arrays["category"], arrays["colour"], arrays["pattern"]], 1)
    same = torch.as_tensor((attrs[:, None, :] == attrs[None, :, :]).all(-1))
    order = sim.argsort(dim=1, descending=True)
    result = {}
    for k in ks:
        hit = torch.gather(same, 1, order[:, :k]).any(1)
        result[f"text_to_image_attribute_recall@{k}"] = float(hit.float().mean())
    matched = sim.diag()
    shuffled = sim[torch.arange(len(sim)), torch.randperm(len(sim), generator=torch.Generator().manual_seed(0))]
    result["clip_score_matched"] = float(matched.mean())
    result["clip_score_shuffled"] = float(shuffled.mean())
    return result


def judge_scorer(judge: ContrastiveJudge) -> Callable:
    """The in-domain judge as a text scorer: ``score(images [-1,1] [N,3,H,W], texts) -> cosine [N]``.

    Texts go through the same frozen MiniLM the judge was trained on. Together with
    :func:`open_clip_scorer` this gives one interface, so tables call :func:`clip_score_texts`
    the same way whichever network scores them.
    """
    def score(images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        if len(images) != len(texts):
            raise AtelierInputError(f"clip score: {len(images)} images but {len(texts)} texts")
        return clip_score(judge, images, shared_encoder().encode(list(texts))["pooled"])

    score.network = "in-domain contrastive judge (own conv encoder + frozen all-MiniLM-L6-v2)"
    return score


def clip_score_texts(scorer: Callable, images: torch.Tensor, texts: list[str]) -> dict:
    """Mean and per-sample CLIP-score (raw cosine) of ``images`` against their ``texts``."""
    per = scorer(images, list(texts))
    return {"clip_score": float(per.mean()), "per_sample": per, "network": getattr(scorer, "network", "unknown"),
            "num_samples": len(per)}


def open_clip_scorer(model_name: str, checkpoint: str | Path, device: str = "cpu") -> Callable:
    """A real CLIP from a *local* checkpoint via open_clip (nothing is downloaded).

    Returns ``score(images [-1,1] [N,3,H,W], texts: list[str]) -> cosine [N]``.
    """
    # optional: only a local CLIP checkpoint for CLIP-score needs open_clip
    import open_clip

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: CLIP checkpoint not found (open_clip loads only local files here)")
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(checkpoint), device=device)
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size

    @torch.no_grad()
    def score(images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        x = F.interpolate((images.to(device) + 1) / 2, size=(size, size), mode="bicubic", align_corners=False)
        img = F.normalize(model.encode_image((x - mean) / std), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(texts).to(device)), dim=-1)
        return (img * txt).sum(-1).cpu()

    score.network = f"open_clip {model_name} from {checkpoint}"
    return score
