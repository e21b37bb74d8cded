"""Subprocess side of the kill/resume tests (tests/test_reliability_resume.py), issue 8 guarantee (1).

Trains a TINY model of one kind on tiny in-memory data through the library's own training function
(the code the stages run), checkpointing every ``ckpt_every`` steps, in a process of its own that the
test can SIGKILL. Two ways to start such a process:

- ``python -m tests._kill_resume_worker KIND CKPT --steps N --ckpt-every K [--pause-at P] [--progress F]``
  runs one training in this process (for a run by hand);
- ``python -m tests._kill_resume_worker serve`` is a fork server: it imports torch and the library
  once, then reads JSON commands on stdin -- ``{"op": "run", ...same options...}`` forks a fresh
  child that trains and answers ``{"pid": ...}``; ``{"op": "wait", "pid": ...}`` reaps it and
  answers how it ended (``{"exit": code}`` or ``{"signal": number}``). Every child is forked from the
  pristine server, never from a process that trained, so a resumed child starts exactly as a newly
  started process would -- without paying the 3-8 s torch import per run.

``--progress`` gets one line per finished step (``step <n>``), flushed at once, so the parent can
tell where the run is. ``--pause-at P`` makes the process stop after finishing step ``P`` -- its
weights now ahead of the last checkpoint -- and wait to be killed, so the parent's SIGKILL lands
mid-run at a known step instead of at a racy one.

Adding a model kind is one entry in :data:`KINDS`: a function ``(ckpt_path, steps) -> None`` that
calls the kind's training function on tiny data with ``progress=False`` (and, for speed, its module
in :data:`PRELOAD`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lib.judges.classifier import train_classifier
from lib.judges.contrastive import TEXT_DIM, train_judge
from lib.models.tokenizer import Tokenizer, finetune_decoder, train_tokenizer
from lib.training import ResumableTrainer

SEED = 7
N_IMAGES = 24
BATCH = 8


def _arrays() -> dict:
    """A tiny caption-dataset split: random 32x32 RGB images and attribute labels."""
    rng = np.random.default_rng(0)
    return {
        "images": rng.integers(0, 256, (N_IMAGES, 32, 32, 3), dtype=np.uint8),
        "category": rng.integers(0, 10, N_IMAGES),
        "colour": rng.integers(0, 10, N_IMAGES),
        "pattern": rng.integers(0, 4, N_IMAGES),
    }


def _images(size: int = 16) -> torch.Tensor:
    return torch.from_numpy(_arrays()["images"][:, :size, :size]).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _tiny_tokenizer_config(**over) -> dict:
    # The codebook options params.yaml uses (k-means init, dead-code restart) are kept: they are the
    # training-time state (buffers, a first-batch side effect) most likely to break an exact resume.
    cfg = {"image_size": 16, "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "z_dim": 8,
           "quantizer": "vq",
           # 128 codes for ~500 vectors a batch: some go unused, so restarts draw random rows mid-run
           "quantizer_kwargs": {"codebook_size": 128, "kmeans_init": True, "restart_dead": True,
                                "dead_after_steps": 2},
           "decoder": "vqgan", "decoder_kwargs": {}}
    cfg.update(over)
    return cfg


def _tokenizer_kwargs(steps: int) -> dict:
    # gan_start in the middle: the discriminator (and its hinge loss) switches on around the kill.
    return dict(steps=steps, batch_size=BATCH, lr=1e-3, seed=SEED, perceptual_weight=0.0, gan_weight=0.1,
                gan_start=steps // 3, disc_ndf=8, progress=False)


def train_tokenizer_vq(ckpt: Path, steps: int) -> None:
    torch.manual_seed(SEED)
    train_tokenizer(Tokenizer(_tiny_tokenizer_config()), _images(), ckpt, **_tokenizer_kwargs(steps))


def train_tokenizer_movq(ckpt: Path, steps: int) -> None:
    torch.manual_seed(SEED)
    cfg = _tiny_tokenizer_config(quantizer="movq", decoder="movq", decoder_kwargs={"initial_features": "fourier"},
                                 quantizer_kwargs={"codebook_size": 16, "num_chunks": 2, "kmeans_init": True})
    train_tokenizer(Tokenizer(cfg), _images(), ckpt, **_tokenizer_kwargs(steps))


def train_tokenizer_muse_finetune(ckpt: Path, steps: int) -> None:
    """Muse Sec. 2.5 decoder fine-tune: frozen encoder + codebook of a (seeded, untrained) base."""
    torch.manual_seed(SEED)
    base = Tokenizer(_tiny_tokenizer_config(quantizer_kwargs={"codebook_size": 16}))
    finetune_decoder(base, _images(), ckpt, width_mult=2, depth_mult=1, name="muse_tiny", **_tokenizer_kwargs(steps))


def train_domain_classifier(ckpt: Path, steps: int) -> None:
    train_classifier(_arrays(), ckpt, steps=steps, batch_size=BATCH, lr=2e-3, seed=SEED, width=4, progress=False)


def train_contrastive_judge(ckpt: Path, steps: int) -> None:
    rng = np.random.default_rng(1)
    caption_ids = rng.integers(0, 40, (N_IMAGES, 3))
    text_table = torch.from_numpy(rng.standard_normal((40, TEXT_DIM)).astype(np.float32))
    train_judge(_arrays(), caption_ids, text_table, ckpt, steps=steps, batch_size=BATCH, lr=2e-3, seed=SEED,
                width=4, embed_dim=8, progress=False)


def _token_data():
    """Token grids of 24 images (4x4 positions, 2 channels, 16 codes) and a tiny text table."""
    from lib.generation.conditioning import TextFeatureTable

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (N_IMAGES, 16, 2), generator=g)
    table = TextFeatureTable(torch.randn(12, 6, 384, generator=g), torch.ones(12, 6, dtype=torch.bool))
    return tokens, table, torch.randint(0, 12, (N_IMAGES, 2), generator=g)


def _generator_config(**kw):
    from lib.generation.transformer import TransformerConfig

    return TransformerConfig(**{"grid_h": 4, "grid_w": 4, "channels": 2, "codebook_size": 16, "dim": 32, "depth": 1,
                                "heads": 2, "dropout": 0.1, **kw})


def train_generator_masked_m6(ckpt: Path, steps: int) -> None:
    """M6-Fashion masking strategies, condition combinations and visual crops, with dropout."""
    from lib.generation.train import train_masked
    from lib.generation.transformer import MaskedTokenTransformer

    tokens, table, caption_ids = _token_data()
    torch.manual_seed(SEED)
    model = MaskedTokenTransformer(_generator_config(text_mode="in_sequence", max_visual_tokens=4))
    train_masked(model, tokens, ckpt, steps=steps, batch_size=BATCH, lr=1e-3, seed=SEED, caption_ids=caption_ids,
                 text_table=table, mode="m6", warmup_steps=3, progress=False)


def train_generator_autoregressive(ckpt: Path, steps: int) -> None:
    from lib.generation.autoregressive import ARTransformer
    from lib.generation.train import train_autoregressive

    tokens, table, caption_ids = _token_data()
    torch.manual_seed(SEED)
    model = ARTransformer(_generator_config(text_mode="cross_attention"))
    train_autoregressive(model, tokens, ckpt, steps=steps, batch_size=BATCH, lr=1e-3, seed=SEED,
                         caption_ids=caption_ids, text_table=table, warmup_steps=3, progress=False)


def _retrieval_data():
    """Image features of 24 images in 6 classes, 2 text rows per class, Fashion-IQ-like triplets."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(4)
    feats = (torch.randn(6, 4, 12, generator=g)[labels] + 0.3 * torch.randn(N_IMAGES, 4, 12, generator=g)).half()
    text_tokens, text_mask = torch.randn(18, 5, 384, generator=g), torch.ones(18, 5, dtype=torch.bool)
    caption_ids = torch.stack([2 * labels, 2 * labels + 1], 1)
    return feats, labels, caption_ids, text_tokens, text_mask


