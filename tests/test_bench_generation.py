"""reproduce/bench_generation.py: the speed benchmark's JSON (schema, internal consistency), its
FLOP model and its timing helpers. No assertion on time: the numbers depend on the machine."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from lib.io import AtelierInputError
from lib.store import repo_root

torch.set_num_threads(1)

SPEC = importlib.util.spec_from_file_location("bench_generation", repo_root() / "reproduce" / "bench_generation.py")
B = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(B)

MASKED_METHODS = [f"maskgit_{s}" for s in B.MASKGIT_STEPS] + [f"smart_T{B.SMART_T}", "muse_cfg_batched",
                                                              "muse_cfg_two_pass"]
TINY = {"dim": 32, "depth": 1, "heads": 2, "mlp_ratio": 4.0}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run (the CI profile: tiny model, 8x8, batch 1 and 4, one timed run) into a temp file."""
    out = tmp_path_factory.mktemp("bench") / "generation.json"
    path = B.run("smoke", out, threads=1, retrieval_threads=1, progress=False)
    assert path == out
    return json.loads(out.read_text())


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def test_smoke_json_records_how_it_was_measured(smoke):
    for key in ("device", "device_info", "torch", "threads", "dtype", "timing", "weights", "model", "provenance",
                "matmul", "grids", "tokenizer", "text_encoder", "retrieval", "breakdown", "targets"):
        assert key in smoke, key
    assert smoke["profile"] == "smoke" and smoke["device"] == "cpu" and smoke["dtype"] == "float32"
    assert smoke["threads"] == 1 and smoke["torch"] == torch.__version__
    assert smoke["timing"]["warmup"] == 0 and smoke["timing"]["min_repeats"] == 1
    assert "random" in smoke["weights"] and "does not depend on the weights" in smoke["weights"]
    assert smoke["provenance"]["git_revision"] and "torch" in smoke["provenance"]["device"]
    assert smoke["model"]["dim"] == TINY["dim"] and smoke["model"]["codebook_size"] == 1024
    assert list(smoke["grids"]) == ["8x8"] and smoke["batches"] == [1, 4]


def test_every_method_is_timed_with_the_expected_number_of_model_calls(smoke):
    grid = smoke["grids"]["8x8"]
    n = 64  # 8x8 positions, C = 1
    expected_calls = {"ar_recompute": n, "ar_kv_cache": n, **{f"maskgit_{s}": s for s in B.MASKGIT_STEPS},
                      f"smart_T{B.SMART_T}": B.SMART_T + 1, "muse_cfg_batched": 12,
                      # the linear guidance scale is 0 at step 0, where the two-pass form skips l_u
                      "muse_cfg_two_pass": 2 * 12 - 1}
    for batch in (1, 4):
        rows = grid["samplers"][f"batch_{batch}"]["methods"]
        assert set(rows) == set(expected_calls)
        for name, r in rows.items():
            assert r["model_calls"] == expected_calls[name], name
            assert r["rows_per_call"] == (2 * batch if name == "muse_cfg_batched" else batch), name
            s = r["seconds"]
            assert s["repeats"] == len(s["runs"]) == 1 and all(v > 0 for v in s["runs"])
            assert s["q1"] <= s["median"] <= s["q3"] and _close(s["iqr"], s["q3"] - s["q1"])
            assert _close(r["seconds_per_image"]["median"], s["median"] / batch)
            assert _close(r["images_per_s"], batch / s["median"])
            assert r["label"]


def test_ratios_are_quotients_of_the_recorded_medians(smoke):
    for batch in (1, 4):
        block = smoke["grids"]["8x8"]["samplers"][f"batch_{batch}"]
        spi = {name: r["seconds_per_image"]["median"] for name, r in block["methods"].items()}
        for ref in ("ar_recompute", "ar_kv_cache"):
            ratios = block[f"speedup_vs_{ref}"]
            assert set(ratios) == set(spi)
            assert ratios[ref] == 1.0
            for name, value in ratios.items():
                assert value > 0 and _close(value, spi[ref] / spi[name]), (ref, name)


