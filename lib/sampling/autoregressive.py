"""Autoregressive sampling of token grids (MoVQ Sec. 3.2 "Autoregressive token generation", Eq. 5:
p(s) = prod_i p(s_i | s_<i); the Taming-transformer baseline) with top-k / nucleus filtering.

The grid ``[B, N, C]`` is generated entry by entry in raster order with the channel index varying
fastest ("channel-minor"): flat entry t is position t // C, channel t % C. A known entry is copied
instead of sampled (the model still conditions on it), so a known raster prefix is plain completion.

The scheduler keeps the shared ``step(logits, t, state)`` contract, with the *next-token* logits
``[B, K]`` of a KV-cached model (a full ``[B, N, C, K]`` prediction is accepted too; entry t is read
from it). :func:`sample_autoregressive` drives a model exposing ``start(cond, B) -> cache``,
``next_logits(cache) -> [B, K]`` and ``append(cache, token [B]) -> cache``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lib.io import AtelierInputError
from lib.sampling.base import SamplerState, TokenScheduler, check_nonneg, check_steps, sample_categorical

__all__ = ["filter_logits", "AutoregressiveScheduler", "sample_autoregressive"]


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set every logit outside the top-k, then outside the nucleus, to -inf (last dim = vocabulary).

    ``top_k``: keep the k largest logits (ties broken by index; k > K keeps all). ``top_p``: keep the
    smallest set of most probable tokens (of the top-k survivors, renormalised) whose mass reaches
    ``top_p``, i.e. a token is kept when the mass of the tokens ranked before it is < top_p. At least
    one token always survives. None disables a filter.
    """
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise AtelierInputError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
        if top_k < logits.shape[-1]:
            idx = logits.topk(top_k, dim=-1).indices
            keep = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter_(-1, idx, True)
            logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None:
        try:
            p = float(top_p)
        except (TypeError, ValueError):
            p = float("nan")
        if not 0 < p <= 1:
            raise AtelierInputError(f"top_p must be in (0, 1] or None, got {top_p!r}")
        if p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
            probs = torch.softmax(sorted_logits.float(), dim=-1)
            mass_before = probs.cumsum(-1) - probs
            drop_sorted = mass_before >= p
            drop_sorted[..., 0] = False
            drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
    return logits


class AutoregressiveScheduler(TokenScheduler):
    """Fills flat entry t at step t (raster, channel-minor); ``num_steps = num_tokens = N * C``."""

    def __init__(self, num_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None):
        super().__init__(check_steps(num_tokens, "num_tokens"))
        self.temperature = check_nonneg(temperature, "temperature")
        filter_logits(torch.zeros(1, 2), top_k, top_p)  # validates top_k / top_p
        self.top_k, self.top_p = top_k, top_p

    @property
    def num_tokens(self) -> int:
        return self.num_steps

    def init_state(self, tokens: Tensor, known: Tensor, mask_id: int) -> SamplerState:
        state = super().init_state(tokens, known, mask_id)
        n, c = state.tokens.shape[1:]
        if n * c != self.num_tokens:
            raise AtelierInputError(f"num_tokens={self.num_tokens} must equal N * C = {n} * {c} of the tokens")
        return state

    def schedule(self, num_unknown: int) -> list[int]:
        """min(U, num_tokens - t - 1): exact when the known entries form a raster prefix, otherwise an
        upper bound (the entries still masked are the unknown ones after position t)."""
        u = self._check_unknown(num_unknown)
        return [min(u, self.num_tokens - t - 1) for t in range(self.num_steps)]

    def step(self, logits: Tensor, t: int, state: SamplerState,
             generator: torch.Generator | None = None) -> SamplerState:
        b, n, c = state.tokens.shape
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.num_steps:
            raise AtelierInputError(f"t must be an integer step in [0, num_steps={self.num_steps}), got {t!r}")
        if n * c != self.num_tokens:
            raise AtelierInputError(f"num_tokens={self.num_tokens} must equal N * C = {n} * {c} of the tokens")
        if isinstance(logits, Tensor) and tuple(logits.shape) == (b, n, c, state.mask_id):
            logits = logits[:, t // c, t % c]
        if not isinstance(logits, Tensor) or tuple(logits.shape) != (b, state.mask_id):
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise AtelierInputError(f"logits must be next-token logits [B, K] = {(b, state.mask_id)} "
                                    f"(or [B, N, C, K]), got {got}")
        logits = filter_logits(logits.float(), self.top_k, self.top_p)
        drawn = sample_categorical(logits, self.temperature, generator)
        p = torch.softmax(logits, dim=-1).gather(-1, drawn[:, None])[:, 0]

        flat_known = state.known.reshape(b, -1)[:, t]
        flat_tokens = state.tokens.reshape(b, -1).clone()
        flat_tokens[:, t] = torch.where(flat_known, flat_tokens[:, t], drawn)
        flat_probs = (state.probs if state.probs is not None else state.known.float()).reshape(b, -1).clone()
        flat_probs[:, t] = torch.where(flat_known, torch.ones_like(p), p)
        tokens = flat_tokens.view(b, n, c)
        return self._next(state, tokens=tokens, probs=flat_probs.view(b, n, c), predicted=tokens)


def sample_autoregressive(next_logits_fn: Callable[[Any], Tensor], append_fn: Callable[[Any, Tensor], Any],
                          start_cache: Any, scheduler: AutoregressiveScheduler, tokens: Tensor, known: Tensor,
                          mask_id: int, generator: torch.Generator | None = None, keep_frames: bool = False,
                          progress: bool = False) -> tuple[Tensor, list[Tensor]]:
    """Run ``scheduler`` against a KV-cached model; returns (tokens ``[B,N,C]``, frames).

    ``next_logits_fn(cache) -> [B, K]`` gives the logits of the next entry, ``append_fn(cache,
    token [B]) -> cache`` feeds the entry just fixed (sampled or known) back; ``start_cache`` is the
    model's ``start(cond, B)``. Frames (with ``keep_frames``) are the grid after every entry.
    """
    if not isinstance(scheduler, AutoregressiveScheduler):
        raise AtelierInputError(f"scheduler must be an AutoregressiveScheduler, got {type(scheduler).__name__}")
    state = scheduler.init_state(tokens, known, mask_id)
    b = state.tokens.shape[0]
    cache = start_cache
    frames: list[Tensor] = []
    with torch.no_grad():
        for t in tqdm(range(scheduler.num_steps), disable=not progress, desc="AR sampling", mininterval=2):
            state = scheduler.step(next_logits_fn(cache), t, state, generator=generator)
            if keep_frames:
                frames.append(state.tokens.clone())
            if t < scheduler.num_steps - 1:  # the last entry needs no further model call
                cache = append_fn(cache, state.tokens.view(b, -1)[:, t])
    return state.tokens, frames