def _qformer():
    from lib.retrieval.qformer import QFormer

    torch.manual_seed(SEED)
    return QFormer(image_dim=12, num_image_tokens=4, num_queries=4, dim=32, num_layers=2, heads=2, embed_dim=16,
                   cross_every=1, dropout=0.1)


def train_retrieval_qformer(ckpt: Path, steps: int) -> None:
    """Phase 1 (ITC + ITM with hard negatives) of the BLIP-2-style Q-Former."""
    from lib.retrieval.train import train_phase1_qformer

    feats, _, caption_ids, text_tokens, text_mask = _retrieval_data()
    train_phase1_qformer(_qformer(), feats, caption_ids, text_tokens, text_mask, ckpt, steps=steps,
                         batch_size=BATCH, lr=1e-3, warmup=3, seed=SEED, progress=False)


def train_retrieval_composed(ckpt: Path, steps: int) -> None:
    """Phase 2: composed image retrieval (reference image + modification text -> target)."""
    from lib.retrieval.train import train_phase2_composed

    feats, labels, caption_ids, text_tokens, text_mask = _retrieval_data()
    ref = torch.arange(N_IMAGES)
    target_class = (labels + 1) % 6
    target = target_class * 4 + (ref % 4).roll(1)
    modification = 12 + target_class
    train_phase2_composed(_qformer(), feats, ref, target, modification, caption_ids, text_tokens, text_mask, ckpt,
                          steps=steps, batch_size=BATCH, lr=1e-3, warmup=3, seed=SEED, progress=False)


