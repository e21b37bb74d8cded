"""Speed of parallel (non-autoregressive) vs autoregressive token decoding on this machine (issue 7).

A measurement, not a test. The papers attribute their speed to parallel decoding: M6-Fashion
(Sec. 4.3, Table 2) reports 1.02 s vs 8.7 s per image against Taming Transformer (~8.5x), Muse
(Sec. 2.8, Sec. 4.4, Table 3) 0.5 s vs 6.4 s per 256x256 image against Parti (>10x): "24 decoding
steps in our base model and [...] 8 decoding steps in our super-resolution model, as compared to
the 256 or 4096 steps required for autoregressive models". This script times, side by side and in
ONE run (so every ratio compares numbers taken on the same machine under the same load):

* the autoregressive baseline two ways: recomputing the whole prefix at every step, as Taming's
  sampler (and hence the papers' baselines) did, and with a KV cache
  (``lib.generation.ARTransformer`` ``use_cache=False`` / ``True``, driven by
  ``lib.pipelines.sampling.sample_ar``);
* MaskGIT at 8 / 12 / 16 / 24 steps, SMART at T = 10 (11 model calls), Muse classifier-free
  guidance with two forward passes per step or one batched pass of 2B rows
  (``lib.pipelines.sampling.sample_masked`` / ``lib.sampling.ClassifierFreeGuidance``);
* the Muse super-resolution stage (Sec. 2.4): a 16x16 masked transformer conditioned on 8x8
  low-resolution tokens, 8 MaskGIT steps -- random weights, timing only (no low-res model is
  trained in this repository);

for 8x8 and 16x16 token grids (C = 1, K = 1024) at batch 1 and a large batch, with models of the
size ``params.yaml`` ``generation:`` configures (the same size for AR and NAR). Weights are random:
decoding time does not depend on them, since every sampler makes a fixed number of model calls of
fixed shapes (MaskGIT's and SMART's schedules fix how many tokens each step reveals; the AR sampler
makes N*C calls). Also measured: model FLOPs utilisation of one transformer forward at the large
batch against the dense-matmul FLOP/s of this machine measured in the same run, tokenizer
encode/decode images/s, retrieval query latency over 10k and 100k random unit embeddings
(``lib.retrieval.RetrievalIndex``, exact search, 2 threads), and a per-component time breakdown of
the Muse pipeline (frozen MiniLM text encoder, transformer steps, token decoder).

Every timing: ``warmup`` untimed runs, then timed runs until at least ``min_repeats`` and at most
``max_repeats`` are done or ``budget_s`` is spent; the JSON keeps every run, the median, quartiles
and IQR. The samplers of one grid and batch are timed round-robin (one run of each per round), so
on a shared machine a change in load hits every method alike. Output (atomic JSON): ``--out`` (default ``<out_root>/results/bench/generation.json``).

    .venv/bin/python reproduce/bench_generation.py --profile smoke|default|gpu [--out PATH]
        [--device cpu|cuda] [--dtype float32|bfloat16] [--threads N] [--grids 8,16] [--batches 1,32]

Profiles: ``smoke`` (CI: a tiny model, 8x8 only, batch 1 and 4, one timed run, seconds),
``default`` (the configured model, both grids, batch 1 and 32; ~15-20 min on 2 shared CPU cores,
dominated by the recomputing AR baseline at 16x16 x 32), ``gpu`` (as default, on CUDA in bfloat16
autocast when a GPU is present, more repeats, larger matmuls).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lib.io import AtelierInputError, atomic_write_json  # noqa: E402
from lib.store import results_dir  # noqa: E402
from lib.provenance import device_info, run_info  # noqa: E402

WEIGHTS_NOTE = ("random initialisation (torch.manual_seed(seed)), no trained checkpoint is read: decoding time does "
                "not depend on the weights, since every sampler makes a fixed number of model calls of fixed shapes "
                "(MaskGIT/SMART schedules fix the tokens revealed per step; the AR sampler makes N*C calls)")
SUPER_RES_LABEL = "super-res stage (random weights, timing only)"
AR_METHODS = ("ar_recompute", "ar_kv_cache")
MASKGIT_STEPS = (8, 12, 16, 24)
SMART_T = 10
TEXT_LEN = 16        # lib.text.encoder max_length: the text memory every text-conditioned model sees

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(model={"dim": 32, "depth": 1, "heads": 2, "mlp_ratio": 4.0}, grids=(8,), batches=(1, 4),
                  warmup=0, min_repeats=1, max_repeats=1, budget_s=0.0, device="cpu", dtype="float32",
                  matmul_sizes=(128, 256), mfu_repeats=2, galleries=(10_000, 100_000), retrieval_repeats=5,
                  retrieval_warmup=1),
    "default": dict(model=None, grids=(8, 16), batches=(1, 32), warmup=1, min_repeats=3, max_repeats=7,
                    budget_s=20.0, device="cpu", dtype="float32", matmul_sizes=(512, 1024, 2048), mfu_repeats=5,
                    galleries=(10_000, 100_000), retrieval_repeats=50, retrieval_warmup=5),
    "gpu": dict(model=None, grids=(8, 16), batches=(1, 32), warmup=2, min_repeats=5, max_repeats=15,
                budget_s=30.0, device="cuda", dtype="bfloat16", matmul_sizes=(2048, 4096, 8192), mfu_repeats=20,
                galleries=(10_000, 100_000), retrieval_repeats=100, retrieval_warmup=10),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(values: list[float]) -> dict[str, Any]:
    """Median, quartiles (inclusive method: they stay inside the observed range), IQR, min, max, all runs."""
    if not values:
        raise AtelierInputError("summarize: no timings")
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) >= 2 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "iqr": q3 - q1, "min": min(values),
            "max": max(values), "runs": list(values)}


def measure(fn: Callable[[], Any], *, warmup: int, min_repeats: int, max_repeats: int, budget_s: float,
            device: torch.device) -> dict[str, Any]:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then timed calls until ``min_repeats``
    are done and either ``max_repeats`` are done or ``budget_s`` seconds of timed calls are spent."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < min_repeats or (len(times) < max_repeats and spent < budget_s):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return {**summarize(times), "warmup": warmup, "repeats": len(times)}


def measure_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int, min_repeats: int, max_repeats: int,
                        budget_s: float, device: torch.device) -> dict[str, dict[str, Any]]:
    """:func:`measure` for several functions in round-robin order: each round times every function
    once, so on a shared machine every method sees the same drift in load (the ratios stay fair).
    Rounds continue until ``min_repeats`` are done and either ``max_repeats`` are done or the
    slowest function has spent ``budget_s`` seconds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    rounds = 0
    while rounds < min_repeats or (rounds < max_repeats and max(sum(t) for t in times.values()) < budget_s):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
        rounds += 1
    return {name: {**summarize(t), "warmup": warmup, "repeats": len(t)} for name, t in times.items()}


