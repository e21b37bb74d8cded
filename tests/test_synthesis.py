"""Pipelines wiring generators, schedulers and decoders (lib/pipelines/sampling.py), and the generation params."""

import copy

import pytest
import torch

import lib.config as lib_params
from lib.generation import Condition, MaskedTokenTransformer, TransformerConfig
from lib.io import AtelierInputError
from lib.sampling import MaskGITScheduler, SMARTScheduler
from lib.pipelines.sampling import make_scheduler, masked_logits_fn, sample_masked, visual_condition

torch.set_num_threads(1)


def tiny(text_mode="cross_attention", visual=0, channels=2):
    torch.manual_seed(0)
    cfg = TransformerConfig(grid_h=4, grid_w=4, channels=channels, codebook_size=16, dim=32, depth=1, heads=2,
                            text_mode=text_mode, max_visual_tokens=visual)
    return MaskedTokenTransformer(cfg).eval()


def text(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Condition(text_tokens=torch.randn(b, 5, 384, generator=g), text_mask=torch.ones(b, 5, dtype=torch.bool))


def test_make_scheduler_maps_paper_T_to_model_calls():
    s = make_scheduler("smart", {"smart_T": 10, "smart_alpha": 0.8, "smart_beta": 0.2})
    assert isinstance(s, SMARTScheduler) and s.num_steps == 11  # first full prediction + T re-mask iterations
    m = make_scheduler("maskgit", {"maskgit_steps": 8})
    assert isinstance(m, MaskGITScheduler) and m.num_steps == 8
    with pytest.raises(AtelierInputError, match="unknown sampler"):
        make_scheduler("ddim", {})


def test_guidance_zero_is_the_conditional_model_and_positive_guidance_differs():
    model, cond = tiny(), text(3)
    tokens = torch.full((3, 16, 2), 16)
    plain = masked_logits_fn(model, cond, 0.0)(tokens)
    assert torch.equal(plain, model(tokens, cond))
    guided = masked_logits_fn(model, cond, 2.0)
    guided.set_step(0)
    out = guided(tokens)
    l_u = model(tokens, cond.unconditional())
    assert torch.allclose(out, 3.0 * plain - 2.0 * l_u, atol=1e-5)
    # a negative prompt replaces only the unconditional branch
    neg = text(3, seed=1)
    with_neg = masked_logits_fn(model, cond, 2.0, negative=neg)
    with_neg.set_step(0)
    assert torch.allclose(with_neg(tokens), 3.0 * plain - 2.0 * model(tokens, neg), atol=1e-5)


def test_sample_masked_keeps_known_tokens_and_fills_every_mask():
    model = tiny()
    g = torch.Generator().manual_seed(0)
    given = torch.randint(0, 16, (5, 16, 2), generator=g)
    known = torch.rand(5, 16, 2, generator=g) < 0.4
    tokens = torch.where(known, given, torch.full_like(given, 16))
    for name in ("maskgit", "smart"):
        out = sample_masked(model, text(5), 5, lambda: make_scheduler(name, {"maskgit_steps": 4, "smart_T": 3}),
                            tokens=tokens, known=known, batch_size=2)["tokens"]
        assert out.shape == (5, 16, 2)
        assert torch.equal(out[known], given[known])
        assert int(out.max()) < 16 and int(out.min()) >= 0


def test_sample_masked_refuses_mismatched_inputs():
    model = tiny()
    with pytest.raises(AtelierInputError, match="known mask"):
        sample_masked(model, text(2), 2, lambda: make_scheduler("maskgit", {}), tokens=torch.zeros(2, 16, 2).long())
    with pytest.raises(AtelierInputError, match="rows"):
        sample_masked(model, text(3), 2, lambda: make_scheduler("maskgit", {}))


def test_visual_condition_positions_segments_and_padding():
    g = torch.arange(2 * 16 * 2).view(2, 16, 2)
    vis = visual_condition([g, g + 100], [(0, 0, 2, 2), (3, 2, 1, 2)], 4, 4, max_tokens=8)
    assert vis["visual_tokens"].shape == (2, 8, 2)
    assert vis["visual_positions"][0, :6].tolist() == [0, 1, 4, 5, 14, 15]
    assert vis["visual_segment"][0, :6].tolist() == [0, 0, 0, 0, 1, 1]
    assert vis["visual_valid"][0].tolist() == [True] * 6 + [False] * 2
    assert torch.equal(vis["visual_tokens"][:, 4], (g + 100)[:, 14])
    model = tiny("in_sequence", visual=8)
    cond = text(2)
    vis = visual_condition([g % 16, (g + 5) % 16], [(0, 0, 2, 2), (3, 2, 1, 2)], 4, 4, max_tokens=8)
    for k, v in vis.items():
        setattr(cond, k, v)
    assert model(torch.full((2, 16, 2), 16), cond).shape == (2, 16, 2, 16)
    with pytest.raises(AtelierInputError, match="max_visual_tokens"):
        visual_condition([g], [(0, 0, 3, 3)], 4, 4, max_tokens=8)
    with pytest.raises(AtelierInputError, match="not inside"):
        visual_condition([g], [(3, 3, 2, 2)], 4, 4, max_tokens=8)


def test_generation_params_are_validated():
    raw = lib_params.read()
    good = lib_params.load("smoke")
    assert good["generation"]["sampling"]["smart_T"] >= 2

    def broken(mutate):
        bad = copy.deepcopy(raw)
        mutate(bad)
        merged = lib_params._merge({k: v for k, v in bad.items() if k not in lib_params.TOP_LEVEL},
                                   bad["profiles"]["smoke"])
        merged.update(profile="smoke", seed=0)
        with pytest.raises(AtelierInputError) as err:
            lib_params.validate(merged)
        return str(err.value)

    assert "generation.models.muse.kind" in broken(lambda p: p["generation"]["models"]["muse"].update(kind="diffusion"))
    assert "smart_beta" in broken(lambda p: p["generation"]["sampling"].update(smart_beta=0.9))
    assert "generation.steps.muse: missing" in broken(lambda p: p["profiles"]["smoke"]["generation"]["steps"].pop("muse"))
    assert "generation.models.m6.tokenizer" in broken(lambda p: p["generation"]["models"]["m6"].update(tokenizer="nope"))
    assert "max_visual_tokens" in broken(lambda p: p["generation"]["models"]["muse"].update(max_visual_tokens=8))