def test_mfu_is_analytic_flops_over_time_over_measured_peak(smoke):
    peak = smoke["matmul"]["peak_flop_per_s"]
    sizes = smoke["matmul"]["sizes"]
    assert _close(peak, max(v["flop_per_s"] for v in sizes.values()))
    for n, v in sizes.items():
        assert v["flops"] == 2 * int(n) ** 3 and _close(v["flop_per_s"], v["flops"] / v["seconds"]["median"])
    mfu = smoke["grids"]["8x8"]["mfu"]
    assert mfu["batch"] == 4
    flops = mfu["flops_analytic"]
    assert flops["total"] == flops["linear"] + flops["attention"] and flops["attention"] > 0
    assert mfu["flops_linear_counted"] == flops["linear"]  # hooks on every nn.Linear agree with the formula
    assert _close(mfu["flop_per_s"], flops["total"] / mfu["seconds"]["median"])
    assert _close(mfu["mfu"], mfu["flop_per_s"] / peak)
    target = smoke["targets"]["mfu_large_batch"]
    assert target["value"] == mfu["mfu"] and target["met"] == (mfu["mfu"] >= 0.5)
    # the 16x16 CPU batch-1 target needs the 16x16 grid, which the smoke profile does not run
    assert "skipped" in smoke["targets"]["nar_vs_ar_recompute_16x16_cpu_batch1"]


def test_tokenizer_retrieval_and_breakdown_sections(smoke):
    tok = smoke["tokenizer"]
    assert tok["vq"]["8x8"]["token_shape"] == [8, 8, 1] and tok["vq"]["8x8"]["image_size"] == 32
    for name, parts in (("vq", ("encode", "decode")), ("muse_vq", ("decode",))):
        for part in parts:
            for batch in (1, 4):
                r = tok[name]["8x8"][part][f"batch_{batch}"]
                assert r["images_per_s"] > 0 and _close(r["images_per_s"], batch / r["seconds"]["median"])
    ret = smoke["retrieval"]
    assert ret["threads"] == 1 and ret["query_batch"] == 1
    for n in ("10000", "100000"):
        assert ret[n]["gallery"] == int(n) and ret[n]["ms"]["median"] > 0 and ret[n]["repeats"] == 5
    assert smoke["targets"]["retrieval_100k_ms"]["value"] == ret["100000"]["ms"]["median"]
    text = smoke["text_encoder"]
    assert "skipped" not in text, text
    for batch in (1, 4):
        b = smoke["breakdown"]["8x8"][f"batch_{batch}"]
        comps = b["components"]
        assert set(comps) == {"text_encoder", "transformer", "decoder"}
        cfg_row = smoke["grids"]["8x8"]["samplers"][f"batch_{batch}"]["methods"]["muse_cfg_batched"]
        assert comps["transformer"] == cfg_row["seconds_per_image"]["median"]
        assert comps["decoder"] == tok["muse_vq"]["8x8"]["decode"][f"batch_{batch}"]["seconds_per_image"]
        assert comps["text_encoder"] == text[f"batch_{batch}"]["seconds_per_image"]
        assert _close(b["total_seconds_per_image"], sum(comps.values()))
        assert math.isclose(sum(b["shares"].values()), 1.0, rel_tol=1e-12)