@contextmanager
def count_calls(*models: torch.nn.Module):
    """Counts model calls and the rows they process via a hook on the final LayerNorm, which every
    masked forward and every AR ``next_logits`` (cached or recomputing) runs exactly once."""
    tally = {"calls": 0, "rows": 0}

    def hook(_module, inputs, _output):
        tally["calls"] += 1
        tally["rows"] += int(inputs[0].shape[0])

    handles = [m.norm.register_forward_hook(hook) for m in dict.fromkeys(models)]
    try:
        yield tally
    finally:
        for h in handles:
            h.remove()


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------
def transformer_forward_flops(cfg, batch: int, text_len: int = TEXT_LEN, low_res_depth: int = 0) -> dict[str, int]:
    """Analytic FLOPs (2 per multiply-add) of one :class:`MaskedTokenTransformer` forward.

    ``linear``: every weight matmul (text projection, q/kv/out projections of self- and
    cross-attention, MLP, the C output heads, the concat channel mixes); ``attention``: the
    score and value products of self-attention and of cross-attention. Embedding lookups, norms
    and softmax are not counted. A super-res model (``cfg.low_res``) has the low-res tokens either
    in the sequence (``low_res_depth=0``: the joint form, S = N + Nl) or, Muse Fig. 4
    (:class:`lib.generation.super_res.MuseSuperResTransformer`, ``low_res_depth`` encoder blocks), in a
    separate self-attention encoder whose Nl outputs join the text as cross-attention memory
    (S = N, memory = text_len + Nl). ``condition_attention`` is the part computed once per condition
    (the low-res encoder's attention), which decoding caches across steps.
    """
    if cfg.text_mode not in ("none", "cross_attention") or cfg.max_visual_tokens:
        raise AtelierInputError(f"transformer_forward_flops: text_mode {cfg.text_mode!r} with visual tokens is not "
                                "modelled (cross_attention or none, no visual prefix)")
    d, b, n = cfg.dim, batch, cfg.num_positions
    hidden = int(d * cfg.mlp_ratio)
    nl = cfg.low_res[0] * cfg.low_res[1] if cfg.low_res else 0
    encoder = int(low_res_depth) if nl else 0
    s = n + (0 if encoder else nl)
    cross = cfg.text_mode == "cross_attention"
    memory = text_len + (nl if encoder else 0)
    linear = 0
    if cfg.channel_embedding != "sum":  # the concatenating modes' linear map (absent for one channel)
        if cfg.channels > 1:
            linear += 2 * b * n * cfg.channels * d * d
        if cfg.low_res and cfg.low_res[2] > 1:
            linear += 2 * b * nl * cfg.low_res[2] * d * d
    if cross:
        linear += 2 * b * text_len * cfg.text_dim * d
    per_block_linear = 8 * b * s * d * d + 4 * b * s * d * hidden
    per_block_attn = 4 * b * s * s * d
    if cross:
        per_block_linear += 4 * b * s * d * d + 4 * b * memory * d * d
        per_block_attn += 4 * b * s * memory * d
    linear += cfg.depth * per_block_linear + 2 * b * n * d * cfg.channels * cfg.codebook_size
    condition_attention = encoder * 4 * b * nl * nl * d
    linear += encoder * (8 * b * nl * d * d + 4 * b * nl * d * hidden)
    attention = cfg.depth * per_block_attn + condition_attention
    return {"linear": linear, "attention": attention, "condition_attention": condition_attention,
            "total": linear + attention}


def _low_res_depth(model) -> int:
    """The low-res encoder depth of a Muse-form super-res model (0: none, the joint form)."""
    return int(getattr(model, "low_res_depth", 0))