#: model kind -> tiny training run. One line per kind.
KINDS: dict[str, Callable[[Path, int], None]] = {
    "tokenizer_vq": train_tokenizer_vq,
    "tokenizer_movq": train_tokenizer_movq,
    "tokenizer_muse_finetune": train_tokenizer_muse_finetune,
    "domain_classifier": train_domain_classifier,
    "contrastive_judge": train_contrastive_judge,
    "generator_masked_m6": train_generator_masked_m6,
    "generator_autoregressive": train_generator_autoregressive,
    "retrieval_qformer": train_retrieval_qformer,
    "retrieval_composed": train_retrieval_composed,
}


def _instrument(ckpt_every: int, pause_at: int | None, progress: Path | None) -> None:
    """Patch :class:`ResumableTrainer` in this process only: a small checkpoint interval (the
    library picks ``max(50, steps // 10)``), a progress line per step, and the optional pause."""
    init, run = ResumableTrainer.__init__, ResumableTrainer.run
    log = open(progress, "a", buffering=1) if progress else None

    def patched_init(self, *args, **kwargs):
        kwargs["ckpt_every"] = ckpt_every
        init(self, *args, **kwargs)

    def patched_run(self, step_fn, progress=True):
        def step(n: int):
            logs = step_fn(n)
            if log:
                log.write(f"step {n + 1}\n")
            if pause_at is not None and n + 1 == pause_at:
                if log:
                    log.write("paused\n")
                while True:  # the parent SIGKILLs us here: weights ahead of the last checkpoint
                    time.sleep(60)
            return logs

        return run(self, step, progress=False)

    ResumableTrainer.__init__, ResumableTrainer.run = patched_init, patched_run


def run_one(kind: str, ckpt: str | Path, steps: int, ckpt_every: int, pause_at: int | None = None,
            progress: str | Path | None = None) -> None:
    """One (possibly resumed) training run of ``kind``; appends ``done`` to ``progress`` at the end."""
    _instrument(ckpt_every, pause_at, Path(progress) if progress else None)
    KINDS[kind](Path(ckpt), steps)
    if progress:
        with open(progress, "a") as fh:
            fh.write("done\n")


#: modules the kinds import lazily, loaded once by the fork server (a failing one fails its kinds only)
PRELOAD = ("lib.generation.train", "lib.generation.autoregressive", "lib.retrieval.train", "lib.retrieval.qformer")


def _warm_up() -> None:
    """Load what every child needs before forking (the optimizer's first use imports torch._dynamo,
    seconds without cached bytecode), without running any parallel kernel in the server."""
    import importlib

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - reported by the kind's own run instead
            traceback.print_exc()


def _die_with_parent() -> None:
    """SIGKILL this child when the server exits (Linux prctl PR_SET_PDEATHSIG), so a paused run
    never outlives a test that failed before killing it."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def serve(stdin=sys.stdin, stdout=sys.stdout) -> None:
    """The fork server (see the module docstring): one JSON command per line, one JSON answer each."""
    _warm_up()

    def answer(obj: dict) -> None:
        stdout.write(json.dumps(obj) + "\n")
        stdout.flush()

    answer({"ready": True})
    for line in stdin:
        cmd = json.loads(line)
        if cmd["op"] == "run":
            pid = os.fork()
            if pid == 0:  # child: never returns into the server loop
                code = 1
                try:
                    _die_with_parent()
                    os.dup2(2, 1)  # stdout is the protocol pipe: child output goes to stderr
                    run_one(cmd["kind"], cmd["ckpt"], cmd["steps"], cmd["ckpt_every"], cmd.get("pause_at"),
                            cmd.get("progress"))
                    code = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stderr.flush()
                    os._exit(code)
            answer({"pid": pid})
        elif cmd["op"] == "wait":
            _, status = os.waitpid(cmd["pid"], 0)
            answer({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)})
        elif cmd["op"] == "quit":
            answer({"bye": True})
            return
        else:
            answer({"error": f"unknown op {cmd['op']!r}"})


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)
    if argv[:1] == ["serve"]:
        serve()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--ckpt-every", type=int, required=True)
    parser.add_argument("--pause-at", type=int, default=None)
    parser.add_argument("--progress", type=Path, default=None)
    args = parser.parse_args(argv)
    run_one(args.kind, args.ckpt, args.steps, args.ckpt_every, args.pause_at, args.progress)


if __name__ == "__main__":
    main()
