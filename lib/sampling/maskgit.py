"""MaskGIT iterative parallel decoding (Muse Sec. 2.8; MoVQ Sec. 3.2 "Masked token generation").

Start with every unknown entry masked. At step t (0-based) of T:

1. sample a token for every masked entry from softmax(logits / temperature);
2. score it by its log-probability log p (untempered, MaskGIT) plus Gumbel noise of scale
   ``choice_temperature * (1 - (t+1)/T)`` (annealed to 0 at the last step);
3. keep the most confident samples and re-mask the rest so that
   m_t = floor(gamma((t+1)/T) * U) unknown entries stay masked, with gamma(r) = cos(pi r / 2)
   (the cosine schedule Muse takes from MaskGIT) or 1 - r ("linear"); m_t is clamped, as in
   google-research/maskgit's ``mask_len = max(1, min(unknown - 1, mask_len))``, to
   m_t <= m_{t-1} - 1 (at least one new entry per step while more than one is masked) and
   m_t >= 1 for t < T-1 (one entry stays masked until the last step), m_{T-1} = 0.

Revealed entries stay fixed for the remaining steps ("These tokens are then set to unmasked for the
remainder of the steps", Muse Sec. 2.8). Every channel is an entry of its own (MoVQ Sec. 3.2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lib.io import AtelierInputError
from lib.sampling.base import SamplerState, TokenScheduler, check_nonneg, gumbel_noise, sample_categorical, select_top
from lib.sampling.mask_schedule import MASK_SCHEDULES

__all__ = ["MaskGITScheduler", "MASK_SCHEDULES"]


class MaskGITScheduler(TokenScheduler):
    """MaskGIT / Muse confidence-based parallel decoding (see module docstring).

    ``temperature``: sampling temperature (0 = argmax). ``choice_temperature``: initial scale of the
    Gumbel noise added to the confidences (MaskGIT's default 4.5). ``schedule``: "cosine" | "linear".
    """

    def __init__(self, num_steps: int = 12, temperature: float = 1.0, choice_temperature: float = 4.5,
                 schedule: str = "cosine"):
        super().__init__(num_steps)
        self.temperature = check_nonneg(temperature, "temperature")
        self.choice_temperature = check_nonneg(choice_temperature, "choice_temperature")
        if schedule not in MASK_SCHEDULES:
            raise AtelierInputError(f"schedule must be one of {sorted(MASK_SCHEDULES)}, got {schedule!r}")
        self.mask_schedule = schedule

    def planned_masked(self, num_unknown: Tensor) -> Tensor:
        """Long ``[B, T]``: m_t for rows with ``num_unknown [B]`` unknown entries (module docstring)."""
        gamma = MASK_SCHEDULES[self.mask_schedule]
        u = num_unknown.long()
        prev = u
        out = []
        for t in range(self.num_steps):
            if t == self.num_steps - 1:
                m = torch.zeros_like(u)
            else:
                # float64 times a Python float: the same IEEE product as math.floor(g * U)
                m = torch.floor(u.double() * gamma((t + 1) / self.num_steps)).long()
                # google-research/maskgit: mask_len = max(1, min(unknown - 1, floor(gamma * U))), so
                # at least one entry is revealed per step while more than one is unknown, and one stays
                # masked until the last step (a step-dependent guidance schedule then sees every step)
                m = torch.minimum(torch.minimum(m, prev - 1).clamp(min=1), prev)
            out.append(m)
            prev = m
        return torch.stack(out, dim=1)

    def schedule(self, num_unknown: int) -> list[int]:
        u = self._check_unknown(num_unknown)
        return self.planned_masked(torch.tensor([u]))[0].tolist()

    def step(self, logits: Tensor, t: int, state: SamplerState,
             generator: torch.Generator | None = None) -> SamplerState:
        logits = self.check_step(logits, t, state)
        masked = state.masked
        b = masked.shape[0]
        current = masked.flatten(1).sum(1)
        target = torch.minimum(self.planned_masked(state.num_unknown())[:, t], current)
        reveal = current - target

        sub = logits[masked]  # [M, K]: only the masked entries are sampled
        drawn = sample_categorical(sub, self.temperature, generator)
        logp = torch.log_softmax(sub, dim=-1).gather(-1, drawn[:, None])[:, 0]
        noise_scale = self.choice_temperature * (1.0 - (t + 1) / self.num_steps)
        confidence = logp
        if noise_scale > 0 and drawn.numel():
            confidence = logp + noise_scale * gumbel_noise(logp.shape, generator, logp.device)

        predicted = state.tokens.clone()
        predicted[masked] = drawn
        old_probs = state.probs if state.probs is not None else state.known.float()
        new_probs = torch.zeros_like(old_probs)
        new_probs[masked] = logp.exp()
        scores = torch.full(masked.shape, float("-inf"), device=logits.device)
        # finite scores for every masked entry so -inf log-probs still rank above non-candidates
        scores[masked] = confidence.clamp(min=torch.finfo(torch.float32).min)
        revealed = select_top(scores.view(b, -1), reveal).view_as(masked) & masked

        tokens = torch.where(revealed, predicted, state.tokens)
        probs = torch.where(revealed, new_probs, old_probs)
        return self._next(state, tokens=tokens, probs=probs, predicted=predicted)