def counted_linear_flops(model: torch.nn.Module, fn: Callable[[], Any]) -> int:
    """FLOPs of every ``nn.Linear`` call during ``fn()`` (2 * in * out per input row), counted by
    forward hooks: an independent check of the ``linear`` part of :func:`transformer_forward_flops`."""
    total = 0

    def hook(module, inputs, _output):
        nonlocal total
        rows = inputs[0].numel() // module.in_features
        total += 2 * rows * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return total


# ---------------------------------------------------------------------------------------------
# Models and inputs
# ---------------------------------------------------------------------------------------------
def model_size(profile: dict[str, Any], params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    if profile["model"] is not None:
        return dict(profile["model"]), "smoke override: a tiny model (times the code path, not the configured size)"
    G = params["generation"]
    size = {"dim": int(G["dim"]), "depth": int(G["depth"]), "heads": int(G["heads"]), "mlp_ratio": float(G["mlp_ratio"])}
    return size, "params.yaml generation.dim/depth/heads/mlp_ratio (the trained generators' size)"


def build_models(grid: int, size: dict[str, Any], codebook_size: int, text_mode: str, seed: int,
                 device: torch.device, super_res_form: tuple[str, int] = ("cross_attention", 2)
                 ) -> dict[str, torch.nn.Module]:
    """Masked and AR transformers of one size over a ``grid x grid`` x 1 token grid, plus (16x16 and
    up) the super-resolution stage conditioned on ``grid/2 x grid/2`` low-res tokens, in the form
    ``super_res_form = (super_res.low_res_mode, super_res.low_res_depth)``."""
    from lib.generation import ARTransformer, MaskedTokenTransformer, TransformerConfig
    from lib.generation.super_res import build_super_res_model

    cfg = TransformerConfig(grid_h=grid, grid_w=grid, channels=1, codebook_size=codebook_size, text_mode=text_mode,
                            max_text_len=TEXT_LEN, **size)
    torch.manual_seed(seed)
    models = {"masked": MaskedTokenTransformer(cfg), "ar": ARTransformer(cfg)}
    if grid >= 16 and grid % 2 == 0:
        low = grid // 2
        sr = TransformerConfig.from_dict({**cfg.to_dict(), "low_res": (low, low, 1, codebook_size)})
        models["super_res"] = build_super_res_model(sr, super_res_form[0], int(super_res_form[1]))
    return {k: m.to(device).eval() for k, m in models.items()}


def text_condition(batch: int, text_dim: int, device: torch.device, seed: int):
    """Random frozen-text features of full length (the most text a model attends to), every row kept."""
    from lib.generation import Condition

    g = torch.Generator().manual_seed(seed)
    return Condition(text_tokens=torch.randn(batch, TEXT_LEN, text_dim, generator=g).to(device),
                     text_mask=torch.ones(batch, TEXT_LEN, dtype=torch.bool, device=device))


def sampler_methods(models: dict[str, torch.nn.Module], batch: int, settings: dict[str, Any], seed: int,
                    device: torch.device) -> dict[str, dict[str, Any]]:
    """name -> {label, model (whose calls are counted), fn (one decoding of ``batch`` grids)}."""
    from lib.sampling import ClassifierFreeGuidance, LinearGuidanceSchedule, sample
    from lib.pipelines.sampling import make_scheduler, sample_ar, sample_masked

    masked, ar = models["masked"], models["ar"]
    cfg = masked.config
    cond = text_condition(batch, cfg.text_dim, device, seed)
    temperature, top_k = float(settings.get("temperature", 1.0)), settings.get("top_k")
    steps = int(settings["maskgit_steps"])
    scale = float(settings["guidance_scale"])
    methods: dict[str, dict[str, Any]] = {}

    def ar_fn(use_cache: bool):
        return lambda: sample_ar(ar, cond, batch, temperature=temperature, top_k=top_k, use_cache=use_cache,
                                 seed=seed, batch_size=batch)

    def masked_fn(model, c, factory, guidance=0.0):
        return lambda: sample_masked(model, c, batch, factory, guidance=guidance, seed=seed, batch_size=batch)

    methods["ar_recompute"] = dict(label="AR baseline, whole prefix recomputed every step (Taming's sampler)",
                                   model=ar, fn=ar_fn(False))
    methods["ar_kv_cache"] = dict(label="AR baseline with KV cache", model=ar, fn=ar_fn(True))
    for s in MASKGIT_STEPS:
        methods[f"maskgit_{s}"] = dict(label=f"MaskGIT, {s} steps", model=masked,
                                       fn=masked_fn(masked, cond, lambda s=s: make_scheduler("maskgit", settings,
                                                                                             maskgit_steps=s)))
    methods[f"smart_T{SMART_T}"] = dict(label=f"SMART, T={SMART_T} ({SMART_T + 1} model calls)", model=masked,
                                        fn=masked_fn(masked, cond, lambda: make_scheduler("smart", settings,
                                                                                          smart_T=SMART_T)))
    schedule = LinearGuidanceSchedule(scale, steps)
    methods["muse_cfg_batched"] = dict(
        label=f"Muse CFG (linear 0->{scale:g}), MaskGIT {steps} steps, one batched pass of 2B rows per step",
        model=masked, fn=masked_fn(masked, cond, lambda: make_scheduler("maskgit", settings), guidance=schedule))
    uncond = cond.unconditional()

    def two_pass():
        guided = ClassifierFreeGuidance(lambda t: masked(t, cond), lambda t: masked(t, uncond), schedule)
        tokens = torch.full((batch, cfg.num_positions, cfg.channels), cfg.mask_id, dtype=torch.long, device=device)
        gen = torch.Generator(device=device).manual_seed(seed)
        return sample(guided, make_scheduler("maskgit", settings), tokens, torch.zeros_like(tokens, dtype=torch.bool),
                      cfg.mask_id, generator=gen)

    methods["muse_cfg_two_pass"] = dict(
        label=(f"Muse CFG (linear 0->{scale:g}), MaskGIT {steps} steps, two forward passes per step "
               "(the unconditional pass is skipped at step 0, where the scale is 0)"), model=masked, fn=two_pass)
    if "super_res" in models:
        sr = models["super_res"]
        sr_steps = int(settings["super_res_steps"])  # params.yaml super_res.sampling_steps (Muse Sec. 2.8)
        lh, lw, lc, lk = sr.config.low_res
        g = torch.Generator().manual_seed(seed + 1)
        sr_cond = text_condition(batch, cfg.text_dim, device, seed)
        sr_cond.low_res_tokens = torch.randint(0, lk, (batch, lh * lw, lc), generator=g).to(device)
        methods["super_res"] = dict(
            label=(f"{SUPER_RES_LABEL}: {cfg.grid_h}x{cfg.grid_w} tokens conditioned on {lh}x{lw} low-res tokens "
                   f"+ text, MaskGIT {sr_steps} steps (Muse Sec. 2.4, 2.8; "
                   + (f"low-res encoder of {_low_res_depth(sr)} blocks + cross-attention, Fig. 4)" if _low_res_depth(sr)
                      else "low-res tokens in the self-attention)")),
            model=sr, fn=masked_fn(sr, sr_cond, lambda: make_scheduler("maskgit", settings,
                                                                      maskgit_steps=sr_steps)))
    return methods


def ratios(seconds_per_image: dict[str, float], reference: str) -> dict[str, float]:
    """``seconds_per_image[reference] / seconds_per_image[m]`` for every method m: how many times
    faster per image than the reference (medians of the same run)."""
    ref = seconds_per_image[reference]
    return {m: ref / s for m, s in seconds_per_image.items()}


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
def bench_samplers(models, batches, settings, seed, device, dtype, timing, log) -> dict[str, Any]:
    """Every sampler at every batch size, timed interleaved (:func:`measure_interleaved`), with the
    model calls and rows per call each run makes (counted, not assumed)."""
    out: dict[str, Any] = {}
    for batch in batches:
        methods = sampler_methods(models, batch, settings, seed, device)
        counts = {name: {"calls": 0, "rows": 0, "runs": 0} for name in methods}
        with count_calls(*models.values()) as tally:

            def counted(name, fn):
                def call():
                    calls, rows = tally["calls"], tally["rows"]
                    fn()
                    c = counts[name]
                    c["calls"] += tally["calls"] - calls
                    c["rows"] += tally["rows"] - rows
                    c["runs"] += 1
                return call

            with _autocast(device, dtype), torch.no_grad():
                all_stats = measure_interleaved({name: counted(name, m["fn"]) for name, m in methods.items()},
                                                device=device, **timing)
        rows: dict[str, Any] = {}
        for name, m in methods.items():
            stats, c = all_stats[name], counts[name]
            med = stats["median"]
            rows[name] = {
                "label": m["label"],
                "model_calls": c["calls"] / c["runs"],
                "rows_per_call": c["rows"] / max(c["calls"], 1),
                "seconds": stats,
                "seconds_per_image": {k: stats[k] / batch for k in ("median", "q1", "q3", "iqr")},
                "images_per_s": batch / med,
            }
            log(f"  batch {batch:3d} {name:18s} {med / batch * 1e3:10.2f} ms/image  ({rows[name]['model_calls']:.0f} "
                f"calls, {stats['repeats']} runs, IQR {stats['iqr'] / batch * 1e3:.2f} ms)")
        spi = {name: r["seconds_per_image"]["median"] for name, r in rows.items()}
        out[f"batch_{batch}"] = {"batch": batch, "methods": rows,
                                 "speedup_vs_ar_recompute": ratios(spi, "ar_recompute"),
                                 "speedup_vs_ar_kv_cache": ratios(spi, "ar_kv_cache")}
    return out


def bench_matmul(sizes, device, dtype, repeats) -> dict[str, Any]:
    """Dense ``torch.matmul`` FLOP/s (2 n^3 per n x n product) at each size; the best median is the peak."""
    per_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        stats = measure(lambda: torch.matmul(a, b), warmup=2, min_repeats=repeats, max_repeats=repeats, budget_s=0,
                        device=device)
        per_size[str(n)] = {"seconds": stats, "flops": 2 * n ** 3, "flop_per_s": 2 * n ** 3 / stats["median"]}
    best = max(per_size, key=lambda k: per_size[k]["flop_per_s"])
    return {"sizes": per_size, "peak_size": int(best), "peak_flop_per_s": per_size[best]["flop_per_s"],
            "dtype": str(dtype).replace("torch.", "")}


def bench_mfu(model, batch, seed, device, dtype, repeats, peak) -> dict[str, Any]:
    """One forward of the masked transformer on an all-[MASK] grid at ``batch`` (the first MaskGIT
    step, with text cross-attention): analytic FLOPs / median time / measured matmul peak."""
    cfg = model.config
    tokens = torch.full((batch, cfg.num_positions, cfg.channels), cfg.mask_id, dtype=torch.long, device=device)
    cond = text_condition(batch, cfg.text_dim, device, seed)

    def forward():
        with torch.no_grad(), _autocast(device, dtype):
            return model(tokens, cond)

    flops = transformer_forward_flops(cfg, batch, low_res_depth=_low_res_depth(model))
    stats = measure(forward, warmup=2, min_repeats=repeats, max_repeats=repeats, budget_s=0, device=device)
    rate = flops["total"] / stats["median"]
    return {"batch": batch, "flops_analytic": flops, "flops_linear_counted": counted_linear_flops(model, forward),
            "seconds": stats, "flop_per_s": rate, "mfu": rate / peak,
            "definition": "analytic FLOPs of one forward / median forward seconds / peak dense-matmul FLOP/s of this "
                          "run (model FLOPs utilisation)"}


def step_flops(model, rows: int, seed: int, device: torch.device) -> dict[str, int]:
    """FLOPs of one sampler call of the masked transformer on ``rows`` grids, as the samplers make it
    (condition embedded once, :meth:`encode_condition`): weight matmuls counted by
    ``torch.utils.flop_counter.FlopCounterMode``, plus attention score/value products from
    :func:`transformer_forward_flops` (FlopCounterMode has no formula for the CPU flash-attention
    kernel, so it counts none of them there)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.config
    tokens = torch.full((rows, cfg.num_positions, cfg.channels), cfg.mask_id, dtype=torch.long, device=device)
    cond = text_condition(rows, cfg.text_dim, device, seed)
    if cfg.low_res is not None:
        lh, lw, lc, lk = cfg.low_res
        cond.low_res_tokens = torch.zeros(rows, lh * lw, lc, dtype=torch.long, device=device)
    with torch.no_grad():
        cache = model.encode_condition(cond, rows)
        counter = FlopCounterMode(display=False)
        with counter:
            model(tokens, cond, cache=cache)
    counted = {str(k).replace("aten.", ""): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    matmul = sum(v for k, v in counted.items() if "attention" not in k)
    f = transformer_forward_flops(cfg, rows, low_res_depth=_low_res_depth(model))
    attention = f["attention"] - f["condition_attention"]  # the encoder ran in encode_condition, once
    return {"matmul_counted": matmul, "attention_analytic": attention, "total": matmul + attention,
            "counted_ops": counted}


def flop_bounds(models, samplers: dict[str, Any], seed: int, device: torch.device, peak: float) -> dict[str, Any]:
    """For every masked-transformer sampler at every batch: the seconds its model calls would take
    at the dense-matmul peak of this run (calls x FLOPs per call / peak), and measured / bound."""
    cache: dict[tuple[str, int], dict[str, int]] = {}
    out: dict[str, Any] = {}
    for batch_key, entry in samplers.items():
        rows_out = {}
        for name, row in entry["methods"].items():
            if name in AR_METHODS:
                continue
            key = "super_res" if name == "super_res" else "masked"
            per_call_rows = int(round(row["rows_per_call"]))
            if (key, per_call_rows) not in cache:
                cache[(key, per_call_rows)] = step_flops(models[key], per_call_rows, seed, device)
            f = cache[(key, per_call_rows)]
            bound = row["model_calls"] * f["total"] / peak
            rows_out[name] = {"model_calls": row["model_calls"], "rows_per_call": per_call_rows,
                              "flops_per_call": f, "bound_seconds": bound,
                              "measured_seconds": row["seconds"]["median"],
                              "measured_over_bound": row["seconds"]["median"] / bound}
        out[batch_key] = rows_out
    out["definition"] = ("bound_seconds = model calls x FLOPs per call (weight matmuls counted by FlopCounterMode with "
                         "the condition embedded once, + analytic attention) / the peak dense-matmul FLOP/s measured "
                         "in this run; sampling ops (softmax, draws, confidence sort) and Python are not in the bound")
    return out


def bench_tokenizers(params, grids, batches, device, dtype, timing, log) -> dict[str, Any]:
    """Encode (encoder + quantizer) and decode (codebook lookup + decoder) images/s of randomly
    initialised tokenizers with the params.yaml architecture: 'vq' (the Muse model's tokens) and
    'muse_vq' (its 2x wider, 2x deeper fine-tuned decoder, Muse Sec. 2.5; decode only)."""
    from lib.models.tokenizer import Tokenizer
    from lib.pipelines.tokenizers import tokenizer_config

    S = params["tokenizers"]
    out: dict[str, Any] = {"weights": "random initialisation (timing only)"}
    for name, parts in (("vq", ("encode", "decode")), ("muse_vq", ("decode",))):
        base = tokenizer_config(S, name)
        factor = Tokenizer(base).encoder.downsample_factor
        for grid in grids:
            torch.manual_seed(0)
            tok = Tokenizer({**base, "image_size": grid * factor}).to(device).eval()
            side = grid * factor
            entry = out.setdefault(name, {}).setdefault(f"{grid}x{grid}", {"image_size": side,
                                                                          "token_shape": list(tok.token_shape)})
            for batch in batches:
                images = torch.rand(batch, 3, side, side, device=device) * 2 - 1
                with torch.no_grad():
                    indices = tok.encode(images).indices
                fns = {"encode": lambda: tok.encode(images).indices, "decode": lambda: tok.decode_indices(indices)}
                for part in parts:
                    with torch.no_grad(), _autocast(device, dtype):
                        stats = measure(fns[part], device=device, **timing)
                    entry.setdefault(part, {})[f"batch_{batch}"] = {
                        "seconds": stats, "seconds_per_image": stats["median"] / batch,
                        "images_per_s": batch / stats["median"]}
                    log(f"  tokenizer {name:8s} {grid}x{grid} {part:6s} batch {batch:3d}: "
                        f"{batch / stats['median']:9.1f} images/s")
    return out


def bench_retrieval(galleries, dim, threads, warmup, repeats, k=10) -> dict[str, Any]:
    """Latency of one query (batch 1, exact cosine top-k) over random unit embeddings, on ``threads``
    CPU threads (the brief's target: < 20 ms over 100k items on 2 cores)."""
    from lib.retrieval.index import RetrievalIndex

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": threads, "dim": dim, "k": k, "query_batch": 1, "backend": "exact",
                           "device": "cpu"}
    try:
        g = torch.Generator().manual_seed(0)
        for n in galleries:
            index = RetrievalIndex(torch.randn(n, dim, generator=g))
            query = torch.randn(1, dim, generator=g)
            stats = measure(lambda: index.search(query, k), warmup=warmup, min_repeats=repeats, max_repeats=repeats,
                            budget_s=0, device=torch.device("cpu"))
            out[str(n)] = {"gallery": n, "ms": {key: v * 1e3 for key, v in stats.items() if key in
                                                 ("median", "q1", "q3", "iqr", "min", "max")},
                           "repeats": stats["repeats"], "warmup": stats["warmup"]}
    finally:
        torch.set_num_threads(before)
    return out


def prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` captions of the dataset's grammar (lib.data.captions) for the text-encoder timing."""
    import numpy as np

    from lib.data.attributes import CATEGORY_NAMES, COLOUR_NAMES, PATTERN_NAMES
    from lib.data.captions import captions

    rng = np.random.default_rng(seed)
    return [captions(rng, int(rng.integers(len(CATEGORY_NAMES))), int(rng.integers(len(COLOUR_NAMES))),
                     int(rng.integers(len(PATTERN_NAMES))), 1)[0] for _ in range(n)]


def bench_text_encoder(batches, device, timing, log) -> dict[str, Any]:
    """The frozen MiniLM (lib.text.encoder.shared_encoder) on a batch of prompts, per batch size."""
    try:
        from lib.text.encoder import shared_encoder

        encoder = shared_encoder().to(device)
    except (ImportError, OSError) as err:
        return {"skipped": f"text encoder unavailable: {err}"}
    out: dict[str, Any] = {"encoder": "frozen all-MiniLM-L6-v2 (lib.text.encoder.shared_encoder)"}
    for batch in batches:
        texts = prompts(batch)
        stats = measure(lambda: encoder(texts), device=device, **timing)
        out[f"batch_{batch}"] = {"seconds": stats, "seconds_per_image": stats["median"] / batch,
                                 "prompts": texts[:3]}
        log(f"  text encoder batch {batch:3d}: {stats['median'] / batch * 1e3:.2f} ms/prompt")
    return out


def breakdown(grids_out, tokenizers, text, batches, settings) -> dict[str, Any]:
    """Seconds per image of each Muse pipeline component (medians of this run): text encoder ->
    transformer (CFG batched, the configured MaskGIT steps) -> token decoder ('muse_vq' decoder);
    and, with both grids, the two-stage pipeline (8x8 base + 16x16 super-res + 16x16 decoder)."""
    out: dict[str, Any] = {}
    for batch in batches:
        key = f"batch_{batch}"
        text_s = text.get(key, {}).get("seconds_per_image")

        def pipeline(parts: dict[str, float | None]) -> dict[str, Any]:
            comps = {k: v for k, v in parts.items() if v is not None}
            total = sum(comps.values())
            return {"components": comps, "total_seconds_per_image": total,
                    "shares": {k: v / total for k, v in comps.items()}}

        for grid_key, g in grids_out.items():
            rows = g["samplers"][key]["methods"]
            dec = tokenizers["muse_vq"][grid_key]["decode"][key]["seconds_per_image"]
            out.setdefault(grid_key, {})[key] = pipeline({
                "text_encoder": text_s, "transformer": rows["muse_cfg_batched"]["seconds_per_image"]["median"],
                "decoder": dec})
            out[grid_key][key]["transformer_steps"] = int(settings["maskgit_steps"])
        if "8x8" in grids_out and "super_res" in grids_out.get("16x16", {}).get("samplers", {}).get(key, {}).get(
                "methods", {}):
            base = grids_out["8x8"]["samplers"][key]["methods"]["muse_cfg_batched"]["seconds_per_image"]["median"]
            sr = grids_out["16x16"]["samplers"][key]["methods"]["super_res"]["seconds_per_image"]["median"]
            dec = tokenizers["muse_vq"]["16x16"]["decode"][key]["seconds_per_image"]
            out.setdefault("two_stage_8x8_to_16x16", {})[key] = pipeline({
                "text_encoder": text_s, "transformer": base, "super_res": sr, "decoder": dec})
    out["definition"] = ("seconds per image of each component, medians measured in this run; transformer = Muse CFG "
                         "batched MaskGIT (in two_stage_8x8_to_16x16: the 8x8 base stage); decoder = the 'muse_vq' "
                         f"fine-tuned decoder (random weights); super_res = the {SUPER_RES_LABEL}")
    return out


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's speed targets, evaluated honestly (reported, never asserted)."""
    out: dict[str, Any] = {}
    g16 = result["grids"].get("16x16", {}).get("samplers", {}).get("batch_1")
    nar = [f"maskgit_{s}" for s in MASKGIT_STEPS if s <= 12] + [f"smart_T{SMART_T}"]
    if g16 is not None and result["device"] == "cpu":
        r = {m: g16["speedup_vs_ar_recompute"][m] for m in nar}
        out["nar_vs_ar_recompute_16x16_cpu_batch1"] = {
            "target": "NAR at <= 12 model calls at least 8x faster per image than the recomputing AR baseline",
            "threshold": 8.0, "per_method": r, "value": min(r.values()), "met": min(r.values()) >= 8.0}
    else:
        out["nar_vs_ar_recompute_16x16_cpu_batch1"] = {"skipped": "needs the 16x16 grid at batch 1 on CPU"}
    b1 = result["grids"].get("16x16", {}).get("flop_bound", {}).get("batch_1", {}).get("maskgit_12")
    if b1 is not None:
        out["maskgit_12_batch1_16x16_vs_flop_bound"] = {
            "target": "MaskGIT 12 steps at 16x16, batch 1: measured latency within 2x of its FLOP bound (same run)",
            "threshold": 2.0, "bound_seconds": b1["bound_seconds"], "measured_seconds": b1["measured_seconds"],
            "value": b1["measured_over_bound"], "met": b1["measured_over_bound"] <= 2.0}
    else:
        out["maskgit_12_batch1_16x16_vs_flop_bound"] = {"skipped": "needs the 16x16 grid at batch 1"}
    mfu = {k: g["mfu"]["mfu"] for k, g in result["grids"].items() if "mfu" in g}
    if mfu:
        out["mfu_large_batch"] = {"target": "transformer forward at the large batch >= 50% of measured matmul FLOP/s",
                                  "threshold": 0.5, "batch": result["batches"][-1], "per_grid": mfu,
                                  "value": max(mfu.values()), "met": max(mfu.values()) >= 0.5}
    ret = result["retrieval"].get("100000")
    if ret is not None:
        out["retrieval_100k_ms"] = {"target": "one query over 100k items under 20 ms on 2 CPU cores",
                                    "threshold_ms": 20.0, "threads": result["retrieval"]["threads"],
                                    "value": ret["ms"]["median"], "met": ret["ms"]["median"] < 20.0}
    return out


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def run(profile: str, out: Path | None = None, *, device: str | None = None, dtype: str | None = None,
        threads: int | None = None, grids: tuple[int, ...] | None = None, batches: tuple[int, ...] | None = None,
        warmup: int | None = None, repeats: int | None = None, retrieval_threads: int = 2,
        progress: bool = True) -> Path:
    """Run the benchmark of ``profile`` (overrides as the CLI) and write the JSON; returns its path."""
    import lib.config as lib_params

    if profile not in PROFILES:
        raise AtelierInputError(f"--profile must be one of {sorted(PROFILES)}, got {profile!r}")
    prof = dict(PROFILES[profile])
    params = lib_params.load(profile)
    seed = int(params["seed"])
    dev_name = device or prof["device"]
    if dev_name.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: running on cpu in float32", file=sys.stderr)
        dev_name, dtype = "cpu", dtype or "float32"
    dev = torch.device(dev_name)
    dtype_name = dtype or (prof["dtype"] if dev.type == "cuda" else "float32")
    if dtype_name not in DTYPES:
        raise AtelierInputError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype_name!r}")
    dt = DTYPES[dtype_name]
    if threads:
        torch.set_num_threads(threads)
    grids = tuple(grids or prof["grids"])
    batches = tuple(sorted(set(batches or prof["batches"])))
    timing = dict(warmup=prof["warmup"] if warmup is None else warmup,
                  min_repeats=repeats or prof["min_repeats"], max_repeats=max(repeats or 0, prof["max_repeats"]),
                  budget_s=prof["budget_s"])
    size, size_source = model_size(prof, params)
    settings = dict(params["generation"]["sampling"], super_res_steps=int(params["super_res"]["sampling_steps"]))
    entry = params["generation"]["models"]["muse"]
    log = print if progress else (lambda *_: None)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    t_start = time.perf_counter()

    result: dict[str, Any] = {
        "benchmark": "generation speed: parallel (MaskGIT / SMART / Muse CFG) vs autoregressive decoding",
        "profile": profile, "smoke": profile == "smoke",
        "weights": WEIGHTS_NOTE,
        "device": dev.type, "device_info": device_info(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "dtype": dtype_name,
        "timing": {**timing, "definition": "warmup untimed runs, then timed runs until min_repeats are done and either "
                                           "max_repeats are done or budget_s seconds are spent; the samplers of one "
                                           "grid and batch are timed interleaved (round-robin, one run of each per "
                                           "round) so that load drift on a shared machine affects them alike"},
        "grids": {}, "batches": list(batches),
        "model": {**size, "size_source": size_source, "text_mode": entry["text_mode"], "text_tokens": TEXT_LEN,
                  "codebook_size": None, "channels": 1},
        "sampling": settings,
    }
    from lib.pipelines.tokenizers import tokenizer_config

    codebook_size = int(tokenizer_config(params["tokenizers"], entry["tokenizer"])["quantizer_kwargs"]["codebook_size"])
    result["model"]["codebook_size"] = codebook_size
    result["model"]["tokenizer"] = entry["tokenizer"]

    matmul = bench_matmul(prof["matmul_sizes"], dev, dt, prof["mfu_repeats"])
    result["matmul"] = matmul
    log(f"matmul peak: {matmul['peak_flop_per_s'] / 1e9:.1f} GFLOP/s ({matmul['dtype']}, n={matmul['peak_size']})")
    for grid in grids:
        key = f"{grid}x{grid}"
        log(f"grid {key}:")
        models = build_models(grid, size, codebook_size, entry["text_mode"], seed, dev,
                              (params["super_res"]["low_res_mode"], int(params["super_res"]["low_res_depth"])))
        g: dict[str, Any] = {"token_shape": [grid, grid, 1],
                             "parameters": {k: int(sum(p.numel() for p in m.parameters())) for k, m in models.items()}}
        g["samplers"] = bench_samplers(models, batches, settings, seed, dev, dt, timing, log)
        g["flop_bound"] = flop_bounds(models, g["samplers"], seed, dev, matmul["peak_flop_per_s"])
        if "maskgit_12" in g["flop_bound"].get("batch_1", {}):
            b1 = g["flop_bound"]["batch_1"]["maskgit_12"]
            log(f"  MaskGIT 12 steps, batch 1: {b1['measured_seconds'] * 1e3:.1f} ms vs FLOP bound "
                f"{b1['bound_seconds'] * 1e3:.1f} ms ({b1['measured_over_bound']:.2f}x)")
        g["mfu"] = bench_mfu(models["masked"], batches[-1], seed, dev, dt, prof["mfu_repeats"],
                             matmul["peak_flop_per_s"])
        log(f"  MFU at batch {batches[-1]}: {g['mfu']['mfu']:.1%} ({g['mfu']['flop_per_s'] / 1e9:.1f} GFLOP/s)")
        result["grids"][key] = g
        del models
    log("tokenizers:")
    result["tokenizer"] = bench_tokenizers(params, grids, batches, dev, dt, timing, log)
    log("text encoder:")
    result["text_encoder"] = bench_text_encoder(batches, dev, timing, log)
    log("retrieval:")
    result["retrieval"] = bench_retrieval(prof["galleries"], int(params["judges"]["embed_dim"]), retrieval_threads,
                                          prof["retrieval_warmup"], prof["retrieval_repeats"])
    for n in prof["galleries"]:
        log(f"  {n:7d} items: {result['retrieval'][str(n)]['ms']['median']:.2f} ms/query")
    result["breakdown"] = breakdown(result["grids"], result["tokenizer"], result["text_encoder"], batches, settings)
    result["targets"] = targets(result)
    result["seconds_total"] = time.perf_counter() - t_start
    result["load_average"] = {"before": list(load_before) if load_before else None,
                              "after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    result["provenance"] = run_info(profile, seed, benchmark="reproduce/bench_generation.py")
    path = Path(out) if out is not None else results_dir("bench") / "generation.json"
    atomic_write_json(path, result)
    for name, t in result["targets"].items():
        if "value" in t:
            log(f"target {name}: {t['value']:.4g} ({'met' if t['met'] else 'NOT met'})")
    log(f"wrote {path} ({result['seconds_total']:.0f} s)")
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True, choices=sorted(PROFILES))
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default <out_root>/results/bench/generation.json)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: the profile's; gpu falls back to cpu)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="float32, or bfloat16 autocast")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--grids", type=_int_list, default=None, help="grid sides, e.g. 8,16")
    parser.add_argument("--batches", type=_int_list, default=None, help="batch sizes, e.g. 1,32")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per measurement")
    parser.add_argument("--repeats", type=int, default=None, help="minimum timed runs per measurement")
    parser.add_argument("--retrieval-threads", type=int, default=2, help="CPU threads of the retrieval timing")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        return run(args.profile, args.out, device=args.device, dtype=args.dtype, threads=args.threads,
                   grids=args.grids, batches=args.batches, warmup=args.warmup, repeats=args.repeats,
                   retrieval_threads=args.retrieval_threads, progress=not args.quiet)
    except AtelierInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