def test_flop_bound_is_calls_times_counted_flops_over_the_peak(smoke):
    peak = smoke["matmul"]["peak_flop_per_s"]
    bounds = smoke["grids"]["8x8"]["flop_bound"]
    for batch_key, rows in ((k, v) for k, v in bounds.items() if k.startswith("batch_")):
        methods = smoke["grids"]["8x8"]["samplers"][batch_key]["methods"]
        assert set(rows) == set(methods) - set(B.AR_METHODS)
        for name, r in rows.items():
            f = r["flops_per_call"]
            assert f["total"] == f["matmul_counted"] + f["attention_analytic"] > 0
            assert r["model_calls"] == methods[name]["model_calls"]
            assert _close(r["bound_seconds"], r["model_calls"] * f["total"] / peak)
            assert _close(r["measured_over_bound"], methods[name]["seconds"]["median"] / r["bound_seconds"])
    # the batched CFG pass makes each call on 2B rows: twice the FLOPs of a plain MaskGIT call
    b4 = bounds["batch_4"]
    assert b4["muse_cfg_batched"]["rows_per_call"] == 8 and b4["maskgit_12"]["rows_per_call"] == 4
    assert b4["muse_cfg_batched"]["flops_per_call"]["total"] == 2 * b4["maskgit_12"]["flops_per_call"]["total"]
    assert "skipped" in smoke["targets"]["maskgit_12_batch1_16x16_vs_flop_bound"]


# -- the FLOP model and the helpers, without a benchmark run --------------------------------------
def test_step_flops_count_the_weight_matmuls_without_the_cached_text():
    from lib.generation import MaskedTokenTransformer, TransformerConfig

    cfg = TransformerConfig(grid_h=4, grid_w=4, channels=1, codebook_size=64, max_text_len=B.TEXT_LEN,
                            text_mode="cross_attention", **TINY)
    model = MaskedTokenTransformer(cfg).eval()
    f = B.step_flops(model, 3, 0, torch.device("cpu"))
    full = B.transformer_forward_flops(cfg, 3)
    # encode_condition ran the text projection and every block's cross-attention K/V once, outside
    text_once = 2 * 3 * B.TEXT_LEN * cfg.text_dim * cfg.dim + cfg.depth * 4 * 3 * B.TEXT_LEN * cfg.dim * cfg.dim
    assert f["matmul_counted"] == full["linear"] - text_once
    assert f["attention_analytic"] == full["attention"]


@pytest.mark.parametrize("overrides", [
    dict(grid_h=8, grid_w=8, channels=1, text_mode="cross_attention"),
    dict(grid_h=16, grid_w=16, channels=1, text_mode="cross_attention", low_res=(8, 8, 1, 64)),  # super-res
    dict(grid_h=4, grid_w=4, channels=4, text_mode="cross_attention", channel_embedding="concat",
         low_res=(2, 2, 2, 64)),  # MoVQ multichannel tokens with the concat map
    dict(grid_h=8, grid_w=4, channels=2, text_mode="none"),
])
def test_analytic_linear_flops_match_counted_flops(overrides):
    from lib.generation import Condition, MaskedTokenTransformer, TransformerConfig

    cfg = TransformerConfig(codebook_size=64, max_text_len=B.TEXT_LEN, **TINY, **overrides)
    model = MaskedTokenTransformer(cfg).eval()
    batch = 3
    tokens = torch.full((batch, cfg.num_positions, cfg.channels), cfg.mask_id)
    cond = B.text_condition(batch, cfg.text_dim, torch.device("cpu"), 0) if cfg.text_mode != "none" else None
    if cfg.low_res:
        lh, lw, lc, lk = cfg.low_res
        cond = cond or Condition()
        cond.low_res_tokens = torch.randint(0, lk, (batch, lh * lw, lc))
    with torch.no_grad():
        counted = B.counted_linear_flops(model, lambda: model(tokens, cond))
    flops = B.transformer_forward_flops(cfg, batch)
    assert flops["linear"] == counted
    # attention FLOPs grow quadratically in the sequence: 4 b s^2 d per layer (+ cross-attention)
    s = cfg.num_positions + (cfg.low_res[0] * cfg.low_res[1] if cfg.low_res else 0)
    cross = 4 * batch * s * B.TEXT_LEN * cfg.dim if cfg.text_mode == "cross_attention" else 0
    assert flops["attention"] == cfg.depth * (4 * batch * s * s * cfg.dim + cross)


