"""lib.pipelines.garment: the three-line inference API the README shows (issue 20)."""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lib.generation import ARTransformer, Condition, MaskedTokenTransformer, TransformerConfig
from lib.images import to_uint8_hwc
from lib.io import AtelierInputError
from lib.pipelines.garment import ComposedSearch, GarmentPipeline
from lib.store import repo_root
from tests.test_unifashion import PatchTokenizer

SAMPLING = {"maskgit_steps": 4, "smart_T": 3, "smart_alpha": 0.8, "smart_beta": 0.2, "temperature": 1.0,
            "choice_temperature": 4.5, "top_k": 4}


def fake_encode(prompts):
    """Deterministic text features per prompt (the real encoder is MiniLM; not needed to test wiring)."""
    feats = []
    for p in prompts:
        g = torch.Generator().manual_seed(sum(map(ord, p)))
        feats.append(torch.randn(5, 384, generator=g))
    return Condition(text_tokens=torch.stack(feats), text_mask=torch.ones(len(prompts), 5, dtype=torch.bool))


def pipe(kind="masked"):
    torch.manual_seed(0)
    cfg = TransformerConfig(grid_h=4, grid_w=4, channels=1, codebook_size=8, dim=32, depth=1, heads=2,
                            text_mode="cross_attention", max_text_len=12)
    model = (MaskedTokenTransformer if kind == "masked" else ARTransformer)(cfg)
    return GarmentPipeline(model, PatchTokenizer(), sampling=SAMPLING, name=kind, encode=fake_encode)


def test_text_to_image_gives_uint8_images_reproducible_by_seed():
    p = pipe()
    a = p.text_to_image(["a red dress", "a blue shoe", "a bag"], seed=3)
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, p.text_to_image(["a red dress", "a blue shoe", "a bag"], seed=3))
    g = p.text_to_image(["a red dress"], sampler="maskgit", guidance=3.0, negative_prompts=["a grey dress"], seed=3)
    assert g.shape == (1, 32, 32, 3)


def test_autoregressive_generator_uses_its_own_sampler_and_refuses_masked_tasks():
    p = pipe("ar")
    assert p.text_to_image(["a red dress"], seed=0).shape == (1, 32, 32, 3)
    with pytest.raises(AtelierInputError, match="autoregressive"):
        p.text_to_image(["a red dress"], sampler="smart")
    with pytest.raises(AtelierInputError, match="masked generator"):
        p.inpaint(np.zeros((1, 32, 32, 3), np.uint8), (0, 0, 8, 8), ["x"])


def test_inpaint_keeps_every_pixel_outside_the_widened_box():
    p = pipe()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    out = p.inpaint(images, (9, 9, 5, 5), ["a red dress", "a blue shoe"], seed=1)  # widened to pixels 8..16
    kept = to_uint8_hwc(p.decoder.decode_indices(p.tokenizer.tokenize(
        torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)))
    outside = np.ones((32, 32), bool)
    outside[8:16, 8:16] = False
    assert np.array_equal(out[:, outside], kept[:, outside])


@pytest.mark.parametrize("call, message", [
    (lambda p: p.text_to_image([]), "non-empty"),
    (lambda p: p.text_to_image(["a"], sampler="ddim"), "sampler"),
    (lambda p: p.text_to_image(["a", "b"], guidance=2.0, negative_prompts=["c"]), "one per prompt"),
    (lambda p: p.text_to_image(["a"], negative_prompts=["c"]), "guidance > 0"),
    (lambda p: p.inpaint(np.zeros((1, 32, 32, 3), np.uint8), (30, 30, 5, 5), ["a"]), "not inside"),
    (lambda p: p.inpaint(np.zeros((1, 32, 32), np.uint8), (0, 0, 4, 4), ["a"]), "uint8"),
    (lambda p: p.save(np.zeros((2, 8, 8), np.float32), "x.png"), "uint8"),
])
def test_bad_input_is_refused_by_name(call, message):
    with pytest.raises(AtelierInputError, match=message):
        call(pipe())


def test_save_writes_a_grid_png(tmp_path):
    images = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (0, 100, 200)])
    path = GarmentPipeline.save(images, tmp_path / "grid.png", columns=2, pad=0)
    with Image.open(path) as im:
        arr = np.asarray(im)
    assert arr.shape == (16, 16, 3)
    assert (arr[:8, 8:16] == 100).all() and (arr[8:, 8:] == 255).all()  # second image; empty cell is white


