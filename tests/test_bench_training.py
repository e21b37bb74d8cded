"""reproduce/bench_training.py: the training benchmark's JSON (schema, internal consistency) and its
FLOP counting. No assertion on time: the numbers depend on the machine."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from lib.store import repo_root

SPEC = importlib.util.spec_from_file_location("bench_training", repo_root() / "reproduce" / "bench_training.py")
B = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(B)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "training.json"
    assert B.main(["--profile", "smoke", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_flop_counter_counts_a_matmul_exactly():
    a, b = torch.randn(7, 5), torch.randn(5, 3)
    assert B.count_flops(lambda: a @ b) == 2 * 7 * 5 * 3


def test_every_model_kind_is_measured_with_its_phases(smoke):
    m = smoke["metrics"]
    assert set(m["models"]) == {*B.TOKENIZERS, *B.TRANSFORMERS, "qformer"}
    fp32 = m["matmul"]["float32_flops_per_s"]
    assert fp32 > 0 and m["matmul"]["bfloat16_over_float32"] > 0
    for name in (*B.TOKENIZERS, *B.TRANSFORMERS, "qformer"):
        e = m["models"][name]
        phases = e["phases_seconds"]
        expected = {"data", "forward", "l1", "perceptual", "gan_g", "backward", "optimizer", "gan_d"} \
            if e["kind"] == "tokenizer" else {"data", "forward", "backward", "optimizer"}
        assert set(phases) == expected, name
        assert math.isclose(sum(e["phase_share"].values()), 1.0, rel_tol=1e-9)
        sec = e["step_seconds"]["median"]
        assert e["flops_per_step"] > 0
        assert math.isclose(e["mfu_float32"], e["flops_per_step"] / sec / fp32, rel_tol=1e-9)
        assert len(e["step_seconds"]["runs"]) == B.PROFILE_SETTINGS["smoke"]["repeats"]
    for name in B.TOKENIZERS:
        fb = m["models"][name]["flops_breakdown"]
        # the perceptual loss and the GAN each add counted work to the bare tokenizer step
        assert fb["tokenizer_fwd_bwd"] < fb["with_perceptual"] < fb["all"]


def test_variants_and_batch_scaling_are_side_by_side(smoke):
    m = smoke["metrics"]
    v = m["variants"]["tokenizer_vq"]
    assert v["baseline"]["ratio_to_baseline"] == 1.0
    assert {"perceptual_layers_1_2_4", "channels_last", "no_gan", "bf16_autocast"} <= set(v)
    assert set(m["variants"]["transformer_muse"]) == {"baseline", "bf16_autocast"}
    for name, batches in (("vq", "batches_tok"), ("muse", "batches_tf")):
        rows = m["batch_scaling"][name]
        assert [r["batch_size"] for r in rows] == B.PROFILE_SETTINGS["smoke"][batches]
        assert all(math.isclose(r["samples_per_s"], r["batch_size"] / r["step_seconds"]) for r in rows)
    prov = smoke["provenance"]
    assert prov["profile"] == "smoke" and prov["git_revision"] and "FlopCounterMode" in prov["flop_counter"]


_RS = importlib.util.spec_from_file_location("readme_speed", repo_root() / "reproduce" / "readme_speed.py")
RS = importlib.util.module_from_spec(_RS)
_RS.loader.exec_module(RS)


def test_readme_training_block_renders_every_model_kind_from_the_json(smoke):
    block = RS.render_training(smoke, "cd" * 32)
    assert "sha256 `cdcdcdcdcdcdcdcd`" in block and "profile `smoke`" in block
    for name, e in smoke["metrics"]["models"].items():
        if "mfu_float32" in e:
            assert f"| {name} | {e['kind']} | {e['batch_size']} | " in block and f"| {e['mfu_float32']:.2f} |" in block
    text = "a\n" + RS.TRAIN_BEGIN + "\nold\n" + RS.TRAIN_END + "\nb\n"
    new = RS.replace_block(text, block, RS.TRAIN_BEGIN, RS.TRAIN_END)
    assert RS.current_block(new, RS.TRAIN_BEGIN, RS.TRAIN_END) == block


def test_readme_training_block_matches_the_committed_json():
    readme = (repo_root() / "README.md").read_text()
    block = RS.current_block(readme, RS.TRAIN_BEGIN, RS.TRAIN_END)
    path = repo_root() / RS.TRAIN_JSON_PATH
    if not path.is_file():
        pytest.skip(f"{path}: not present (dvc repro bench_training writes it)")
    doc, sha = RS.load(path)
    if f"sha256 `{sha[:16]}`" not in block:
        pytest.skip("the training benchmark was re-measured since the README was rendered: run reproduce/readme_speed.py")
    assert block == RS.render_training(doc, sha), "README training block differs from its JSON: run reproduce/readme_speed.py"
