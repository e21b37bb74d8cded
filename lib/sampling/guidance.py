"""Classifier-free guidance and negative prompts (Muse Sec. 2.7, Eq. 1).

    l_g = (1 + t) * l_c - t * l_u

with l_c the conditional and l_u the unconditional logits and t the guidance scale. Muse increases
t linearly through sampling "so that early tokens are sampled more freely, with low or no guidance"
(:class:`LinearGuidanceSchedule`).

Negative prompts (Muse Sec. 2.7): replace the unconditional logits by logits conditioned on the
negative prompt -- pass a logits_fn closed over the negative prompt's condition as ``uncond_fn`` of
:class:`ClassifierFreeGuidance` (or as the second half of a batched call). Nothing else changes:
the guided logits then differ from plain CFG by exactly -t * (l_neg - l_u).
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor

from lib.io import AtelierInputError
from lib.sampling.base import check_nonneg, check_steps

__all__ = ["guided_logits", "LinearGuidanceSchedule", "ClassifierFreeGuidance"]

LogitsFn = Callable[[Tensor], Tensor]


def guided_logits(cond_logits: Tensor, uncond_logits: Tensor, scale: float | Tensor) -> Tensor:
    """Muse Eq. (1): (1 + scale) * l_c - scale * l_u; a number ``scale == 0`` returns l_c itself (exactly).

    ``scale`` may be a tensor broadcastable to the logits (e.g. ``[B, 1, 1, 1]``, one scale per row).
    """
    if cond_logits.shape != uncond_logits.shape:
        raise AtelierInputError(f"uncond_logits must have the shape of cond_logits {tuple(cond_logits.shape)}, "
                                f"got {tuple(uncond_logits.shape)}")
    if not isinstance(scale, Tensor) and scale == 0:
        return cond_logits
    return (1 + scale) * cond_logits - scale * uncond_logits


class LinearGuidanceSchedule:
    """Guidance scale rising linearly from 0 at step 0 to ``max_scale`` at step ``num_steps - 1``
    (Muse Sec. 2.7). With a single step the scale is ``max_scale``."""

    def __init__(self, max_scale: float, num_steps: int):
        self.max_scale = check_nonneg(max_scale, "max_scale")
        self.num_steps = check_steps(num_steps)

    def __call__(self, t: int) -> float:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.num_steps:
            raise AtelierInputError(f"t must be a step in [0, num_steps={self.num_steps}), got {t!r}")
        if self.num_steps == 1:
            return self.max_scale
        return self.max_scale * t / (self.num_steps - 1)


class ClassifierFreeGuidance:
    """A logits_fn ``tokens [B,N,C] -> guided logits [B,N,C,K]`` built from two branches.

    Two-call form: ``ClassifierFreeGuidance(cond_fn, uncond_fn, schedule)`` evaluates
    ``cond_fn(tokens)`` and ``uncond_fn(tokens)`` (for a negative prompt, ``uncond_fn`` is conditioned
    on it). Batched form: ``ClassifierFreeGuidance(batched_fn, schedule=..., batched=True)`` (or
    :meth:`from_batched`) makes one call ``batched_fn(tokens_2B) -> logits_2B`` on the tokens stacked
    twice, where rows [0, B) must be the conditional (positive-prompt) branch and rows [B, 2B) the
    unconditional or negative-prompt one.

    ``schedule`` is a constant scale or a callable ``t -> scale`` such as
    :class:`LinearGuidanceSchedule`; a callable needs the current step, set by :meth:`set_step`
    (:func:`lib.sampling.pipeline.sample` calls it before every model call). At scale 0 the
    two-call form skips the unconditional call.
    """

    def __init__(self, cond_fn: LogitsFn, uncond_fn: LogitsFn | None = None,
                 schedule: Union[float, Callable[[int], float]] = 0.0, batched: bool = False):
        if not callable(cond_fn):
            raise AtelierInputError(f"cond_fn must be callable, got {type(cond_fn).__name__}")
        if batched and uncond_fn is not None:
            raise AtelierInputError("uncond_fn must be None when batched=True (cond_fn is then the batched fn "
                                    "whose second half of rows is the unconditional branch)")
        if not batched and not callable(uncond_fn):
            raise AtelierInputError(f"uncond_fn must be callable (or use batched=True), got {type(uncond_fn).__name__}")
        if not callable(schedule):
            check_nonneg(schedule, "schedule")
        self.cond_fn = cond_fn
        self.uncond_fn = uncond_fn
        self.schedule = schedule
        self.batched = bool(batched)
        self.current_step: int | None = None

    @classmethod
    def from_batched(cls, batched_fn: LogitsFn, schedule: Union[float, Callable[[int], float]] = 0.0):
        return cls(batched_fn, None, schedule, batched=True)

    def set_step(self, t: int) -> None:
        self.current_step = t

    def scale(self) -> float:
        if not callable(self.schedule):
            return float(self.schedule)
        if self.current_step is None:
            raise AtelierInputError("ClassifierFreeGuidance: the guidance schedule depends on the step; "
                                    "call set_step(t) before evaluating (pipeline.sample does)")
        return float(self.schedule(self.current_step))

    def branches(self, tokens: Tensor, scale: float | None = None) -> tuple[Tensor, Tensor | None]:
        """(l_c, l_u) for ``tokens``; l_u is None when the two-call form can skip it (``scale`` 0;
        None = the current scale)."""
        if self.batched:
            b = tokens.shape[0]
            both = self.cond_fn(torch.cat([tokens, tokens], dim=0))
            if both.shape[0] != 2 * b:
                raise AtelierInputError(f"batched_fn must return 2B = {2 * b} rows, got {both.shape[0]}")
            return both[:b], both[b:]
        if (self.scale() if scale is None else scale) == 0:
            return self.cond_fn(tokens), None
        return self.cond_fn(tokens), self.uncond_fn(tokens)

    def __call__(self, tokens: Tensor) -> Tensor:
        scale = self.scale()
        cond, uncond = self.branches(tokens, scale)
        if uncond is None:
            return cond
        return guided_logits(cond, uncond, scale)
