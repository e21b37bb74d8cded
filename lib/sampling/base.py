"""The state and interface every token sampler shares (see ``docs/generation_contract.md``).

Token grids are ``[B, N, C]`` long (N = H*W positions in raster order, C channels per position). The
id ``mask_id = K`` marks a masked entry; every channel of every position is masked and revealed
independently (MoVQ Sec. 3.2, "we independently mask each index for various channels and
positions"). ``known`` ``[B, N, C]`` bool marks the given entries (M6-Fashion Sec. 3.2 preservation
condition p, Muse Sec. 3.3.1 in/out-painting): samplers never change them. The other entries are
the *unknown* ones; U, the number of unknown entries of a row, drives every schedule.

Schedulers are diffusers-style: the caller owns the loop and the model::

    state = sched.init_state(tokens, known, mask_id)
    for t in range(sched.num_steps):
        state = sched.step(logits_fn(state.tokens), t, state, generator=g)

``num_steps`` is always the number of model calls. Randomness comes only from ``generator`` (a
``torch.Generator`` on the logits' device, or None for the global one).
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from lib.io import AtelierInputError

__all__ = ["SamplerState", "TokenScheduler", "sample_categorical", "select_top", "gumbel_noise",
           "check_nonneg", "check_steps"]


@dataclass
class SamplerState:
    """Where a sampling loop stands.

    ``tokens`` ``[B,N,C]`` long holds ``mask_id`` at the entries still masked (what the next model
    call sees); ``known`` ``[B,N,C]`` bool never changes; ``step`` counts the steps taken so far.
    ``probs`` ``[B,N,C]`` float: the (untempered) probability the prediction that placed each current
    token gave it -- 1 at known entries, 0 at masked ones. ``predicted`` ``[B,N,C]`` long: the last
    predict step's complete grid (every unknown entry filled, before any re-masking), the frame the
    M6-Fashion Fig. 6 iteration strip shows; None before the first step.
    """

    tokens: Tensor
    known: Tensor
    mask_id: int
    step: int = 0
    probs: Tensor | None = None
    predicted: Tensor | None = None

    @property
    def masked(self) -> Tensor:
        """Bool ``[B,N,C]``: entries still holding ``mask_id``."""
        return self.tokens == self.mask_id

    def num_unknown(self) -> Tensor:
        """Long ``[B]``: U, the entries of each row a sampler must generate."""
        return (~self.known).flatten(1).sum(1)

    def num_masked(self) -> Tensor:
        """Long ``[B]``: entries of each row still masked."""
        return self.masked.flatten(1).sum(1)


def check_steps(num_steps, name: str = "num_steps") -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise AtelierInputError(f"{name} must be an integer >= 1, got {num_steps!r}")
    return num_steps


def check_nonneg(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise AtelierInputError(f"{name} must be a number >= 0, got {value!r}") from None
    if not v >= 0 or v == float("inf"):
        raise AtelierInputError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def gumbel_noise(shape, generator: torch.Generator | None, device) -> Tensor:
    """Standard Gumbel samples -log(-log u) (float32)."""
    u = torch.rand(shape, generator=generator, device=device)
    tiny = torch.finfo(u.dtype).tiny
    exp1 = -torch.log(u.clamp(min=tiny))  # Exp(1) draw, > 0 since u < 1
    return -torch.log(exp1.clamp(min=tiny))


def sample_categorical(logits: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """Long ``[...]``: one draw per row of ``logits [..., K]`` from softmax(logits / temperature).

    ``temperature == 0`` is the greedy limit (argmax). Logits of -inf are never drawn.
    """
    if temperature == 0:
        return logits.argmax(-1)
    k = logits.shape[-1]
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if probs.numel() == 0:
        return torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    # Inverse-CDF draw: one uniform per row and a binary search. Exact like torch.multinomial, whose
    # CPU kernel draws an exponential per *entry* (K of them per row) and was a third of the MaskGIT
    # batch-1 latency at K = 1024 (results/bench/generation.json). A zero-probability entry is never
    # the first with cdf > u, so -inf logits stay undrawn.
    cdf = probs.reshape(-1, k).cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u < total: the draw exists
    draw = torch.searchsorted(cdf, u, right=True)
    return draw.view(logits.shape[:-1])


def select_top(scores: Tensor, counts: Tensor) -> Tensor:
    """Bool, same shape as ``scores [B, M]``: the ``counts[b]`` highest scores of every row b.

    Rows may ask for different counts; excluded candidates should carry -inf (they rank last).
    """
    order = scores.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks < counts.to(scores.device)[:, None]


class TokenScheduler(abc.ABC):
    """Base of every sampler: validation, state creation, the step contract.

    Subclasses implement :meth:`step` and :meth:`schedule` (the planned number of masked unknown
    entries after each step, for a row with U unknown entries).
    """

    def __init__(self, num_steps: int):
        self.num_steps = check_steps(num_steps)

    def set_timesteps(self, num_steps: int) -> None:
        """Change the number of steps (model calls) of the next run."""
        self.num_steps = check_steps(num_steps)

    def init_state(self, tokens: Tensor, known: Tensor, mask_id: int) -> SamplerState:
        """Start a run: unknown entries set to ``mask_id``, known entries as given.

        ``tokens`` ``[B,N,C]`` integer (values at unknown entries are ignored); ``known`` ``[B,N,C]``
        bool; ``mask_id`` = K, the codebook size, so known tokens must lie in [0, K).
        """
        if not isinstance(tokens, Tensor) or tokens.dim() != 3:
            raise AtelierInputError(f"tokens must be a [B, N, C] tensor, got "
                                    f"{tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise AtelierInputError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
        if not isinstance(known, Tensor) or known.dtype != torch.bool or known.shape != tokens.shape:
            raise AtelierInputError(
                f"known must be a bool tensor of the tokens' shape {tuple(tokens.shape)}, got "
                f"{(known.dtype, tuple(known.shape)) if isinstance(known, Tensor) else type(known).__name__}")
        if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 1:
            raise AtelierInputError(f"mask_id must be an integer >= 1 (the codebook size K), got {mask_id!r}")
        known = known.to(tokens.device)
        tokens = tokens.long()
        given = tokens[known]
        if given.numel() and (int(given.min()) < 0 or int(given.max()) >= mask_id):
            raise AtelierInputError(f"tokens: known entries must lie in [0, mask_id={mask_id}), got values in "
                                    f"[{int(given.min())}, {int(given.max())}]")
        tokens = torch.where(known, tokens, torch.full_like(tokens, mask_id))
        probs = known.float()
        return SamplerState(tokens=tokens, known=known.clone(), mask_id=mask_id, step=0, probs=probs)

    def check_step(self, logits: Tensor, t: int, state: SamplerState) -> Tensor:
        """Validate a step's arguments; returns the logits as float32 ``[B,N,C,K]``."""
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.num_steps:
            raise AtelierInputError(f"t must be an integer step in [0, num_steps={self.num_steps}), got {t!r}")
        expected = (*state.tokens.shape, state.mask_id)
        if not isinstance(logits, Tensor) or tuple(logits.shape) != expected:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise AtelierInputError(f"logits must have shape [B, N, C, K] = {expected} (K = mask_id), got {got}")
        return logits.float()

    @abc.abstractmethod
    def step(self, logits: Tensor, t: int, state: SamplerState,
             generator: torch.Generator | None = None) -> SamplerState:
        """One model call's update: ``logits`` were computed on ``state.tokens``; returns a new state."""

    @abc.abstractmethod
    def schedule(self, num_unknown: int) -> list[int]:
        """Planned number of masked unknown entries after each of the ``num_steps`` steps."""

    def _next(self, state: SamplerState, **changes) -> SamplerState:
        return dataclasses.replace(state, step=state.step + 1, **changes)

    def _check_unknown(self, num_unknown) -> int:
        if isinstance(num_unknown, bool) or not isinstance(num_unknown, int) or num_unknown < 0:
            raise AtelierInputError(f"num_unknown must be an integer >= 0, got {num_unknown!r}")
        return num_unknown
