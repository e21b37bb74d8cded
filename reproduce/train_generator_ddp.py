"""Train a named stage-two generator on one or several devices: DistributedDataParallel under torchrun.

The same model, tokens, text features, objective, optimizer, schedule and checkpoint as the DVC
stage ``python -m lib.stages.generator train --profile P --name NAME`` (:func:`lib.stages.generator.run_train`
with :func:`lib.generation.train_masked` / :func:`~lib.generation.train_autoregressive`), spread
over ``WORLD_SIZE`` processes:

    torchrun --nproc_per_node=N reproduce/train_generator_ddp.py --profile gpu --name muse [--compile]
    python reproduce/train_generator_ddp.py --profile gpu --name muse      # one process, no DDP

* Backend: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on CPU. On CUDA the
  forward runs in bfloat16 autocast (as ``train_masked``'s ``amp`` default); ``--compile`` wraps
  the DDP module in ``torch.compile``.
* The global batch is ``generation.batch_size`` (as one process would use), split into contiguous
  row blocks, one per rank. Every rank draws the *whole* batch's random choices -- batch indices,
  masks, condition drops, caption picks, visual crops -- from the step number exactly as
  ``train_masked`` does, then keeps its rows; each rank's loss is its share of the global sum
  (``sum over its masked entries x world / masked entries of the global batch``), so the gradient
  DDP averages is the single-process gradient of the same step (up to float summation order) and
  a run can resume from the other kind's checkpoint.
* Rank 0 writes the checkpoint (``lib.training.ResumableTrainer``: atomic, exact resume; every rank
  resumes from it), and, for a real run, the loss curve and metrics of the stage.

``--synthetic`` trains on random tokens and random text features (no data, tokenizer or MiniLM
needed) for a few steps: the smoke check of the distributed machinery (tests/test_ddp_entry.py).
``--dim/--depth/--heads`` override the configured size (tests use a tiny model). See docs/scale.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import lib.config.generation as generation_cfg  # noqa: E402
import lib.pipelines.generators as generator_pipe  # noqa: E402
import lib.store.generators as generator_store  # noqa: E402
import lib.store.tokenizers as tokenizer_store  # noqa: E402
from lib import store  # noqa: E402
from lib.io import AtelierInputError  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Process group
# ---------------------------------------------------------------------------------------------
def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def setup_distributed(device: str | None = None) -> tuple[int, int, torch.device]:
    """Join the process group (NCCL on CUDA, gloo on CPU) when launched by torchrun; returns
    ``(rank, world_size, device)``."""
    rank, world, local = dist_env()
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise AtelierInputError("--device cuda: no CUDA device is available")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, dev


def rank_rows(batch: int, rank: int, world: int) -> torch.Tensor:
    """Rows of a global batch this rank trains on: contiguous blocks, sizes differing by at most 1."""
    if batch < world:
        raise AtelierInputError(f"batch_size ({batch}) must be >= the number of processes ({world})")
    return torch.arange(batch).tensor_split(world)[rank]


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def synthetic_data(token_shape: tuple[int, int, int], vocab_size: int, *, n: int = 64, captions_per_image: int = 3,
                   text_rows: int = 40, text_len: int = 16, text_dim: int = 384, seed: int = 0) -> dict[str, Any]:
    """Random token grids ``[n, H*W, C]``, a :class:`TextFeatureTable` of random features (every
    caption 1..text_len real tokens), caption ids ``[n, captions_per_image]`` and class ids ``[n]``."""
    from lib.generation import TextFeatureTable

    h, w, c = token_shape
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (n, h * w, c), generator=g)
    lengths = torch.randint(1, text_len + 1, (text_rows,), generator=g)
    mask = torch.arange(text_len)[None] < lengths[:, None]
    feats = torch.randn(text_rows, text_len, text_dim, generator=g) * mask[..., None]
    return {"tokens": tokens, "table": TextFeatureTable(feats, mask),
            "caption_ids": torch.randint(0, text_rows, (n, captions_per_image), generator=g),
            "class_ids": torch.randint(0, text_rows, (n,), generator=g)}


def _token_spec(params: dict[str, Any], name: str):
    """What :func:`lib.stages.generator.build_model` reads of a tokenizer (token grid, vocabulary), from
    the config alone: an untrained tokenizer of the named architecture."""
    from lib.models.tokenizer import Tokenizer
    from lib.pipelines.tokenizers import tokenizer_config

    tok = Tokenizer(tokenizer_config(params["tokenizers"], name))
    return SimpleNamespace(token_shape=tok.token_shape, vocab_size=tok.vocab_size)


def load_data(params: dict[str, Any], name: str, rank: int, world: int, synthetic: bool, progress: bool):
    """``(tokens, text_kw, tok_or_spec, extra)`` as :func:`lib.stages.generator.run_train` prepares them;
    ``extra`` holds the held-out tokens and condition (real data only)."""

    entry = params["generation"]["models"][name]
    if synthetic:
        spec = _token_spec(params, entry["tokenizer"])
        data = synthetic_data(spec.token_shape, spec.vocab_size, seed=params["seed"])
        key = "class_ids" if entry["objective"] == "class" else "caption_ids"
        return data["tokens"], {key: data[key], "text_table": data["table"]}, spec, None

    import numpy as np

    from lib.data.caption_dataset import load_split
    from lib.stages import tokens as TOK

    # The tokens@<tokenizer> stage tokenized every split once; no tokenizer runs here.
    tok = TOK.load(entry["tokenizer"], tokenizer_checkpoint=tokenizer_store.checkpoint_path(entry["tokenizer"]))
    root = store.caption_root()
    train, test = load_split(root, "train"), load_split(root, "test")
    tokens = tok["train"]
    test_n = min(int(params["generation"]["eval_n"]), len(test["images"]))
    test_tokens = tok["test"][:test_n]
    # Rank 0 builds (or validates) the text-feature cache before the others read it: no two writers.
    if world > 1 and rank != 0:
        dist.barrier()
    if entry["objective"] == "class":
        table = generator_pipe.class_table()
        text_kw = dict(class_ids=torch.from_numpy(np.asarray(train["category"], dtype=np.int64)), text_table=table)
        test_cond = table.condition(torch.from_numpy(np.asarray(test["category"][:test_n], dtype=np.int64)))
    else:
        table, ids = generator_pipe.text_table(progress=progress and rank == 0)
        text_kw = dict(caption_ids=ids["train"], text_table=table)
        test_cond = table.condition(ids["test"][:test_n, 0])
    if world > 1 and rank == 0:
        dist.barrier()
    return tokens, text_kw, tok, {"test_tokens": test_tokens, "test_cond": test_cond, "test_n": test_n}


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def train(model, tokens, ckpt_path: Path, *, kind: str, objective: str, steps: int, batch_size: int, lr: float,
          seed: int, warmup_steps: int, cond_drop: float, label_smoothing: float, rank: int, world: int,
          device: torch.device, compile_model: bool = False, amp: bool | None = None, weight_decay: float = 0.045,
          progress: bool = True, caption_ids=None, class_ids=None, text_table=None) -> list[dict[str, float]]:
    """Data-parallel twin of :func:`lib.generation.train_masked` (``kind="masked"``, objective
    muse/class -> "muse" masking, m6 -> "m6") and :func:`~lib.generation.train_autoregressive`."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lib.generation.masking import (
        COMBINATION_PROBS_PROSE,
        STRATEGY_PROBS,
        m6_mask,
        random_mask,
        sample_combinations,
        visual_crops,
    )
    from lib.generation.train import TrainingSetup, make_optimizer
    from lib.training import lr_factor, set_lr
    from lib.training import ResumableTrainer

    model = model.to(device)
    setup = TrainingSetup(model, tokens, steps=steps, batch_size=batch_size, seed=seed, caption_ids=caption_ids,
                   text_table=text_table, class_ids=class_ids, cond_drop=cond_drop)
    cfg = setup.cfg
    mode = "autoregressive" if kind == "autoregressive" else ("m6" if objective == "m6" else "muse")
    with_visual = mode == "m6" and cfg.max_visual_tokens > 0
    forward = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    if compile_model:
        forward = torch.compile(forward)
    use_amp = device.type == "cuda" if amp is None else bool(amp)
    opt = make_optimizer(model, lr, weight_decay)

    def global_batch(step: int):
        """The whole batch of ``step`` with every random draw in ``train_masked``'s order."""
        idx, targets, gen = setup.batch(step)
        b = len(idx)
        if mode == "autoregressive":
            drop = torch.rand(b, generator=gen) < cond_drop
            return targets, None, setup.condition(idx, gen, drop)
        if mode == "muse":
            mask = random_mask(b, cfg.num_positions, cfg.channels, gen)
            drop = torch.rand(b, generator=gen) < cond_drop
            cond = setup.condition(idx, gen, drop)
        else:
            mask, _ = m6_mask(b, cfg.grid_h, cfg.grid_w, cfg.channels, gen, probs=STRATEGY_PROBS)
            use_visual, use_text = sample_combinations(b, COMBINATION_PROBS_PROSE, gen)
            cond = setup.condition(idx, gen, ~use_text)
            if with_visual:
                vt, vp, vv, vs = visual_crops(targets, cfg.grid_h, cfg.grid_w, gen, max_crops=cfg.max_visual_crops,
                                              max_tokens=cfg.max_visual_tokens)
                cond.visual_tokens, cond.visual_positions = vt.to(setup.device), vp.to(setup.device)
                cond.visual_valid = (vv & use_visual[:, None]).to(setup.device)
                cond.visual_segment = vs.to(setup.device)
        return targets, mask, cond

    def step_fn(step: int) -> dict[str, float]:
        step_lr = lr * lr_factor(step, steps, warmup_steps, "cosine")
        set_lr(opt, step_lr)
        targets, mask, cond = global_batch(step)
        rows = rank_rows(len(targets), rank, world)
        local = targets[rows].to(device)
        local_cond = cond.select(rows)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            if mode == "autoregressive":
                total = targets.numel()
                logits = forward(local, local_cond)
                flat = logits.reshape(-1, cfg.codebook_size).float()
                loss_sum = F.cross_entropy(flat, local.reshape(-1), label_smoothing=label_smoothing, reduction="sum")
                correct = (logits.argmax(-1) == local).sum()
            else:
                total = int(mask.sum())
                local_mask = mask[rows].to(device)
                logits = forward(torch.where(local_mask, cfg.mask_id, local), local_cond)
                loss_sum = F.cross_entropy(logits[local_mask].float(), local[local_mask],
                                           label_smoothing=label_smoothing, reduction="sum")
                correct = (logits.argmax(-1)[local_mask] == local[local_mask]).sum()
        # DDP averages gradients over ranks, so world * (share of the global sum) gives the global mean's gradient.
        loss = loss_sum * (world / total)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        logs = torch.stack([loss_sum.detach().float(), correct.detach().float()])
        if world > 1:
            dist.all_reduce(logs)
        out = {"loss": float(logs[0]) / total, "acc": float(logs[1]) / total, "lr": step_lr,
               "grad_norm": float(grad_norm)}
        if mask is not None:
            out["masked"] = float(mask.float().mean())
        return out

    class RankTrainer(ResumableTrainer):
        def save(self) -> None:  # one writer: every rank holds the same weights after each step
            if rank == 0:
                super().save()

    arch = {**model.arch, "objective": mode}
    trainer = RankTrainer(model, opt, ckpt_path, arch, seed, steps, ckpt_every=max(50, steps // 10),
                          desc=f"{mode} x{world}")
    history = trainer.run(step_fn, progress=progress and rank == 0)
    if world > 1:
        dist.barrier()  # the final checkpoint is on disk before any rank returns
    return history


def run(args: argparse.Namespace) -> int:
    import lib.config as lib_params

    rank, world, device = setup_distributed(args.device)
    P = copy.deepcopy(lib_params.load(args.profile))
    G = P["generation"]
    generation_cfg.require_known(G, args.name)
    for key in ("dim", "depth", "heads"):
        if getattr(args, key) is not None:
            G[key] = getattr(args, key)
    entry = G["models"][args.name]
    steps = args.steps or generation_cfg.steps_of(G, args.name)
    if steps < 1:
        raise AtelierInputError(f"generator {args.name!r} has 0 steps in profile {args.profile!r}: give --steps")
    seed = P["seed"]
    torch.manual_seed(seed)
    tokens, text_kw, tok, extra = load_data(P, args.name, rank, world, args.synthetic, progress=not args.quiet)
    model = generator_pipe.build_model(P, args.name, tok)
    ckpt = Path(args.out) if args.out else (
        store.out_root() / "artifacts" / "ddp_synthetic" / args.name / generator_store.CHECKPOINT if args.synthetic
        else generator_store.checkpoint_path(args.name))
    masked = entry["kind"] == "masked"
    t0 = time.perf_counter()
    warmup = G["warmup_steps"] if args.warmup_steps is None else args.warmup_steps
    history = train(model, tokens, ckpt, kind=entry["kind"], objective=entry["objective"], steps=steps,
                    batch_size=args.batch_size or G["batch_size"], lr=G["lr"], seed=seed,
                    warmup_steps=warmup, cond_drop=G["cond_drop"],
                    label_smoothing=G["label_smoothing"] if masked else 0.0, rank=rank, world=world, device=device,
                    compile_model=args.compile, progress=not args.quiet, **text_kw)
    seconds = time.perf_counter() - t0
    if rank == 0:
        print(f"[ddp {args.name}] {steps} steps on {world} x {device.type} in {seconds:.1f} s, "
              f"final loss {history[-1]['loss']:.4f} -> {ckpt}")
        if not args.synthetic and args.out is None:
            write_stage_outputs(P, args.name, model, history, extra, seconds, world, device, args.compile)
    if world > 1:
        dist.destroy_process_group()
    return 0


def write_stage_outputs(P, name, model, history, extra, seconds, world, device, compiled) -> None:
    """The loss curve and metrics the ``generator@<name>`` stage writes (rank 0, real data)."""
    import numpy as np

    import lib.store.generators as generator_store
    from lib.io import sha256_file
    from lib.provenance import run_info, write_metrics
    from lib.stages import generator as GEN
    from lib.training import write_loss_curve

    entry = P["generation"]["models"][name]
    model = model.cpu().eval()
    write_loss_curve(history, generator_store.loss_path(name), every=max(1, len(history) // 300))
    acc = GEN.heldout_accuracy(model, extra["test_tokens"], extra["test_cond"].to("cpu"), seed=P["seed"])
    last = history[-50:]
    metrics = {"skipped": False, "steps": len(history), "kind": entry["kind"], "objective": entry["objective"],
               "tokenizer": entry["tokenizer"], "parameters": int(sum(p.numel() for p in model.parameters())),
               "final_train_loss": float(np.mean([h["loss"] for h in last])),
               "final_train_acc": float(np.mean([h["acc"] for h in last])), "heldout_acc": acc,
               "num_heldout_images": int(extra["test_n"])}
    prov = run_info(P["profile"], P["seed"], model=name, config=entry, transformer=model.config.to_dict(),
                    checkpoint_sha256=sha256_file(generator_store.checkpoint_path(name)),
                    training={"seconds": round(seconds, 1), "entry_point": "reproduce/train_generator_ddp.py",
                              "world_size": world, "device": device.type, "compile": bool(compiled),
                              "backend": ("nccl" if device.type == "cuda" else "gloo") if world > 1 else None})
    print(write_metrics(generator_store.metrics_path(name), metrics, prov))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--name", required=True, help="a generator of params.yaml generation.models")
    parser.add_argument("--steps", type=int, default=None, help="default: profiles.<p>.generation.steps.<name>")
    parser.add_argument("--batch-size", type=int, default=None, help="GLOBAL batch (default generation.batch_size)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="default generation.warmup_steps")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the (DDP) model")
    parser.add_argument("--synthetic", action="store_true", help="random tokens and text features (smoke check)")
    parser.add_argument("--out", default=None, help="checkpoint path (default: the stage's; synthetic: a scratch path)")
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except AtelierInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