def test_readme_inference_snippet_runs_against_the_pipeline(tmp_path, monkeypatch):
    """The README's inference block, executed with from_trained replaced by tiny random weights:
    it must call only what lib.pipelines.garment offers, with arguments it accepts."""
    readme = (repo_root() / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "GarmentPipeline" in b]
    assert blocks, "README.md: no python block using GarmentPipeline"
    ast.parse(blocks[0])
    # four token groups, as m6's PQ style tokenizer has (the README mixes groups 2 and 3)
    four = ((0,), (1,), (2,), (0, 1, 2))
    monkeypatch.setattr(GarmentPipeline, "from_trained", classmethod(lambda cls, *a, **k: two_group_pipe(four)))
    monkeypatch.setattr(ComposedSearch, "from_trained", classmethod(lambda cls, *a, **k: composed_search()))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - the repository's own README
    assert list(tmp_path.glob("*.png")), "the README snippet saves no image"
    assert namespace["rows"].shape == (1, 3), "the README's composed search gives no top-3 rows"


class GroupTokenizer(torch.nn.Module):
    """A stand-in PQ tokenizer: token group g of each 8x8 patch is the mean level (8 bins) of the RGB
    channels ``planes[g]``, so which group came from which image can be read off the pixels."""

    vocab_size = 8

    def __init__(self, planes=((0,), (1, 2))):
        super().__init__()
        self.planes = planes
        self.token_shape = (4, 4, len(planes))
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    @torch.no_grad()
    def tokenize(self, x):
        levels = torch.stack([x[:, list(c)].mean(1) for c in self.planes], 1)
        return ((F.avg_pool2d(levels, 8) + 1) / 2 * 8).long().clamp(0, 7).permute(0, 2, 3, 1)

    @torch.no_grad()
    def decode_indices(self, idx):
        lv = F.interpolate((idx.permute(0, 3, 1, 2).float() + 0.5) / 8 * 2 - 1, scale_factor=8)
        return torch.stack([torch.stack([lv[:, g] for g, c in enumerate(self.planes) if rgb in c]).mean(0)
                            for rgb in range(3)], 1)


def two_group_pipe(planes=((0,), (1, 2))):
    torch.manual_seed(0)
    cfg = TransformerConfig(grid_h=4, grid_w=4, channels=len(planes), codebook_size=8, dim=32, depth=1, heads=2,
                            text_mode="cross_attention", max_text_len=12)
    return GarmentPipeline(MaskedTokenTransformer(cfg), GroupTokenizer(planes), sampling=SAMPLING, name="pq",
                           encode=fake_encode)


def test_style_mix_takes_the_chosen_groups_from_b_and_keeps_the_rest_of_a():
    p = two_group_pipe()
    rng = np.random.default_rng(0)
    # one random colour per 8x8 patch, A dark and B light, so every token of A differs from B's
    a = np.kron(rng.integers(0, 100, (2, 4, 4, 3)), np.ones((1, 8, 8, 1))).astype(np.uint8)
    b = np.kron(rng.integers(160, 256, (2, 4, 4, 3)), np.ones((1, 8, 8, 1))).astype(np.uint8)
    recon = lambda im: p.decoder.decode_indices(p.tokenizer.tokenize(torch.from_numpy(im).permute(0, 3, 1, 2).float() / 127.5 - 1))
    ra, rb = to_uint8_hwc(recon(a)), to_uint8_hwc(recon(b))
    assert (ra[..., 1] != rb[..., 1]).all()
    whole = p.style_mix(a, b, groups=[1], seed=0)  # the whole grid: nothing to harmonise, all known
    assert np.array_equal(whole[..., 0], ra[..., 0]) and np.array_equal(whole[..., 1:], rb[..., 1:])
    boxed = p.style_mix(a, b, groups=[1], box=(1, 2, 5, 5), prompts=["a red dress", "a bag"], seed=0)
    far = np.ones((32, 32), bool)
    far[0:16, 0:16] = False  # the box widened to cell (0, 0) and its one-cell ring: pixels 0..16
    assert np.array_equal(boxed[:, far], ra[:, far])  # outside box and ring: image A untouched
    assert np.array_equal(boxed[:, 0:8, 0:8, 1:], rb[:, 0:8, 0:8, 1:])  # inside the box: B's group 1
    assert np.array_equal(boxed[..., 0], ra[..., 0])  # group 0 is A's everywhere, ring included


