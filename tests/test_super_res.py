"""The Muse super-resolution stage (lib/stages/super_res.py): high-res renders, configs, training, sampling."""

from __future__ import annotations

import copy
from dataclasses import replace as dataclasses_replace

import numpy as np
import pytest
import torch

import lib.config as lib_params
from lib.stages import super_res as SR
import lib.config.super_res as super_res_cfg
import lib.evaluation.super_res as super_res_eval
import lib.pipelines.super_res as super_res_parts
import lib.store.super_res as super_res_store
from lib.data import fashion_mnist
from lib.data.render import colourise, pattern_masks
from lib.generation import Condition, MaskedTokenTransformer, TextFeatureTable, train_masked
from lib.io import AtelierInputError
from lib.models.tokenizer import Tokenizer
from lib.store import repo_root

FM_ROOT = repo_root() / "data" / "fashion-mnist"
TINY_TOK = dict(image_size=16, ch=8, ch_mult=[1, 2], num_res_blocks=0, z_dim=8, quantizer="vq",
                quantizer_kwargs={"codebook_size": 16}, decoder="vqgan")


def test_highres_render_is_the_same_garment_at_twice_the_resolution():
    x, _ = fashion_mnist.load(FM_ROOT, "test")
    colour, pattern = np.arange(12) % 10, np.arange(12) % 4
    low, high = colourise(x[:12], colour, pattern), colourise(x[:12], colour, pattern, scale=2)
    assert high.shape == (12, 64, 64, 3) and high.dtype == np.uint8
    pooled = high.reshape(12, 32, 2, 32, 2, 3).astype(float).mean((2, 4))
    assert np.abs(pooled - low).mean() < 10                          # same garment, colour and pattern
    assert np.abs(pooled - low[::-1]).mean() > 30                    # ... and not just any garment
    # the pattern geometry is the base one at 2 pixels per base pixel (crisp, not interpolated)
    np.testing.assert_array_equal(pattern_masks(32, 2)[:, ::2, ::2], pattern_masks(32))
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        colourise(x[:2], colour[:2], pattern[:2], scale=0)


def test_highres_images_follow_the_split_arrays_and_refuse_foreign_names():
    x, _ = fashion_mnist.load(FM_ROOT, "test")
    arrays = {"names": np.array([f"fmtest{i:05d}" for i in (5, 9, 2)]), "source_index": np.array([5, 9, 2]),
              "colour": np.array([1, 2, 3]), "pattern": np.array([0, 1, 2])}
    out = super_res_parts.highres_images(arrays, np.array([2, 0]), 2, FM_ROOT)
    np.testing.assert_array_equal(out, colourise(x[[2, 5]], np.array([3, 1]), np.array([2, 0]), scale=2))
    bad = dict(arrays, names=np.array(["img0", "img1", "img2"]))
    with pytest.raises(AtelierInputError, match="do not name one Fashion-MNIST split"):
        super_res_parts.highres_images(bad, np.array([0]), 2, FM_ROOT)


def test_settings_are_checked_and_errors_name_the_key():
    P = lib_params.load("smoke")
    assert SR.settings(P)["scale"] == 2
    for key, value, message in (("base", "ar", "not a masked generator"), ("scale", 1, "super_res.scale"),
                                ("guidance_scale", -1, "super_res.guidance_scale")):
        bad = copy.deepcopy(P)
        bad["super_res"][key] = value
        with pytest.raises(AtelierInputError, match=message):
            SR.settings(bad)
    bad = copy.deepcopy(P)
    del bad["super_res"]["eval_n"]
    with pytest.raises(AtelierInputError, match=r"super_res.eval_n: missing"):
        SR.settings(bad)
    bad = copy.deepcopy(P)
    bad["super_res"]["stepz"] = 3
    with pytest.raises(AtelierInputError, match=r"super_res.stepz: unknown parameter"):
        SR.settings(bad)