@pytest.mark.parametrize("low_res", [(8, 8, 1, 64), (2, 2, 2, 64)])
def test_muse_form_super_res_flops_match_counted_flops_and_leave_the_encoder_to_the_condition(low_res):
    """lib.generation.super_res (Muse Fig. 4): the high-res sequence is N tokens, the cross-attention memory
    text + Nl, plus the low-res encoder, which decoding runs once per condition."""
    from lib.generation import TransformerConfig
    from lib.generation.super_res import MuseSuperResTransformer

    grid = 2 * low_res[0]
    cfg = TransformerConfig(grid_h=grid, grid_w=grid, channels=1, codebook_size=64, max_text_len=B.TEXT_LEN,
                            text_mode="cross_attention", channel_embedding="concat", low_res=low_res, **TINY)
    model = MuseSuperResTransformer(cfg, low_res_depth=2).eval()
    batch, n, nl = 3, cfg.num_positions, low_res[0] * low_res[1]
    tokens = torch.full((batch, n, 1), cfg.mask_id)
    cond = B.text_condition(batch, cfg.text_dim, torch.device("cpu"), 0)
    cond.low_res_tokens = torch.randint(0, 64, (batch, nl, low_res[2]))
    with torch.no_grad():
        counted = B.counted_linear_flops(model, lambda: model(tokens, cond))
    flops = B.transformer_forward_flops(cfg, batch, low_res_depth=2)
    assert flops["linear"] == counted
    d, mem = cfg.dim, B.TEXT_LEN + nl
    assert flops["condition_attention"] == 2 * 4 * batch * nl * nl * d
    assert flops["attention"] == cfg.depth * (4 * batch * n * n * d + 4 * batch * n * mem * d) + flops["condition_attention"]
    step = B.step_flops(model, batch, 0, torch.device("cpu"))
    assert step["attention_analytic"] == flops["attention"] - flops["condition_attention"]
    assert step["matmul_counted"] < flops["linear"]  # text, memory K/V and the encoder are cached


def test_flop_model_refuses_unmodelled_layouts():
    from lib.generation import TransformerConfig

    cfg = TransformerConfig(grid_h=4, grid_w=4, channels=1, codebook_size=16, text_mode="in_sequence", **TINY)
    with pytest.raises(AtelierInputError, match="not modelled"):
        B.transformer_forward_flops(cfg, 1)


def test_measure_honours_warmup_repeats_and_budget():
    calls = []
    dev = torch.device("cpu")
    stats = B.measure(lambda: calls.append(1), warmup=2, min_repeats=3, max_repeats=10, budget_s=0.0, device=dev)
    assert stats["warmup"] == 2 and stats["repeats"] == 3 and len(calls) == 5 and len(stats["runs"]) == 3
    calls.clear()
    stats = B.measure(lambda: calls.append(1), warmup=0, min_repeats=1, max_repeats=6, budget_s=1e9, device=dev)
    assert stats["repeats"] == 6 and len(calls) == 6


def test_measure_interleaved_runs_round_robin_until_the_slowest_spends_its_budget():
    import time

    log = []
    dev = torch.device("cpu")
    fns = {"a": lambda: log.append("a"), "b": lambda: log.append("b")}
    stats = B.measure_interleaved(fns, warmup=1, min_repeats=3, max_repeats=10, budget_s=0.0, device=dev)
    assert log == ["a", "b"] * 4 and stats["a"]["repeats"] == stats["b"]["repeats"] == 3
    fns = {"fast": lambda: None, "slow": lambda: time.sleep(0.02)}
    stats = B.measure_interleaved(fns, warmup=0, min_repeats=1, max_repeats=50, budget_s=0.05, device=dev)
    assert stats["fast"]["repeats"] == stats["slow"]["repeats"] < 50  # the slow one's budget ends the rounds
    assert sum(stats["slow"]["runs"]) >= 0.05


