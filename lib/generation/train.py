"""Training the stage-two generators on pre-computed token grids (resumable, exact resume).

- :func:`train_masked` -- the masked-token transformer with one of two objectives:
  ``"muse"``: Muse Sec. 2.6 arccos-rate random masking over positions and channels (MoVQ Sec.
  3.2) and Sec. 2.7 classifier-free guidance training (text dropped on ``cond_drop`` = 10% of rows);
  ``"m6"``: M6-Fashion Sec. 3.3 -- the four masking strategies (random / all / inside boxes /
  outside boxes) and the four condition combinations {v,t}, {v}, {t}, {} (visual conditions are
  crops of the target's own tokens, used when the model has ``max_visual_tokens > 0``).
- :func:`train_autoregressive` -- the causal baseline, next-entry cross-entropy with the same
  text conditioning and condition drop.

Both read ``tokens`` ``[n, N, C]`` (from ``Tokenizer.tokenize``, flattened) held in memory, pick a
random caption per image each step (``caption_ids [n, captions_per_image]`` into a
:class:`~lib.generation.conditioning.TextFeatureTable`) or the class prompt (``class_ids [n]``,
MoVQ Table 3's class-conditional setting through the text pathway), and train with AdamW
(MaskGIT's betas 0.9/0.96), linear warm-up then cosine or linear decay, gradient clipping at 1.0.
Every random draw of a step comes from the step number (:mod:`lib.training`), so a run stopped
and resumed gives the same weights as one uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from lib.generation.autoregressive import ARTransformer
from lib.generation.conditioning import Condition, TextFeatureTable
from lib.generation.masking import (
    COMBINATION_PROBS_PROSE,
    STRATEGY_PROBS,
    m6_mask,
    random_mask,
    sample_combinations,
    visual_crops,
)
from lib.generation.transformer import (
    MaskedTokenTransformer,
    TransformerConfig,
    masked_token_accuracy,
    masked_token_loss,
)
from lib.io import AtelierInputError, load_checkpoint, load_model_state
from lib.training import ResumableTrainer, batch_indices, lr_factor, set_lr, step_seed

OBJECTIVES = ("muse", "m6")
SCHEDULES = ("cosine", "linear", "constant")


class _Pause(Exception):
    """Raised inside a step to stop at ``stop_after`` (the checkpoint is then written)."""


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    # Weight decay on matrices only: decaying norms' gains and biases only shrinks them towards 0.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.96))


class TrainingSetup:
    """Validated inputs and the per-step pieces shared by both training functions."""

    def __init__(self, model, tokens, *, steps, batch_size, seed, caption_ids, text_table, class_ids,
                 low_res_tokens=None, cond_drop=0.0):
        cfg: TransformerConfig = model.config
        if not torch.is_tensor(tokens) or tokens.dtype != torch.long or tokens.dim() != 3 \
                or tuple(tokens.shape[1:]) != (cfg.num_positions, cfg.channels):
            raise AtelierInputError(f"tokens must be long [n, {cfg.num_positions}, {cfg.channels}] for this model, got "
                                    f"{getattr(tokens, 'dtype', type(tokens))} {list(getattr(tokens, 'shape', []))}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= cfg.codebook_size:
            raise AtelierInputError(f"tokens must lie in [0, {cfg.codebook_size}), "
                                    f"got [{int(tokens.min())}, {int(tokens.max())}]")
        if steps < 1 or batch_size < 1:
            raise AtelierInputError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
        if not 0 <= cond_drop <= 1:
            raise AtelierInputError(f"cond_drop must be in [0, 1], got {cond_drop}")
        n = tokens.shape[0]
        if class_ids is not None:
            if caption_ids is not None:
                raise AtelierInputError("give caption_ids or class_ids, not both")
            class_ids = torch.as_tensor(class_ids, dtype=torch.long)
            if class_ids.shape != (n,):
                raise AtelierInputError(f"class_ids must be [n]=[{n}], got {list(class_ids.shape)}")
            caption_ids = class_ids[:, None]
        if caption_ids is not None:
            caption_ids = torch.as_tensor(caption_ids, dtype=torch.long)
            if caption_ids.dim() != 2 or caption_ids.shape[0] != n or caption_ids.shape[1] < 1:
                raise AtelierInputError(f"caption_ids must be [n={n}, captions_per_image], "
                                        f"got {list(caption_ids.shape)}")
            if cfg.text_mode == "none":
                raise AtelierInputError("caption_ids/class_ids given but the model has text_mode='none'")
            if not isinstance(text_table, TextFeatureTable):
                raise AtelierInputError("caption_ids/class_ids need text_table (a TextFeatureTable)")
            if int(caption_ids.min()) < 0 or int(caption_ids.max()) >= len(text_table):
                raise AtelierInputError(f"caption_ids/class_ids must index text_table's {len(text_table)} rows, got "
                                        f"[{int(caption_ids.min())}, {int(caption_ids.max())}]")
            if text_table.dim != cfg.text_dim or text_table.max_length > cfg.max_text_len:
                raise AtelierInputError(f"text_table features are [{text_table.max_length}, {text_table.dim}], "
                                        f"the model takes [<={cfg.max_text_len}, {cfg.text_dim}]")
        elif cfg.text_mode != "none":
            raise AtelierInputError(f"the model has text_mode={cfg.text_mode!r}: give caption_ids (or class_ids) "
                                    "and text_table")
        if low_res_tokens is not None:
            if cfg.low_res is None:
                raise AtelierInputError("low_res_tokens given but the model has no low_res")
            lh, lw, lc, lk = cfg.low_res
            if low_res_tokens.dtype != torch.long or tuple(low_res_tokens.shape) != (n, lh * lw, lc):
                raise AtelierInputError(f"low_res_tokens must be long [{n}, {lh * lw}, {lc}], got "
                                        f"{low_res_tokens.dtype} {list(low_res_tokens.shape)}")
        elif cfg.low_res is not None:
            raise AtelierInputError(f"the model is a super-resolution stage (low_res={cfg.low_res}): "
                                    "give low_res_tokens")
        self.cfg, self.tokens, self.n = cfg, tokens.cpu(), n
        self.batch_size, self.seed = batch_size, seed
        self.caption_ids, self.low_res = caption_ids, low_res_tokens
        self.device = next(model.parameters()).device
        self.table = text_table.to(self.device) if caption_ids is not None else None

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
        """``(batch indices, targets [B, N, C] on CPU, a CPU generator seeded by the step)``."""
        idx = torch.from_numpy(batch_indices(self.n, self.batch_size, step, self.seed))
        gen = torch.Generator().manual_seed(step_seed(self.seed + 7919, step))
        return idx, self.tokens[idx], gen

    def condition(self, idx: torch.Tensor, gen: torch.Generator, drop: torch.Tensor) -> Condition:
        """Text of one random caption per image (null text where ``drop``) and low-res tokens."""
        cond = Condition(drop=drop.to(self.device))
        if self.caption_ids is not None:
            pick = torch.randint(0, self.caption_ids.shape[1], (len(idx),), generator=gen)
            cond = self.table.condition(self.caption_ids[idx, pick], drop=drop)
        if self.low_res is not None:
            cond.low_res_tokens = self.low_res[idx].to(self.device)
        return cond


def _run(model, setup: TrainingSetup, ckpt_path, objective: str, step_core: Callable, *, steps, lr, seed, weight_decay,
         warmup_steps, schedule, ckpt_every, stop_after, amp, progress, desc) -> list[dict[str, float]]:
    if schedule not in SCHEDULES:
        raise AtelierInputError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    warmup = max(1, steps // 20) if warmup_steps is None else int(warmup_steps)
    if warmup < 0:
        raise AtelierInputError(f"warmup_steps must be >= 0, got {warmup_steps}")
    opt = make_optimizer(model, lr, weight_decay)
    use_amp = (setup.device.type == "cuda") if amp is None else bool(amp)

    def step_fn(step: int) -> dict[str, float]:
        if stop_after is not None and step >= stop_after:
            raise _Pause
        step_lr = lr * lr_factor(step, steps, warmup, schedule)
        set_lr(opt, step_lr)
        with torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, logs = step_core(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return {"loss": loss.item(), **{k: float(v) for k, v in logs.items()}, "lr": step_lr,
                "grad_norm": float(grad_norm)}

    arch = {**model.arch, "objective": objective}
    trainer = ResumableTrainer(model, opt, ckpt_path, arch, seed, steps,
                               ckpt_every=ckpt_every or max(50, steps // 10), desc=desc)
    try:
        history = trainer.run(step_fn, progress=progress)
    except _Pause:
        trainer.save()
        model.eval()
        history = trainer.history
    return history


def train_masked(model: MaskedTokenTransformer, tokens: torch.Tensor, ckpt_path: str | Path, *, steps: int,
                 batch_size: int = 64, lr: float = 3e-4, seed: int = 0, caption_ids: torch.Tensor | None = None,
                 text_table: TextFeatureTable | None = None, class_ids: torch.Tensor | None = None,
                 low_res_tokens: torch.Tensor | None = None, mode: str = "muse", cond_drop: float = 0.1,
                 label_smoothing: float = 0.1, warmup_steps: int | None = None, schedule: str = "cosine",
                 weight_decay: float = 0.045, strategy_probs: Sequence[float] = STRATEGY_PROBS,
                 combination_probs: Sequence[float] = COMBINATION_PROBS_PROSE, ckpt_every: int | None = None,
                 stop_after: int | None = None, amp: bool | None = None,
                 progress: bool = True) -> list[dict[str, float]]:
    """Train (or resume) ``model`` on ``tokens`` ``[n, N, C]``; returns the per-step history
    (``loss``, ``acc`` = masked-token accuracy, ``masked`` = share of entries masked, ``lr``, ...).

    ``mode="muse"``: arccos-rate random masks, text dropped on ``cond_drop`` of the rows.
    ``mode="m6"``: M6 strategies (``strategy_probs``) and condition combinations
    (``combination_probs``; rows without {t} are dropped, so ``cond_drop`` is not used), with
    crops of the target as visual condition when ``model.config.max_visual_tokens > 0``.
    ``stop_after`` stops (with a checkpoint) once that many steps are done: calling again without
    it continues the same run. ``amp`` (default: on CUDA) runs the forward in bfloat16 autocast.
    The checkpoint's arch is ``{**model.arch, "objective": mode}`` (see :func:`load_generator`).
    """
    if not isinstance(model, MaskedTokenTransformer):
        raise AtelierInputError(f"train_masked needs a MaskedTokenTransformer, got {type(model).__name__}")
    if mode not in OBJECTIVES:
        raise AtelierInputError(f"mode must be one of {OBJECTIVES}, got {mode!r}")
    setup = TrainingSetup(model, tokens, steps=steps, batch_size=batch_size, seed=seed, caption_ids=caption_ids,
                   text_table=text_table, class_ids=class_ids, low_res_tokens=low_res_tokens, cond_drop=cond_drop)
    cfg, device = setup.cfg, setup.device
    with_visual = mode == "m6" and cfg.max_visual_tokens > 0

    def step_core(step: int):
        idx, targets, gen = setup.batch(step)
        b = len(idx)
        if mode == "muse":
            mask = random_mask(b, cfg.num_positions, cfg.channels, gen)
            drop = torch.rand(b, generator=gen) < cond_drop
            use_visual = None
        else:
            mask, _ = m6_mask(b, cfg.grid_h, cfg.grid_w, cfg.channels, gen, probs=strategy_probs)
            use_visual, use_text = sample_combinations(b, combination_probs, gen)
            drop = ~use_text
        cond = setup.condition(idx, gen, drop)
        if with_visual:
            vt, vp, vv, vs = visual_crops(targets, cfg.grid_h, cfg.grid_w, gen, max_crops=cfg.max_visual_crops,
                                          max_tokens=cfg.max_visual_tokens)
            cond.visual_tokens, cond.visual_positions = vt.to(device), vp.to(device)
            cond.visual_valid, cond.visual_segment = (vv & use_visual[:, None]).to(device), vs.to(device)
        targets, mask = targets.to(device), mask.to(device)
        logits = model(torch.where(mask, cfg.mask_id, targets), cond)
        loss = masked_token_loss(logits, targets, mask, label_smoothing=label_smoothing)
        return loss, {"acc": masked_token_accuracy(logits, targets, mask), "masked": mask.float().mean()}

    return _run(model, setup, ckpt_path, mode, step_core, steps=steps, lr=lr, seed=seed, weight_decay=weight_decay,
                warmup_steps=warmup_steps, schedule=schedule, ckpt_every=ckpt_every, stop_after=stop_after, amp=amp,
                progress=progress, desc=f"masked ({mode})")


def train_autoregressive(model: ARTransformer, tokens: torch.Tensor, ckpt_path: str | Path, *, steps: int,
                         batch_size: int = 64, lr: float = 3e-4, seed: int = 0, caption_ids: torch.Tensor | None = None,
                         text_table: TextFeatureTable | None = None, class_ids: torch.Tensor | None = None,
                         cond_drop: float = 0.1, label_smoothing: float = 0.0, warmup_steps: int | None = None,
                         schedule: str = "cosine", weight_decay: float = 0.045, ckpt_every: int | None = None,
                         stop_after: int | None = None, amp: bool | None = None,
                         progress: bool = True) -> list[dict[str, float]]:
    """Train (or resume) the causal baseline with next-entry cross-entropy over all ``N*C``
    entries (teacher forcing); text dropped on ``cond_drop`` of the rows (classifier-free guidance
    at sampling time works the same as for the masked model). History: ``loss``, ``acc``
    (next-entry accuracy), ``lr``, ``grad_norm``. Arguments as :func:`train_masked`.
    """
    if not isinstance(model, ARTransformer):
        raise AtelierInputError(f"train_autoregressive needs an ARTransformer, got {type(model).__name__}")
    setup = TrainingSetup(model, tokens, steps=steps, batch_size=batch_size, seed=seed, caption_ids=caption_ids,
                   text_table=text_table, class_ids=class_ids, cond_drop=cond_drop)
    cfg = setup.cfg

    def step_core(step: int):
        idx, targets, gen = setup.batch(step)
        drop = torch.rand(len(idx), generator=gen) < cond_drop
        cond = setup.condition(idx, gen, drop)
        targets = targets.to(setup.device)
        logits = model(targets, cond)
        loss = F.cross_entropy(logits.reshape(-1, cfg.codebook_size).float(), targets.reshape(-1),
                               label_smoothing=label_smoothing)
        return loss, {"acc": (logits.argmax(-1) == targets).float().mean()}

    return _run(model, setup, ckpt_path, "autoregressive", step_core, steps=steps, lr=lr, seed=seed,
                weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=schedule, ckpt_every=ckpt_every,
                stop_after=stop_after, amp=amp, progress=progress, desc="autoregressive")


MODELS = {MaskedTokenTransformer.arch_name: MaskedTokenTransformer, ARTransformer.arch_name: ARTransformer}


def load_generator(ckpt_path: str | Path, device: str | torch.device = "cpu"):
    """The model of a :func:`train_masked` / :func:`train_autoregressive` checkpoint, rebuilt from
    the architecture its header records, in eval mode. Returns ``(model, meta)``."""
    tensors, meta = load_checkpoint(ckpt_path)
    arch: dict[str, Any] = dict(meta.get("arch") or {})
    name = arch.pop("name", None)
    arch.pop("objective", None)
    if name not in MODELS:
        raise AtelierInputError(f"{ckpt_path}: not a generator checkpoint (arch name {name!r}; "
                                f"known: {sorted(MODELS)})")
    model = MODELS[name](TransformerConfig.from_dict(arch))
    load_model_state(model, tensors, ckpt_path)
    return model.to(device).eval(), meta
