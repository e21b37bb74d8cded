"""The sampling loop of the generation contract: a scheduler against a ``logits_fn``.

``logits_fn(tokens [B,N,C]) -> logits [B,N,C,K]`` is a closure over a masked-token model and its
condition; a :class:`~lib.sampling.guidance.ClassifierFreeGuidance` (anything with ``set_step``) is
told the step before each call so a guidance schedule can follow the sampling (Muse Sec. 2.7).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lib.io import AtelierInputError
from lib.sampling.base import TokenScheduler

__all__ = ["sample"]

FRAME_SOURCES = ("tokens", "predicted")


def sample(logits_fn: Callable[[Tensor], Tensor], scheduler: TokenScheduler, tokens: Tensor, known: Tensor,
           mask_id: int, generator: torch.Generator | None = None, keep_frames: bool = False,
           progress: bool = False, frames_of: str = "tokens") -> tuple[Tensor, list[Tensor]]:
    """Run ``scheduler`` for its ``num_steps``; returns (final tokens ``[B,N,C]``, frames).

    With ``keep_frames`` the frames are one ``[B,N,C]`` grid per step: ``frames_of="tokens"`` the
    state after the step (masked entries hold ``mask_id``; Muse Fig. 5), ``"predicted"`` the step's
    complete prediction before re-masking (no ``mask_id``; the M6-Fashion Fig. 6 SMART strip).
    Runs under ``torch.no_grad``.
    """
    if not isinstance(scheduler, TokenScheduler):
        raise AtelierInputError(f"scheduler must be a TokenScheduler, got {type(scheduler).__name__}")
    if frames_of not in FRAME_SOURCES:
        raise AtelierInputError(f"frames_of must be one of {FRAME_SOURCES}, got {frames_of!r}")
    state = scheduler.init_state(tokens, known, mask_id)
    frames: list[Tensor] = []
    set_step = getattr(logits_fn, "set_step", None)
    with torch.no_grad():
        for t in tqdm(range(scheduler.num_steps), disable=not progress, desc=type(scheduler).__name__,
                      mininterval=2):
            if callable(set_step):
                set_step(t)
            state = scheduler.step(logits_fn(state.tokens), t, state, generator=generator)
            if keep_frames:
                frames.append((state.tokens if frames_of == "tokens" else state.predicted).clone())
    return state.tokens, frames