def test_summarize_quartiles_and_ratios():
    s = B.summarize([4.0, 1.0, 3.0, 2.0])
    assert (s["median"], s["q1"], s["q3"], s["iqr"], s["min"], s["max"]) == (2.5, 1.75, 3.25, 1.5, 1.0, 4.0)
    assert B.summarize([0.5])["iqr"] == 0.0
    with pytest.raises(AtelierInputError):
        B.summarize([])
    assert B.ratios({"ar": 2.0, "nar": 0.25}, "ar") == {"ar": 1.0, "nar": 8.0}


def test_super_res_stage_and_call_counter_on_a_16x16_grid():
    import lib.config as lib_params

    P = lib_params.load("smoke")
    steps = P["super_res"]["sampling_steps"]
    settings = dict(P["generation"]["sampling"], super_res_steps=steps)
    dev = torch.device("cpu")
    models = B.build_models(16, TINY, 64, "cross_attention", 0, dev)
    assert models["super_res"].config.low_res == (8, 8, 1, 64) and "super_res" not in B.build_models(
        8, TINY, 64, "cross_attention", 0, dev)
    method = B.sampler_methods(models, 2, settings, 0, dev)["super_res"]
    assert B.SUPER_RES_LABEL in method["label"]
    with B.count_calls(method["model"]) as tally:
        out = method["fn"]()
    assert tally == {"calls": steps, "rows": 2 * steps}
    assert out["tokens"].shape == (2, 256, 1) and int(out["tokens"].max()) < 64  # no [MASK] left


def test_bad_arguments_are_refused():
    with pytest.raises(AtelierInputError, match="profile"):
        B.run("huge", progress=False)
    with pytest.raises(SystemExit):
        B.main(["--profile", "smoke", "--grids", "8,x"])


# ------------------------------------------------------------------------------------------------
# the README's speed block is rendered from the JSON, never typed
# ------------------------------------------------------------------------------------------------
_RS = importlib.util.spec_from_file_location("readme_speed", repo_root() / "reproduce" / "readme_speed.py")
RS = importlib.util.module_from_spec(_RS)
_RS.loader.exec_module(RS)


def test_readme_speed_block_renders_every_measured_method_from_the_json(smoke):
    block = RS.render(smoke, "ab" * 32)
    assert "sha256 `abababababababab`" in block and "profile `smoke`" in block
    row = smoke["grids"]["8x8"]["samplers"]["batch_4"]
    ms = row["methods"]["maskgit_12"]["seconds_per_image"]["median"] * 1e3
    ratio = row["speedup_vs_ar_recompute"]["maskgit_12"]
    assert f"| MaskGIT, 12 steps | " in block and f"{ms:.1f} ({ratio:.1f}x)" in block
    assert "super-res" not in block  # not measured in the smoke profile: no row
    text = "intro\n" + RS.BEGIN + "\nold\n" + RS.END + "\noutro\n"
    new = RS.replace_block(text, block)
    assert new.startswith("intro\n") and new.endswith("\noutro\n") and RS.current_block(new) == block
    with pytest.raises(ValueError, match="one <!-- speed:begin -->"):
        RS.replace_block("no markers here", block)


def test_readme_speed_block_matches_the_committed_benchmark_json():
    readme = (repo_root() / "README.md").read_text()
    block = RS.current_block(readme)
    path = repo_root() / RS.JSON_PATH
    if not path.is_file():
        pytest.skip(f"{path}: not present (dvc repro bench_generation writes it)")
    doc, sha = RS.load(path)
    if f"sha256 `{sha[:16]}`" not in block:
        pytest.skip("the benchmark JSON was re-measured since the README was rendered: run reproduce/readme_speed.py")
    assert block == RS.render(doc, sha), "README speed block differs from its JSON: run reproduce/readme_speed.py"
