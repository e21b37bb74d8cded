"""SMART: self-correction for masked non-autoregressive sampling (M6-Fashion Sec. 3.2).

The paper: "Given a fully-masked sequence at the first iteration, we predict all the target tokens
[...]. Then, we iteratively re-mask and re-predict a subset of tokens with a constant number of
iterations. Each iteration [...] consists of a mask step and then a predict step. During the mask
step at iteration t, we first remain N - n visual tokens unchanged, which are sampled from a
Multinomial distribution proportional to the probability scores p(I_i | I_U, c). And all the other
n tokens are re-masked", with

    n(t) = N * (beta + (T - t) / (T - 1) * (alpha - beta)),   t = 1..T,

alpha the initial and beta the minimum mask ratio (paper: alpha = 0.8, beta = 0.2, T = 10).

How the iterations map onto model calls here (``num_steps = T + 1``; the paper's T = 10 is
``num_steps=11``):

* call 0 (the paper's initial prediction, I^(0)): every unknown entry is masked; the predict step
  samples all of them;
* call t = 1..T (iteration t): the mask step of iteration t was applied at the end of call t-1 --
  it kept N - n(t) unknown entries, drawn without replacement with probability proportional to their
  scores p (Gumbel-top-k, i.e. successive multinomial draws), and re-masked the other n(t), **including
  entries predicted in earlier iterations** (the self-correction); call t's predict step samples
  every masked entry again.

So after call s < T exactly n(s+1) unknown entries are masked (``schedule``), after the last call
none: the formula holds at every t = 1..T and the output has no mask. n is rounded half up,
floor(x + 1/2); N counts the unknown entries of a row (known / preserved entries never change and
are never re-masked). The score p of an entry is the untempered probability the model gave the
token when it was drawn (kept in ``SamplerState.probs``): the logits at unmasked positions are not
a trained prediction of those positions, so entries are not re-scored. With T = 1 the single
iteration uses n(1) = alpha * N.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lib.io import AtelierInputError
from lib.sampling.base import SamplerState, TokenScheduler, check_nonneg, gumbel_noise, sample_categorical, select_top

__all__ = ["SMARTScheduler"]


class SMARTScheduler(TokenScheduler):
    """M6-Fashion SMART sampling; ``num_steps`` = T + 1 model calls (see module docstring).

    ``alpha``: initial re-mask ratio, ``beta``: minimum re-mask ratio (0 <= beta <= alpha <= 1).
    ``temperature``: sampling temperature of the predict steps (0 = argmax).
    """

    def __init__(self, num_steps: int = 11, alpha: float = 0.8, beta: float = 0.2, temperature: float = 1.0):
        super().__init__(num_steps)
        self.alpha = check_nonneg(alpha, "alpha")
        self.beta = check_nonneg(beta, "beta")
        if self.alpha > 1:
            raise AtelierInputError(f"alpha must be in [0, 1], got {alpha!r}")
        if self.alpha < self.beta:
            raise AtelierInputError(f"alpha (initial mask ratio) must be >= beta (minimum mask ratio), "
                                    f"got alpha={alpha!r} < beta={beta!r}")
        self.temperature = check_nonneg(temperature, "temperature")

    @property
    def num_iterations(self) -> int:
        """T, the paper's number of mask/predict iterations after the initial prediction."""
        return self.num_steps - 1

    def remask_ratio(self, t: int) -> float:
        """n(t) / N = beta + (T - t)/(T - 1) * (alpha - beta) for iteration t in 1..T."""
        T = self.num_iterations
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= T:
            raise AtelierInputError(f"t must be an iteration in [1, T={T}], got {t!r}")
        frac = 1.0 if T == 1 else (T - t) / (T - 1)
        return self.beta + frac * (self.alpha - self.beta)

    def remask_count(self, t: int, num_unknown: Tensor) -> Tensor:
        """Long ``[B]``: n(t) = floor(N * ratio + 1/2) for rows with ``num_unknown [B]`` = N."""
        n = torch.floor(num_unknown.double() * self.remask_ratio(t) + 0.5).long()
        return torch.minimum(n, num_unknown.long())

    def schedule(self, num_unknown: int) -> list[int]:
        u = torch.tensor([self._check_unknown(num_unknown)])
        return [int(self.remask_count(t, u)) for t in range(1, self.num_iterations + 1)] + [0]

    def step(self, logits: Tensor, t: int, state: SamplerState,
             generator: torch.Generator | None = None) -> SamplerState:
        logits = self.check_step(logits, t, state)
        masked, known = state.masked, state.known
        b = masked.shape[0]

        # predict step of iteration t (t = 0: the initial full prediction)
        sub = logits[masked]
        drawn = sample_categorical(sub, self.temperature, generator)
        p = torch.softmax(sub, dim=-1).gather(-1, drawn[:, None])[:, 0]
        predicted = state.tokens.clone()
        predicted[masked] = drawn
        probs = (state.probs if state.probs is not None else known.float()).clone()
        probs[masked] = p
        if t == self.num_iterations:
            return self._next(state, tokens=predicted, probs=probs, predicted=predicted)

        # mask step of iteration t + 1: keep N - n(t+1) unknown entries ~ Multinomial(p), no replacement
        unknown = ~known
        n_unknown = unknown.flatten(1).sum(1)
        keep_count = n_unknown - self.remask_count(t + 1, n_unknown)
        logp = torch.log(probs.clamp(min=torch.finfo(torch.float32).tiny))
        scores = logp + gumbel_noise(logp.shape, generator, logp.device)
        scores = torch.where(unknown, scores, torch.full_like(scores, float("-inf")))
        keep = select_top(scores.view(b, -1), keep_count).view_as(unknown) & unknown
        remask = unknown & ~keep
        tokens = torch.where(remask, torch.full_like(predicted, state.mask_id), predicted)
        probs = torch.where(remask, torch.zeros_like(probs), probs)
        return self._next(state, tokens=tokens, probs=probs, predicted=predicted)