@pytest.mark.parametrize("call, message", [
    (lambda p: p.style_mix(np.zeros((1, 32, 32, 3), np.uint8), np.zeros((2, 32, 32, 3), np.uint8)), "shape of images_a"),
    (lambda p: p.style_mix(np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1, 32, 32, 3), np.uint8), groups=[2]), r"\[0, 2\)"),
    (lambda p: p.style_mix(np.zeros((1, 32, 32, 3), np.float32), np.zeros((1, 32, 32, 3), np.uint8)), "images_a must be uint8"),
    (lambda p: p.style_mix(np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1, 32, 32, 3), np.uint8), box=(0, 0, 40, 4)), "not inside"),
    (lambda p: p.style_mix(np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1, 32, 32, 3), np.uint8), prompts=["a", "b"]), "2 prompts for 1"),
])
def test_style_mix_refuses_bad_input_by_name(call, message):
    with pytest.raises(AtelierInputError, match=message):
        call(two_group_pipe())


class PatchFeatures(torch.nn.Module):
    """A stand-in frozen image feature network: the mean colour of each 8x8 patch -> tokens [B, 16, 3]."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # extract_features reads the device off a parameter

    def forward(self, x):
        return F.avg_pool2d(x, 8).flatten(2).transpose(1, 2)


def fake_text_encoder(texts):
    c = fake_encode(texts)
    return {"tokens": c.text_tokens, "mask": c.text_mask}


def composed_search():
    from lib.retrieval import QFormer

    torch.manual_seed(0)
    qf = QFormer(image_dim=3, num_image_tokens=16, num_queries=4, dim=32, num_layers=2, heads=2, embed_dim=16,
                 cross_every=1, ffn_mult=2, text_dim=384)
    return ComposedSearch(qf, PatchFeatures(), fake_text_encoder, batch_size=3)


def test_composed_search_ranks_the_gallery_by_the_composed_query_best_first():
    from lib.retrieval.evaluate import composed_similarity, embed_composed, embed_images

    s = composed_search()
    rng = np.random.default_rng(0)
    gallery = np.kron(rng.integers(0, 256, (7, 4, 4, 3)), np.ones((1, 8, 8, 1))).astype(np.uint8)
    gallery[5] = gallery[2]  # a duplicate scores exactly as its twin
    refs, texts = gallery[[0, 3]], ["is red", "has long sleeves"]
    scores, rows = s.index(gallery)(refs, texts, k=7)
    assert scores.shape == rows.shape == (2, 7) and (np.diff(scores, axis=1) <= 1e-6).all()
    assert sorted(rows[0]) == list(range(7))
    where = {int(r): i for i, r in enumerate(rows[0])}
    assert abs(scores[0, where[2]] - scores[0, where[5]]) < 1e-5
    # the same numbers as the evaluation code's 'full' variant on the same features
    feats = lambda im: PatchFeatures()(torch.from_numpy(im).permute(0, 3, 1, 2).float() / 127.5 - 1)
    enc = fake_text_encoder(texts)
    want = composed_similarity("full", embed_images(s.qformer, feats(gallery)),
                               composed=embed_composed(s.qformer, feats(refs), enc["tokens"], enc["mask"]))
    assert np.allclose(np.take_along_axis(want.numpy(), rows, 1), scores, atol=1e-5)
    # the text matters: another modification text reorders (or rescores) the same gallery
    other, _ = s(refs, ["is green", "is a bag"], k=7)
    assert not np.allclose(other, scores)


@pytest.mark.parametrize("call, message", [
    (lambda s: s(np.zeros((1, 32, 32, 3), np.uint8), ["x"]), "call index"),
    (lambda s: s.index(np.zeros((3, 32, 32, 3), np.uint8))(np.zeros((2, 32, 32, 3), np.uint8), ["x"]), "1 texts for 2"),
    (lambda s: s.index(np.zeros((3, 32, 32, 3), np.uint8))(np.zeros((1, 32, 32, 3), np.uint8), ["x"], k=4), r"\[1, 3\]"),
    (lambda s: s.index(np.zeros((3, 32, 32, 3), np.uint8))(np.zeros((1, 32, 32, 3), np.uint8), [""]), "non-empty"),
    (lambda s: s.index(np.zeros((3, 32, 32), np.uint8)), "gallery images must be uint8"),
])
def test_composed_search_refuses_bad_input_by_name(call, message):
    with pytest.raises(AtelierInputError, match=message):
        call(composed_search())
