"""How long the gpu profile would take at paper-like shapes on one H100/H200: an estimate (issue 21).

Applies ``reproduce/gpu_shapes.yaml`` to the ``gpu`` profile of params.yaml, counts the FLOPs of one
training step of every model the profile trains (each tokenizer config, each generator, the
UniFashion Q-Former) with ``torch.utils.flop_counter.FlopCounterMode`` at a small batch on this
machine's CPU (the count does not depend on the device), scales it to the profile's batch and step
count, and divides by an assumed sustained rate: ``--peak-tflops`` (dense bf16 of an H100/H200 SXM,
989) x ``--mfu``. The count covers matmuls and convolutions only, and the MFU is assumed, so the
hours are an estimate to be replaced by ``reproduce/bench_training.py`` measured on the device.

    .venv/bin/python reproduce/size_gpu_profile.py [--mfu 0.3] [--shapes FILE] [--out PATH]

(stage ``bench_gpu_sizing``; default output ``<out_root>/results/bench/gpu_sizing.json``)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

import lib.config as lib_params  # noqa: E402
from lib.io import AtelierInputError, atomic_write_json  # noqa: E402
from lib.provenance import run_info  # noqa: E402
from lib.store import out_root  # noqa: E402

SHAPES = ROOT / "reproduce" / "gpu_shapes.yaml"
#: the sections gpu_shapes.yaml may override
SECTIONS = ("data_source", "tokenizers", "generation", "unifashion")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_training", ROOT / "reproduce" / "bench_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def gpu_shape_params(shapes: Path = SHAPES) -> dict:
    """The ``gpu`` profile with ``gpu_shapes.yaml`` merged in, checked: every overridden key must
    already exist in the profile, and the merged values must pass params.yaml's own checks (all
    but the one that ties ``tokenizers.image_size`` to today's 32 px data)."""
    P = lib_params.load("gpu")
    over = yaml.safe_load(shapes.read_text()) or {}
    bad = [k for k in over if k not in SECTIONS]
    if bad:
        raise AtelierInputError(f"{shapes}: section {bad[0]!r} cannot be overridden (known: {', '.join(SECTIONS)})")

    def unknown(base, o, where):
        for k, v in o.items():
            if k not in base:
                raise AtelierInputError(f"{shapes}: {where}{k}: not a key of the gpu profile")
            if isinstance(v, dict) and isinstance(base[k], dict):
                unknown(base[k], v, f"{where}{k}.")
    for section, values in over.items():
        if section != "data_source":
            unknown(P[section], values, f"{section}.")
    merged = _merge(P, over)
    check = copy.deepcopy(merged)
    size = check["tokenizers"]["image_size"]
    f = 2 ** (len(check["tokenizers"]["ch_mult"]) - 1)
    if size % f:
        raise AtelierInputError(f"{shapes}: tokenizers.image_size {size} is not divisible by the downsampling {f}")
    check["tokenizers"]["image_size"] = lib_params.DATA_IMAGE_SIZE  # only the tie to today's data is waived
    lib_params.validate(check, str(shapes))
    from lib.data.sources import source_settings

    source_settings({"data_source": {**merged.get("data_source", {}), "kind": "folder", "root": "-"}}, str(shapes))
    return merged


def token_grid(P: dict, name: str) -> tuple[int, int, int]:
    from lib.models.tokenizer import Tokenizer
    from lib.pipelines.tokenizers import tokenizer_config

    with torch.device("meta"):
        return tuple(Tokenizer(tokenizer_config(P["tokenizers"], name)).token_shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device")
    parser.add_argument("--mfu", type=float, default=0.3, help="assumed model-FLOP utilisation")
    parser.add_argument("--shapes", type=Path, default=SHAPES, help="the shapes file (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    B = _bench()
    P = gpu_shape_params(args.shapes)
    cpu = torch.device("cpu")
    sustained = args.peak_tflops * 1e12 * args.mfu
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []

    def add(stage: str, kind: str, flops_per_sample: float, batch: int, steps: int, **extra):
        total = flops_per_sample * batch * steps
        rows.append({"stage": stage, "kind": kind, "flops_per_sample": flops_per_sample, "batch_size": batch,
                     "steps": steps, "training_flops": total, "estimated_hours": total / sustained / 3600, **extra})
        print(f"{stage:>28} {kind:>11}: {flops_per_sample / 1e9:8.1f} GFLOP/sample x {batch} x {steps} steps "
              f"= {total / sustained / 3600:6.2f} h", flush=True)

    T, G = P["tokenizers"], P["generation"]
    per_sample_tok: dict[str, float] = {}
    for name, steps in T["steps"].items():
        if steps <= 0:
            continue
        if name not in per_sample_tok:
            _, flops_of, _ = B.tokenizer_step(P, name, 1, cpu, pretrained=False, pool_size=1)
            per_sample_tok[name] = float(flops_of("all"))
        add(f"tokenizer@{name}", "tokenizer", per_sample_tok[name], T["batch_size"], steps, token_grid=token_grid(P, name))
    for name, entry in G["models"].items():
        steps = G["steps"].get(name, 0)
        if steps <= 0:
            continue
        _, flops_of, params = B.transformer_step(P, name, 2, cpu)
        add(f"generator@{name}", "transformer", flops_of("all") / 2, G["batch_size"], steps,
            parameters=params["transformer"], sequence=params["sequence"])
    U = P["unifashion"]
    _, flops_of, params = B.qformer_step(P, 4, cpu)
    q_steps = sum(int(v) for k, v in U["steps"].items() if k in ("phase1", "phase2", "phase2_base"))
    add("unifashion (phase 1 + 2)", "qformer", flops_of("all") / 4, U["batch_size"], q_steps,
        parameters=params["qformer"])
    total = sum(r["estimated_hours"] for r in rows)
    out = {
        "rows": rows, "estimated_hours_total": total,
        "not_estimated": ["super_res (its own tokenizer + transformer at scale 2)", "UniFashion captioner and "
                          "generator stages", "frozen feature extraction (EfficientNet-Lite0, MiniLM)", "evaluation"],
        "basis": (f"FLOPs counted by torch.utils.flop_counter.FlopCounterMode (matmul and convolution only) for one "
                  f"training step at batch 1-4 on CPU, scaled linearly to the profile's batch; divided by an assumed "
                  f"{args.peak_tflops:g} TFLOP/s peak x {args.mfu:g} MFU = {sustained / 1e12:.0f} TFLOP/s sustained. "
                  "An estimate, not a measurement."),
        "seconds": time.perf_counter() - t0,
    }
    print(f"total (estimated): {total:.1f} h on one device at {sustained / 1e12:.0f} TFLOP/s sustained")
    target = args.out or out_root() / "results" / "bench" / "gpu_sizing.json"
    atomic_write_json(target, {"metrics": out, "provenance": run_info(
        "gpu", P["seed"], benchmark="reproduce/size_gpu_profile.py", shapes=str(args.shapes.resolve().relative_to(ROOT))
        if args.shapes.resolve().is_relative_to(ROOT) else str(args.shapes),
        peak_tflops=args.peak_tflops, mfu=args.mfu)})
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
