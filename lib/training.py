"""A resumable training loop shared by every model kind.

Why a loop of our own rather than a framework: resuming must give *the same weights* as an
uninterrupted run (issue 8), which needs every source of randomness tied to the step number. So:

- the caller's ``step_fn(step)`` draws its batch from the step number alone (see :func:`batch_indices`);
- the global torch RNG is re-seeded from ``(seed, step)`` before every step (dropout, masking, noise);
- the checkpoint (model, optimizer state, step, loss history) is written atomically every
  ``ckpt_every`` steps and at the end, so a kill at any moment resumes from the last one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from lib.io import AtelierInputError, atomic_write_json, load_checkpoint, load_model_state, save_checkpoint


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Indices of the batch at ``step``: epochs are seeded permutations, so any step is recomputable."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng((seed, epoch)).permutation(n)
    return perm[k * batch_size:(k + 1) * batch_size]


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63 - 1)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class ResumableTrainer:
    """Run ``step_fn`` for ``total_steps`` steps with atomic checkpoints and exact resume.

    ``arch`` (JSON-able) is stored in the checkpoint; resuming from a checkpoint of another
    architecture is refused with an error naming the file.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt_path: str | Path,
                 arch: Mapping[str, Any], seed: int, total_steps: int, ckpt_every: int = 200,
                 desc: str = "train"):
        if total_steps < 1:
            raise AtelierInputError(f"total_steps must be >= 1, got {total_steps}")
        if ckpt_every < 1:
            raise AtelierInputError(f"ckpt_every must be >= 1, got {ckpt_every}")
        self.model, self.optimizer = model, optimizer
        self.ckpt_path = Path(ckpt_path)
        self.arch, self.seed, self.total_steps, self.ckpt_every = dict(arch), seed, total_steps, ckpt_every
        self.desc = desc
        self.step = 0
        self.history: list[dict[str, float]] = []

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt_tensors, opt_meta = _optimizer_tensors(self.optimizer)
        tensors.update(opt_tensors)
        save_checkpoint(self.ckpt_path, tensors, {
            "arch": self.arch, "step": self.step, "seed": self.seed, "total_steps": self.total_steps,
            "optimizer": opt_meta, "history": self.history,
        })

    def try_resume(self) -> bool:
        """Load the checkpoint if one exists; returns whether training resumed from it."""
        if not self.ckpt_path.exists():
            return False
        tensors, meta = load_checkpoint(self.ckpt_path, expect_arch=self.arch)
        missing = [k for k in ("total_steps", "step", "history", "optimizer") if k not in meta]
        if missing or not all(isinstance(meta[k], int) and not isinstance(meta[k], bool) for k in ("total_steps", "step")):
            raise AtelierInputError(f"{self.ckpt_path}: not a training checkpoint (training state {missing or 'malformed'}); "
                                    f"delete it to train from scratch")
        # A checkpoint of a run with another length would silently skip or misplace training
        # (schedules and warm-ups are fractions of total_steps), so it is refused, not resumed.
        if int(meta.get("total_steps", -1)) != self.total_steps:
            raise AtelierInputError(
                f"{self.ckpt_path}: checkpoint of a {meta.get('total_steps')}-step run, this run has "
                f"{self.total_steps} steps; delete it to train from scratch (or restore the step count to resume)")
        load_model_state(self.model, tensors, self.ckpt_path)
        try:
            _load_optimizer(self.optimizer, tensors, meta["optimizer"])
        except (KeyError, TypeError, ValueError) as err:
            raise AtelierInputError(f"{self.ckpt_path}: optimizer state does not match this optimizer ({err})") from None
        self.step, self.history = int(meta["step"]), list(meta["history"])
        return True

    # -- the loop -------------------------------------------------------------------------------
    def run(self, step_fn: Callable[[int], Mapping[str, float]], progress: bool = True) -> list[dict[str, float]]:
        self.try_resume()
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.desc, disable=not progress, mininterval=2)
        while self.step < self.total_steps:
            torch.manual_seed(step_seed(self.seed, self.step))
            logs = {k: float(v) for k, v in step_fn(self.step).items()}
            self.step += 1
            self.history.append({"step": self.step, **logs})
            bar.update(1)
            if self.step % 20 == 0:
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()})
            if self.step % self.ckpt_every == 0 or self.step == self.total_steps:
                self.save()
        bar.close()
        self.model.eval()
        return self.history


def write_loss_curve(history: list[dict[str, float]], path: str | Path, every: int = 1) -> Path:
    """Loss history as a JSON list of rows (a DVC plot), thinned to every ``every``-th step."""
    rows = [h for h in history if int(h["step"]) % every == 0 or h is history[-1]]
    return atomic_write_json(path, rows)


def load_model_weights(model: torch.nn.Module, ckpt_path: str | Path, arch: Mapping[str, Any]) -> torch.nn.Module:
    """Load only the model part of a :class:`ResumableTrainer` checkpoint (for inference)."""
    tensors, _ = load_checkpoint(ckpt_path, expect_arch=arch)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    return model.eval()


def arch_of(model_name: str, **hparams: Any) -> dict:
    """A JSON-stable architecture description for checkpoints."""
    return json.loads(json.dumps({"name": model_name, **hparams}, sort_keys=True))


def lr_factor(step: int, steps: int, warmup_steps: int, schedule: str = "cosine") -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up over ``warmup_steps``, then
    ``schedule`` (``cosine``, ``linear`` or ``constant``) from 1 to 0 over the remaining steps.

    The one schedule of every trainer here: MaskGIT / Muse (warm-up then cosine decay) and BLIP-2's
    phases (linear warm-up, cosine decay), which UniFashion trains with.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (the scheduled value of this step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
