"""Benchmark feature-extractor throughput on this machine (a measurement, not a test).

Measures images/s of
  * the FID Inception network (torch-fidelity ``inception-v3-compat`` with the offline weights of
    ``lib.metrics.inception``) on 299x299 uint8 input, default memory layout and ``channels_last``;
  * a generic small conv feature extractor (4 stride-2 convs, 64x64 input, 256-d output), both
    layouts,
and writes JSON (device, torch version, threads, batch size, warm-up/repeat counts, per-repeat
throughput, median and spread) atomically to ``--out`` (default
``<out_root>/results/bench/extractors.json``). Use the numbers to size FID sample counts per
profile; ``--smoke`` runs tiny sizes to check the script works.

    .venv/bin/python reproduce/bench_extractors.py [--smoke] [--out PATH] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lib.io import atomic_write_json  # noqa: E402
from lib.store import results_dir  # noqa: E402
from lib.provenance import run_info  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def measure(fn, batch: torch.Tensor, warmup: int, repeats: int, device: str) -> dict:
    """Images/s over ``repeats`` timed forward passes after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn(batch)
    _sync(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(batch)
        _sync(device)
        rates.append(batch.shape[0] / (time.perf_counter() - start))
    quartiles = statistics.quantiles(rates, n=4) if len(rates) >= 2 else [rates[0]] * 3
    return {
        "images_per_s_median": statistics.median(rates),
        "images_per_s_min": min(rates),
        "images_per_s_max": max(rates),
        "images_per_s_iqr": quartiles[2] - quartiles[0],
        "images_per_s_runs": rates,
        "input_shape": list(batch.shape),
        "input_dtype": str(batch.dtype).replace("torch.", ""),
    }


def bench_inception(device: str, batch_size: int, warmup: int, repeats: int) -> dict:
    from lib.metrics import inception

    path = inception.inception_weights_path()
    x = torch.randint(0, 256, (batch_size, 3, 299, 299), dtype=torch.uint8, device=device)
    out = {}
    for layout, channels_last in (("default", False), ("channels_last", True)):
        net = inception.load_extractor(path, device=device, channels_last=channels_last)
        inp = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        out[layout] = measure(lambda b, net=net: net(b), inp, warmup, repeats, device)
    out["feature_network"] = inception.FEATURE_NETWORK
    out["feature_weights_sha256"] = inception.inception_weights_sha256()
    return out


def bench_domain_classifier(device: str, batch_size: int, warmup: int, repeats: int, width: int) -> dict:
    """The domain judge (lib.judges.classifier) at its real input size, 32x32; weights random (speed only)."""
    from lib.judges.classifier import DomainClassifier

    torch.manual_seed(0)
    x = torch.rand(batch_size, 3, 32, 32, device=device) * 2 - 1
    out = {}
    for layout, channels_last in (("default", False), ("channels_last", True)):
        net = DomainClassifier(width).to(device).eval()
        inp = x
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
            inp = x.contiguous(memory_format=torch.channels_last)
        out[layout] = measure(lambda t: net(t)["features"], inp, warmup, repeats, device)
    out["architecture"] = f"lib.judges.classifier.DomainClassifier(width={width}), 32x32 input, penultimate features"
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default <out_root>/results/bench/extractors.json)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--profile", default=None, help="params.yaml profile: 'smoke' implies --smoke; sets the judge width")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="Inception batch (default 50; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed passes (default 2; smoke 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes (default 5; smoke 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    width = 16
    if args.profile:
        import lib.config as lib_params

        width = lib_params.load(args.profile)["judges"]["width"]
        args.smoke = args.smoke or args.profile == "smoke"

    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch_size or (2 if args.smoke else 50)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
    repeats = args.repeats or (2 if args.smoke else 5)
    conv_batch = 8 if args.smoke else 256

    result = {
        "benchmark": "feature extractor throughput",
        "smoke": bool(args.smoke),
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": {"inception": batch, "domain_classifier": conv_batch},
        "warmup": warmup,
        "repeats": repeats,
        "inception_v3_compat": bench_inception(args.device, batch, warmup, repeats),
        "domain_classifier": bench_domain_classifier(args.device, conv_batch, warmup, repeats, width),
        "provenance": run_info(profile=args.profile or ("smoke" if args.smoke else "bench"), seed=0),
    }
    out = args.out or results_dir("bench") / "extractors.json"
    atomic_write_json(out, result)
    for name in ("inception_v3_compat", "domain_classifier"):
        for layout in ("default", "channels_last"):
            r = result[name][layout]
            print(f"{name:20s} {layout:14s} {r['images_per_s_median']:9.1f} img/s "
                  f"(min {r['images_per_s_min']:.1f}, max {r['images_per_s_max']:.1f})")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
