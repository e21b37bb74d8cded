"""Where the training compute goes, per model kind, on this machine (issue 15). A measurement, not a test.

For each model kind the pipeline trains -- the image tokenizers ``vq`` (VQGAN decoder), ``movq``
(SCN decoder, multichannel quantizer) and ``m6_pq_style_gen`` (PQ + style-modulated decoder); the
stage-two transformers ``muse`` (masked, cross-attention text), ``ar`` (autoregressive) and ``m6``
(masked, text in the sequence) at the sizes ``params.yaml`` configures, and the UniFashion Q-Former
-- this script times ONE training step at the configured batch, split into its parts:

* tokenizers: ``data`` (batch gather), ``forward`` (encode + quantize + decode), ``l1``,
  ``perceptual`` (EfficientNet-Lite0 LPIPS stand-in, forward only), ``gan_g`` (discriminator on the
  reconstruction + adaptive weight, which itself differentiates through the last layer),
  ``backward``, ``optimizer`` and the discriminator's own step ``gan_d`` (second half of training);
* transformers: ``data`` (batch, masks, condition), ``forward`` (incl. the loss), ``backward``,
  ``optimizer`` (clip + AdamW);

and counts the FLOPs of forward + backward with ``torch.utils.flop_counter.FlopCounterMode``
(matmuls and convolutions; elementwise work is not counted, so MFU is a lower bound of the work
done). MFU = counted FLOPs / step seconds / the dense float32 matmul FLOP/s measured in the same
run. bfloat16 is probed with the same matmul: on a CPU without native bf16 it is far slower than
fp32 (then nothing here uses it; see ``lib.generation.train`` ``amp``). Side-by-side variants,
each timed round-robin with its baseline in one run: the perceptual loss on fewer layers, the
tokenizer in ``channels_last``, without the GAN, and bf16 autocast (tokenizer ``vq`` and the
``muse`` transformer); and step time vs batch size (tokenizer ``vq`` and ``muse``).

Every timing: warm-up steps, then ``repeats`` timed steps (median and IQR kept). Output (atomic
JSON): ``--out`` (default ``<out_root>/results/bench/training.json``).

    .venv/bin/python reproduce/bench_training.py --profile smoke|default|gpu [--out PATH] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import lib.config as lib_params  # noqa: E402
import lib.pipelines.tokenizers as tokenizer_pipe  # noqa: E402
import lib.pipelines.generators as generator_pipe  # noqa: E402
from lib.io import atomic_write_json  # noqa: E402
from lib.provenance import run_info  # noqa: E402
from lib.store import out_root  # noqa: E402

PROFILE_SETTINGS = {
    "smoke": {"warmup": 1, "repeats": 2, "matmul": 256, "batches_tok": [4, 8], "batches_tf": [4, 8], "pretrained": False},
    "default": {"warmup": 2, "repeats": 7, "matmul": 1024, "batches_tok": [8, 16, 32, 64], "batches_tf": [8, 16, 32, 64],
                "pretrained": True},
    "gpu": {"warmup": 3, "repeats": 10, "matmul": 4096, "batches_tok": [16, 64, 256], "batches_tf": [32, 128, 512],
            "pretrained": True},
}
TOKENIZERS = ("vq", "movq", "m6_pq_style_gen")
TRANSFORMERS = ("muse", "ar", "m6")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def summary(times: list[float]) -> dict[str, Any]:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median": statistics.median(times), "q1": q[0], "q3": q[2], "iqr": q[2] - q[0], "runs": times}


def matmul_rate(m: int, k: int, n: int, device: torch.device, dtype: torch.dtype = torch.float32,
                seconds: float = 0.3) -> float:
    """FLOP/s of an ``[m, k] @ [k, n]`` matmul (best run within ``seconds``, at least 3 runs): square for
    the machine's dense rate, ``[4096, width, width]`` for the rate a model of that width can reach."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    a @ b
    best, t_end, reps = float("inf"), time.perf_counter() + seconds, 0
    while time.perf_counter() < t_end or reps < 3:
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best, reps = min(best, time.perf_counter() - t0), reps + 1
        if reps >= 3 and best > 0.05:
            break  # an emulated dtype: a handful of runs say enough
    return 2 * m * k * n / best