def test_highres_tokenizer_copies_the_low_res_weights_and_doubles_the_grid():
    low = Tokenizer(TINY_TOK)
    high = Tokenizer({**TINY_TOK, "image_size": 32})
    missing, unexpected = high.load_state_dict(low.state_dict(), strict=False)
    assert not missing and not unexpected
    assert low.token_shape == (8, 8, 1) and high.token_shape == (16, 16, 1)
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    assert high.tokenize(img).shape == (2, 16, 16, 1)
    P = lib_params.load("smoke")
    cfg = SR.highres_tokenizer_config(P, "vq_gen", 2)
    assert cfg["image_size"] == 2 * P["tokenizers"]["image_size"] and cfg["name"] == "vq_gen_x2"
    model_cfg = super_res_parts.transformer_config(P, low, high)
    assert (model_cfg.grid_h, model_cfg.grid_w) == (16, 16) and model_cfg.low_res == (8, 8, 1, 16)


def _tiny_sr(K=8, mode="joint"):
    from lib.generation import TransformerConfig
    from lib.generation.super_res import build_super_res_model

    cfg = TransformerConfig(grid_h=4, grid_w=4, channels=1, codebook_size=K, dim=32, depth=2, heads=2,
                            text_mode="cross_attention", low_res=(2, 2, 1, K))
    return build_super_res_model(cfg, mode, low_res_depth=1)


@pytest.mark.parametrize("mode", ["cross_attention", "joint"])
def test_super_res_model_learns_to_use_the_low_res_tokens(tmp_path, mode):
    # high-res grid = nearest upsampling of the 2x2 low-res grid: learnable only from the low-res tokens
    g = torch.Generator().manual_seed(0)
    K = 8
    low = torch.randint(0, K, (64, 2, 2), generator=g)
    high = low.repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(64, 16, 1)
    low = low.reshape(64, 4, 1)
    table = TextFeatureTable(torch.randn(4, 5, 384), torch.ones(4, 5, dtype=torch.bool), ["a", "b", "c", "d"])
    caption_ids = torch.randint(0, 4, (64, 1), generator=g)
    torch.manual_seed(0)
    model = _tiny_sr(K, mode)
    history = train_masked(model, high, tmp_path / "sr.safetensors", steps=150, batch_size=32, lr=3e-3,
                           caption_ids=caption_ids, text_table=table, low_res_tokens=low, mode="muse",
                           label_smoothing=0.0, warmup_steps=10, progress=False)
    assert np.mean([h["acc"] for h in history[-20:]]) > 0.9
    # sampling on the scheduler contract: every token decided, and the output follows the low-res tokens
    from lib.pipelines.sampling import make_scheduler, sample_masked

    cond = table.condition(caption_ids[:16, 0])
    cond.low_res_tokens = low[:16]
    out = sample_masked(model.eval(), cond, 16, lambda: make_scheduler("maskgit", {}, maskgit_steps=4), seed=0)
    assert out["tokens"].shape == (16, 16, 1) and (out["tokens"] < K).all()
    assert (out["tokens"] == high[:16]).float().mean() > 0.9
    # classifier-free guidance drops the text but keeps the low-res tokens
    assert torch.equal(cond.unconditional().low_res_tokens, cond.low_res_tokens)
    shuffled = Condition(low_res_tokens=low[16:32])
    other = sample_masked(model, shuffled, 16, lambda: make_scheduler("maskgit", {}, maskgit_steps=4), seed=0)
    assert (other["tokens"] == high[16:32]).float().mean() > 0.9


def test_super_resolve_leaves_the_callers_condition_alone(monkeypatch):
    """Issue 19: super_resolve used to write its low-res tokens into the caller's text condition."""

    monkeypatch.setattr(super_res_parts, "decode_tokens", lambda tok, tokens: torch.zeros(len(tokens), 3, 8, 8))
    torch.manual_seed(0)
    table = TextFeatureTable(torch.randn(2, 5, 384), torch.ones(2, 5, dtype=torch.bool), ["a", "b"])
    cond = table.condition(torch.tensor([0, 1]))
    low = torch.randint(0, 8, (2, 4, 1))
    out = super_res_parts.super_resolve(_tiny_sr(8).eval(), None, low, cond, {"sampling_steps": 2, "guidance_scale": 2.0},
                           sampling={})
    assert out["tokens"].shape == (2, 16, 1) and (out["tokens"] < 8).all()
    assert cond.low_res_tokens is None
    assert super_res_parts.super_resolve(_tiny_sr(8).eval(), None, low, None, {"sampling_steps": 2, "guidance_scale": 0.0},
                            sampling={})["tokens"].shape == (2, 16, 1)


