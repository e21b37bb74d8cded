"""The gpu profile at paper-like shapes (reproduce/gpu_shapes.yaml, issue 21): a CPU dry run of one
training step of every model kind at those sizes, so that they cannot rot before a device runs them."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import yaml

from lib.io import AtelierInputError
from lib.store import repo_root


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, repo_root() / "reproduce" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SIZE = _load("size_gpu_profile")
BENCH = _load("bench_training")


@pytest.fixture(scope="module")
def P():
    return SIZE.gpu_shape_params()


def test_shapes_are_the_papers_256_px_and_16x16_token_grid(P):
    assert P["tokenizers"]["image_size"] == 256 and P["data_source"]["image_size"] == 256
    for name in BENCH.TOKENIZERS:
        h, w, _ = SIZE.token_grid(P, name)
        assert (h, w) == (16, 16), name
    assert P["unifashion"]["qformer"]["num_queries"] == 32


@pytest.mark.parametrize("name", BENCH.TOKENIZERS)
def test_one_tokenizer_training_step_at_gpu_shapes(P, name):
    step, flops_of, params = BENCH.tokenizer_step(P, name, 1, torch.device("cpu"), pretrained=False, pool_size=1)
    ph = BENCH.Phases(torch.device("cpu"))
    ph.start()
    step(ph)  # encode 256 px -> 16x16 tokens -> decode, every loss term incl. the GAN, backward, optimizer
    assert {"forward", "perceptual", "gan_g", "backward", "optimizer", "gan_d"} <= set(ph.t)
    assert params["tokenizer"] > 1e6


@pytest.mark.parametrize("name", BENCH.TRANSFORMERS)
def test_one_transformer_training_step_at_gpu_shapes(P, name):
    step, flops_of, params = BENCH.transformer_step(P, name, 2, torch.device("cpu"))
    assert params["sequence"]["positions"] == 256
    ph = BENCH.Phases(torch.device("cpu"))
    ph.start()
    step(ph)
    assert {"data", "forward", "backward", "optimizer"} <= set(ph.t)
    tokens = 2 * 256  # batch x positions; training costs ~6 FLOPs per parameter per token (fwd + bwd)
    assert flops_of("all") > 0.5 * 6 * params["transformer"] * tokens


def test_one_qformer_training_step_at_gpu_shapes(P):
    step, _, params = BENCH.qformer_step(P, 4, torch.device("cpu"))
    assert params["image_tokens"] == (224 // 16) ** 2
    ph = BENCH.Phases(torch.device("cpu"))
    ph.start()
    step(ph)
    assert "optimizer" in ph.t


def test_a_shape_the_profile_does_not_have_is_named(tmp_path):
    bad = tmp_path / "shapes.yaml"
    bad.write_text(yaml.safe_dump({"tokenizers": {"widht": 3}}))
    with pytest.raises(AtelierInputError, match="tokenizers.widht: not a key of the gpu profile"):
        SIZE.gpu_shape_params(bad)
    bad.write_text(yaml.safe_dump({"tokenizers": {"image_size": 250, "ch_mult": [1, 1, 2, 2, 4]}}))
    with pytest.raises(AtelierInputError, match="not divisible by the downsampling 16"):
        SIZE.gpu_shape_params(bad)
    bad.write_text(yaml.safe_dump({"generation": {"depth": 0}}))
    with pytest.raises(AtelierInputError, match="generation.depth"):
        SIZE.gpu_shape_params(bad)


def test_sizing_scales_counted_flops_by_batch_and_steps(tmp_path):
    """reproduce/size_gpu_profile.py on small shapes: one row per model the gpu profile trains, hours =
    counted FLOPs x batch x steps / the assumed sustained rate, and the JSON says it is an estimate."""
    import json

    import lib.config as lib_params

    shapes = tmp_path / "shapes.yaml"
    shapes.write_text(yaml.safe_dump({"generation": {"dim": 32, "depth": 1, "heads": 2}}))
    out = tmp_path / "sizing.json"
    assert SIZE.main(["--shapes", str(shapes), "--out", str(out), "--mfu", "0.5", "--peak-tflops", "100"]) == 0
    doc = json.loads(out.read_text())
    m = doc["metrics"]
    gpu = lib_params.load("gpu")
    trained = {f"tokenizer@{n}" for n, s in gpu["tokenizers"]["steps"].items() if s > 0}
    trained |= {f"generator@{n}" for n, s in gpu["generation"]["steps"].items() if s > 0}
    assert {r["stage"] for r in m["rows"]} == trained | {"unifashion (phase 1 + 2)"}
    for r in m["rows"]:
        assert r["flops_per_sample"] > 0
        assert r["estimated_hours"] == pytest.approx(r["flops_per_sample"] * r["batch_size"] * r["steps"] / 50e12 / 3600)
    assert m["estimated_hours_total"] == pytest.approx(sum(r["estimated_hours"] for r in m["rows"]))
    assert "not a measurement" in m["basis"] and doc["provenance"]["mfu"] == 0.5