class Phases:
    """Accumulates wall seconds per named phase of one step."""

    def __init__(self, device: torch.device):
        self.device, self.t = device, {}
        self.start()

    def start(self) -> None:
        _sync(self.device)
        self.last = time.perf_counter()

    def mark(self, name: str) -> None:
        _sync(self.device)
        now = time.perf_counter()
        self.t[name] = self.t.get(name, 0.0) + now - self.last
        self.last = now


def timed(step: Callable[[Phases], None], device, warmup: int, repeats: int) -> dict[str, Any]:
    for _ in range(warmup):
        step(Phases(device))
    per_phase: dict[str, list[float]] = {}
    totals = []
    for _ in range(repeats):
        ph = Phases(device)
        step(ph)
        for k, v in ph.t.items():
            per_phase.setdefault(k, []).append(v)
        totals.append(sum(ph.t.values()))
    return {"step_seconds": summary(totals),
            "phases_seconds": {k: statistics.median(v) for k, v in per_phase.items()}}


def count_flops(fn: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------------
# tokenizers
# ------------------------------------------------------------------------------------------------
def tokenizer_step(P, name: str, batch: int, device, *, perceptual_layers=None, channels_last=False,
                   pretrained=True, with_gan=True, autocast_bf16=False, pool_size=1024):
    """A closure running one training step of tokenizer ``name`` with the objective of
    :func:`lib.models.tokenizer.train_tokenizer`, timed by phase; and a flop-count closure.
    ``pool_size`` random images are drawn from (small for large images: reproduce/size_gpu_profile.py)."""
    from lib.models.losses import PatchDiscriminator, PerceptualLoss, adaptive_weight, hinge_d_loss, hinge_g_loss
    from lib.models.tokenizer import Tokenizer

    S = P["tokenizers"]
    tok = Tokenizer(tokenizer_pipe.tokenizer_config(S, name)).to(device).train()
    disc = PatchDiscriminator(in_ch=3, ndf=S["disc_ndf"], n_layers=2).to(device)
    layers = tuple(perceptual_layers) if perceptual_layers else (1, 2, 4, 6)
    perc = PerceptualLoss(layers=layers, pretrained=pretrained).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        tok, disc, perc = (m.to(memory_format=torch.channels_last) for m in (tok, disc, perc))
    opt = torch.optim.Adam([*tok.parameters(), *disc.parameters()], lr=S["lr"], betas=(0.5, 0.9))
    pool = torch.rand(pool_size, 3, S["image_size"], S["image_size"], device=device) * 2 - 1
    g = torch.Generator().manual_seed(0)
    pw, gw = float(S["perceptual_weight"]), float(S["gan_weight"])

    def step(ph: Phases) -> None:
        idx = torch.randint(0, len(pool), (batch,), generator=g)
        x = pool[idx.to(device)].contiguous(memory_format=fmt)
        ph.mark("data")
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16)
        amp.__enter__()
        recon, q = tok(x)
        ph.mark("forward")
        rec = F.l1_loss(recon, x)
        ph.mark("l1")
        nll = rec + pw * perc(recon, x)
        ph.mark("perceptual")
        loss = nll + q.loss
        if with_gan:
            for p in disc.parameters():
                p.requires_grad_(False)
            g_loss = hinge_g_loss(disc(recon))
            weight = adaptive_weight(nll, g_loss, tok.last_layer())
            loss = loss + gw * weight * g_loss
            for p in disc.parameters():
                p.requires_grad_(True)
            ph.mark("gan_g")
        amp.__exit__(None, None, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ph.mark("backward")
        opt.step()
        ph.mark("optimizer")
        if with_gan:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
                d_loss = hinge_d_loss(disc(x), disc(recon.detach()))
            d_loss.backward()
            opt.step()
            ph.mark("gan_d")

    def flops_of(part: str) -> int:
        x = (pool[:batch]).contiguous(memory_format=fmt)

        def run():
            recon, q = tok(x)
            loss = F.l1_loss(recon, x) + q.loss
            if part in ("perceptual", "all"):
                loss = loss + pw * perc(recon, x)
            if part == "all" and with_gan:
                loss = loss + gw * hinge_g_loss(disc(recon))
                hinge_d_loss(disc(x), disc(recon.detach())).backward(retain_graph=True)
            loss.backward()
        return count_flops(run)

    params = {"tokenizer": sum(p.numel() for p in tok.parameters()), "discriminator": sum(p.numel() for p in disc.parameters()),
              "perceptual_backbone": sum(p.numel() for p in perc.parameters())}
    return step, flops_of, params


# ------------------------------------------------------------------------------------------------
# transformers
# ------------------------------------------------------------------------------------------------
def transformer_step(P, name: str, batch: int, device, autocast_bf16: bool = False):
    """One training step of generator ``name`` at the configured size, with the data pieces of
    :func:`lib.generation.train.train_masked` / ``train_autoregressive`` (masking, condition)."""
    from types import SimpleNamespace

    import lib.pipelines.tokenizers as tokenizer_pipe
    from lib.generation import TextFeatureTable
    from lib.generation.masking import COMBINATION_PROBS_PROSE, m6_mask, random_mask, sample_combinations, visual_crops
    from lib.generation.transformer import masked_token_loss
    from lib.models.tokenizer import Tokenizer

    G = P["generation"]
    entry = G["models"][name]
    with torch.device("meta"):
        shape_tok = Tokenizer(tokenizer_pipe.tokenizer_config(P["tokenizers"], entry["tokenizer"]))
    spec = SimpleNamespace(token_shape=shape_tok.token_shape, vocab_size=shape_tok.vocab_size)
    model = generator_pipe.build_model(P, name, spec).to(device).train()
    cfg = model.config
    opt = torch.optim.AdamW(model.parameters(), lr=G["lr"], betas=(0.9, 0.96), weight_decay=0.045)
    n_pool, text_len = 2048, 16
    pool = torch.randint(0, cfg.codebook_size, (n_pool, cfg.num_positions, cfg.channels))
    table = TextFeatureTable(torch.randn(n_pool, text_len, 384), torch.ones(n_pool, text_len, dtype=torch.bool)).to(device)
    g = torch.Generator().manual_seed(0)
    masked = entry["kind"] == "masked"
    m6 = entry["objective"] == "m6"

    def make_batch():
        idx = torch.randint(0, n_pool, (batch,), generator=g)
        targets = pool[idx]
        if m6:
            mask, _ = m6_mask(batch, cfg.grid_h, cfg.grid_w, cfg.channels, g)
            use_visual, use_text = sample_combinations(batch, COMBINATION_PROBS_PROSE, g)
            cond = table.condition(idx.to(device), drop=(~use_text).to(device))
            if cfg.max_visual_tokens > 0:
                vt, vp, vv, vs = visual_crops(targets, cfg.grid_h, cfg.grid_w, g, max_crops=cfg.max_visual_crops,
                                              max_tokens=cfg.max_visual_tokens)
                cond.visual_tokens, cond.visual_positions = vt.to(device), vp.to(device)
                cond.visual_valid, cond.visual_segment = (vv & use_visual[:, None]).to(device), vs.to(device)
        else:
            mask = random_mask(batch, cfg.num_positions, cfg.channels, g) if masked else None
            cond = table.condition(idx.to(device), drop=(torch.rand(batch, generator=g) < G["cond_drop"]).to(device))
        return targets.to(device), (mask.to(device) if mask is not None else None), cond

    def loss_of(targets, mask, cond):
        if masked:
            logits = model(torch.where(mask, cfg.mask_id, targets), cond)
            return masked_token_loss(logits, targets, mask, label_smoothing=G["label_smoothing"])
        logits = model(targets, cond)
        return F.cross_entropy(logits.reshape(-1, cfg.codebook_size).float(), targets.reshape(-1))

    def step(ph: Phases) -> None:
        targets, mask, cond = make_batch()
        ph.mark("data")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            loss = loss_of(targets, mask, cond)
        ph.mark("forward")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ph.mark("backward")
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ph.mark("optimizer")

    def flops_of(part: str = "all") -> int:
        batch_data = make_batch()
        return count_flops(lambda: loss_of(*batch_data).backward())

    return step, flops_of, {"transformer": sum(p.numel() for p in model.parameters()),
                            "sequence": {"positions": cfg.num_positions, "channels": cfg.channels}}


def qformer_step(P, batch: int, device):
    """One phase-1 step of the UniFashion Q-Former (ITC + ITM, :func:`lib.retrieval.train.train_phase1_qformer`)
    on random frozen image features (EfficientNet-Lite0 stage ``out_index``: 6x6 x 112 at 96 px) and text tokens."""
    from lib.retrieval.losses import image_text_contrastive, itm_loss
    from lib.retrieval.qformer import QFormer

    R = P["unifashion"]
    side = int(R["image_size"]) // 16  # stage-4 stride of EfficientNet-Lite0
    image_dim, tokens, text_len = 112, side * side, 16
    model = QFormer(image_dim=image_dim, num_image_tokens=tokens, **R["qformer"]).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=float(R["lr"]["phase1"]), weight_decay=0.05, betas=(0.9, 0.98))
    n_pool = 1024
    feats_pool = torch.randn(n_pool, tokens, image_dim)
    text_pool = torch.randn(n_pool, text_len, 384)
    g = torch.Generator().manual_seed(0)

    def make_batch():
        idx = torch.randint(0, n_pool, (batch,), generator=g)
        positive = torch.eye(batch, dtype=torch.bool, device=device)
        return (feats_pool[idx].to(device), text_pool[idx].to(device),
                torch.ones(batch, text_len, dtype=torch.bool, device=device), positive)

    def loss_of(feats, tok, msk, positive):
        scale = model.logit_scale()
        itc, sim = image_text_contrastive(model.image_embeds(feats), model.text_embed(tok, msk), scale, positive)
        itm, _ = itm_loss(model.itm_logits, feats, tok, msk, sim.detach(), positive, scale.detach())
        return itc + itm

    def step(ph: Phases) -> None:
        b = make_batch()
        ph.mark("data")
        loss = loss_of(*b)
        ph.mark("forward")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ph.mark("backward")
        opt.step()
        ph.mark("optimizer")

    def flops_of(part: str = "all") -> int:
        b = make_batch()
        return count_flops(lambda: loss_of(*b).backward())

    return step, flops_of, {"qformer": sum(p.numel() for p in model.parameters()),
                            "image_tokens": tokens, "text_tokens": text_len}


# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default", choices=sorted(PROFILE_SETTINGS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = PROFILE_SETTINGS[args.profile]
    P = lib_params.load(args.profile)
    torch.manual_seed(P["seed"])
    t_start = time.perf_counter()
    warm, reps = cfg["warmup"], cfg["repeats"]

    fp32 = matmul_rate(cfg["matmul"], cfg["matmul"], cfg["matmul"], device, seconds=1.0)
    # bf16 vs fp32 at one size: a CPU without native bf16 emulates it (~100x slower), so the probe is small
    probe_n = cfg["matmul"] if device.type == "cuda" else 256
    fp32_probe = matmul_rate(probe_n, probe_n, probe_n, device)
    bf16 = matmul_rate(probe_n, probe_n, probe_n, device, dtype=torch.bfloat16)
    out: dict[str, Any] = {
        "matmul": {"n": cfg["matmul"], "float32_flops_per_s": fp32, "probe_n": probe_n,
                   "float32_flops_per_s_at_probe_n": fp32_probe, "bfloat16_flops_per_s_at_probe_n": bf16,
                   "bfloat16_over_float32": bf16 / fp32_probe,
                   "note": "bf16 autocast pays only where bfloat16_over_float32 > 1 (native bf16); "
                           "lib.generation.train uses it on CUDA only"},
        "threads": torch.get_num_threads(), "models": {}, "variants": {}, "batch_scaling": {},
    }
    print(f"matmul fp32 {fp32 / 1e9:.1f} GFLOP/s; at n={probe_n}: fp32 {fp32_probe / 1e9:.1f}, bf16 {bf16 / 1e9:.2f} GFLOP/s ({torch.get_num_threads()} threads)")

    def record(kind: str, name: str, batch: int, step, flops_of, params, width=None):
        t = timed(step, device, warm, reps)
        flops = flops_of("all")
        sec = t["step_seconds"]["median"]
        entry = {"kind": kind, "batch_size": batch, **t, "flops_per_step": flops,
                 "achieved_flops_per_s": flops / sec, "mfu_float32": flops / sec / fp32,
                 "images_per_s": batch / sec, "parameters": params}
        if width is not None:
            # the model's own matmul shape (4096 rows x width x width): what bounds a narrow model
            rate = matmul_rate(4096, width, width, device)
            entry["width_matmul"] = {"shape": [4096, width, width], "flops_per_s": rate,
                                     "ratio_to_dense": rate / fp32, "mfu_vs_width_matmul": flops / sec / rate}
        phases = t["phases_seconds"]
        total = sum(phases.values())
        entry["phase_share"] = {k: v / total for k, v in phases.items()}
        print(f"{name:>18} batch {batch:>3}: {sec * 1000:7.1f} ms/step, {flops / 1e9:6.2f} GFLOP, "
              f"MFU {entry['mfu_float32']:.2f}  " + " ".join(f"{k} {v * 1000:.0f}" for k, v in phases.items()))
        return entry

    tb = int(P["tokenizers"]["batch_size"])
    for name in TOKENIZERS:
        step, flops_of, params = tokenizer_step(P, name, tb, device, pretrained=cfg["pretrained"])
        e = record("tokenizer", name, tb, step, flops_of, params)
        e["flops_breakdown"] = {"tokenizer_fwd_bwd": flops_of("tokenizer"),
                                "with_perceptual": flops_of("perceptual"), "all": e["flops_per_step"]}
        out["models"][name] = e
    gb = int(P["generation"]["batch_size"])
    for name in TRANSFORMERS:
        step, flops_of, params = transformer_step(P, name, gb, device)
        out["models"][name] = record("transformer", name, gb, step, flops_of, params, width=int(P["generation"]["dim"]))
    rb = int(P["unifashion"]["batch_size"])
    out["models"]["qformer"] = record("qformer", "qformer", rb, *qformer_step(P, rb, device),
                                      width=int(P["unifashion"]["qformer"]["dim"]))

    # side-by-side variants, each round-robin with its baseline so load hits each alike
    groups = {
        "tokenizer_vq": {k: tokenizer_step(P, "vq", tb, device, pretrained=cfg["pretrained"], **kw)[0] for k, kw in {
            "baseline": dict(),
            "perceptual_layers_1_2_4": dict(perceptual_layers=(1, 2, 4)),
            "perceptual_layers_1_2": dict(perceptual_layers=(1, 2)),
            "channels_last": dict(channels_last=True),
            "no_gan": dict(with_gan=False),
            "bf16_autocast": dict(autocast_bf16=True),
        }.items()},
        "transformer_muse": {k: transformer_step(P, "muse", gb, device, **kw)[0] for k, kw in {
            "baseline": dict(), "bf16_autocast": dict(autocast_bf16=True)}.items()},
    }
    for group, steps in groups.items():
        runs: dict[str, list[float]] = {k: [] for k in steps}
        for s in steps.values():
            for _ in range(warm):
                s(Phases(device))
        for _ in range(reps):
            for k, s in steps.items():
                ph = Phases(device)
                s(ph)
                runs[k].append(sum(ph.t.values()))
        base = statistics.median(runs["baseline"])
        out["variants"][group] = {k: {"step_seconds": summary(v), "ratio_to_baseline": statistics.median(v) / base}
                                  for k, v in runs.items()}
        print(f"{group} variants:", {k: round(statistics.median(v) / base, 3) for k, v in runs.items()})

    for kind, name, batches in (("tokenizer", "vq", cfg["batches_tok"]), ("transformer", "muse", cfg["batches_tf"])):
        rows = []
        for b in batches:
            step = (tokenizer_step(P, name, b, device, pretrained=cfg["pretrained"])[0] if kind == "tokenizer"
                    else transformer_step(P, name, b, device)[0])
            t = timed(step, device, 1, max(2, reps // 2))
            sec = t["step_seconds"]["median"]
            rows.append({"batch_size": b, "step_seconds": sec, "samples_per_s": b / sec})
        out["batch_scaling"][name] = rows
        print(f"{name} batch scaling:", [(r["batch_size"], round(r["samples_per_s"], 1)) for r in rows])

    out["seconds"] = time.perf_counter() - t_start
    target = args.out or out_root() / "results" / "bench" / "training.json"
    doc = {"metrics": out, "provenance": run_info(args.profile, P["seed"], benchmark="reproduce/bench_training.py",
                                                    flop_counter="torch.utils.flop_counter.FlopCounterMode (matmul/conv FLOPs)",
                                                    device_kind=device.type, settings=cfg)}
    atomic_write_json(target, doc)
    print(f"wrote {target} ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