def test_stage_skips_cleanly_and_resamples_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("ATELIER_OUT", str(tmp_path))
    P = lib_params.load("smoke")
    SR._write_skipped("smoke", 0, "test")
    assert (tmp_path / "artifacts" / "super_res" / "skipped.json").is_file()
    assert super_res_store.metrics_path().is_file()
    with pytest.raises(AtelierInputError, match="run the super-resolution stage first"):
        super_res_parts.load_trained(P)
    img = torch.linspace(-1, 1, 8).view(1, 1, 1, 8).expand(2, 3, 8, 8).contiguous()   # a smooth image
    up = super_res_parts.upsample(img, 2)
    assert up.shape == (2, 3, 16, 16) and up.abs().max() <= 1
    assert (super_res_parts.downsample(up, 2) - img).abs().mean() < 0.05


def test_muse_form_keeps_low_res_tokens_out_of_the_sequence_and_in_the_cross_attention_memory(tmp_path):
    """Muse Fig. 4: low-res tokens -> their own self-attention -> concatenated with the text as the
    high-res tokens' cross-attention memory; a text-dropped row keeps the low-res part."""
    from lib.generation import load_generator
    from lib.generation.super_res import MuseSuperResTransformer, load_super_res_model

    torch.manual_seed(0)
    model = _tiny_sr(8, "cross_attention").eval()
    assert isinstance(model, MuseSuperResTransformer) and model.arch["low_res_depth"] == 1
    table = TextFeatureTable(torch.randn(2, 5, 384), torch.ones(2, 5, dtype=torch.bool), ["a", "b"])
    cond = table.condition(torch.tensor([0, 1]))
    cond.low_res_tokens = torch.randint(0, 8, (2, 4, 1))
    tokens = torch.full((2, 16, 1), 8)
    cache = model.encode_condition(cond, 2)
    assert cache.prefix is None and cache.memory_mask.shape == (2, 5 + 4)   # text L=5, then Nl=4 low-res
    logits = model(tokens, cond)
    assert logits.shape == (2, 16, 1, 8) and torch.allclose(model(tokens, cache=cache), logits)
    other = dataclasses_replace(cond, low_res_tokens=(cond.low_res_tokens + 1) % 8)
    assert not torch.allclose(model(tokens, other), logits)                    # the low-res tokens are seen
    dropped = cond.unconditional()
    assert torch.equal(dropped.low_res_tokens, cond.low_res_tokens)
    nulled = model(tokens, dropped)
    assert not torch.allclose(nulled, logits)                                  # the text is seen ...
    assert torch.allclose(model(tokens, dataclasses_replace(dropped, text_tokens=None, text_mask=None, drop=None)), nulled,
                          atol=1e-6)                                           # ... and dropped text is no text
    with pytest.raises(AtelierInputError, match="low_res_tokens are required"):
        model(tokens, table.condition(torch.tensor([0, 1])))
    # checkpoints say which form they are
    for mode in ("cross_attention", "joint"):
        m = _tiny_sr(8, mode)
        low = torch.randint(0, 8, (8, 4, 1))
        train_masked(m, torch.randint(0, 8, (8, 16, 1)), tmp_path / f"{mode}.safetensors", steps=2, batch_size=4,
                     caption_ids=torch.zeros(8, 1, dtype=torch.long), text_table=table, low_res_tokens=low,
                     mode="muse", warmup_steps=1, progress=False)
        back = load_super_res_model(tmp_path / f"{mode}.safetensors")
        assert type(back) is type(m) and torch.allclose(back(tokens, cond), m.eval()(tokens, cond), atol=1e-6)
    with pytest.raises(AtelierInputError, match="not a generator checkpoint"):
        load_generator(tmp_path / "cross_attention.safetensors")   # the generic loader does not guess


@pytest.mark.parametrize("key, value, message", [("low_res_mode", "prefix", "one of cross_attention, joint"),
                                                 ("low_res_depth", 0, "super_res.low_res_depth")])
def test_low_res_form_settings_are_checked(key, value, message):
    bad = copy.deepcopy(lib_params.load("smoke"))
    bad["super_res"][key] = value
    with pytest.raises(AtelierInputError, match=message):
        SR.settings(bad)
