"""One learnable codebook: nearest-code lookup plus the training-time bookkeeping every quantizer needs.

A :class:`Codebook` holds ``codebook_size`` (K) code vectors of ``dim`` dimensions and maps vectors
``x [N, dim]`` to the index of their nearest code in L2 distance -- the quantisation operator
``q(.)`` of M6-Fashion Eq. (1) (= MoVQ Eq. (2), van den Oord et al. 2017). The quantizers in this
package (VQ, RQ, PQ, MoVQ) differ only in *what* they feed to one or more codebooks; all of them
share this module so that the ablation compares quantisation schemes, not codebook tricks.

Two ways to learn the codes:

* gradient (default): the codebook term ``||sg[E(x)] - z_q||^2`` of M6-Fashion Eq. (3) pulls the
  chosen codes towards the encoder outputs, and ``beta * ||sg[z_q] - E(x)||^2`` (commitment, with
  ``beta = 0.25`` as in VQ-VAE / VQGAN / MoVQ Eq. (3)) keeps the encoder near its codes. M6-Fashion
  writes Eq. (3) without a weight, i.e. ``beta = 1``; pass ``beta=1.0`` to reproduce it literally;
* ``ema=True``: codes are exponential moving averages of the vectors assigned to them (VQ-VAE
  Appendix A.1, Razavi et al. 2019, with Laplace smoothing of the cluster sizes). The codebook term
  of Eq. (3) is then replaced by the EMA update and returned as 0; commitment is unchanged.

Optional extras, all off by default so a plain codebook is the textbook one:

* ``kmeans_init``: on the first *training* batch, the codes are set by k-means++ seeding followed by
  ``kmeans_iters`` Lloyd iterations on that batch (as in SoundStream, Zeghidour et al. 2021), so no
  code starts out far from the data;
* ``restart_dead``: a code that has received no vector for ``dead_after_steps`` training steps, or
  whose EMA share of assignments is below ``dead_usage_threshold`` times its fair share ``1/K``, is
  re-initialised from a random vector of the current batch (Dhariwal et al. 2020, Zeghidour et al.
  2021). With ``ema=False`` and Adam, the optimiser moments of a restarted code are stale; they fade
  after a few steps, which is the usual accepted cost.

Usage statistics (:meth:`Codebook.stats`) are computed on every call and are what the quantizers
report: batch ``usage`` and ``perplexity`` (exp of the entropy of the assignment distribution; K
means perfectly uniform use, 1 means collapse), their running counterparts, and ``dead_fraction``.

Distances are always computed in float32 with autocast disabled: under bf16/fp16 autocast the
``x @ e.T`` term loses enough precision to change the argmin, i.e. the tokens themselves.

Not handled here: multi-process (DDP) training. EMA sums, k-means and restarts are per process;
an all-reduce of the EMA statistics would be needed to keep replicas' codebooks identical.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.io import AtelierInputError

__all__ = ["Codebook", "CodebookOutput", "CODEBOOK_OPTIONS", "check_codebook_options", "autocast_off"]


def autocast_off(device: torch.device):
    """Context that disables autocast on ``device``'s type (float32 distances, see module doc)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support: nothing to disable
        return contextlib.nullcontext()


def _nearest(x: Tensor, codes: Tensor) -> Tensor:
    """Index of the nearest row of ``codes [K, d]`` for each row of ``x [N, d]`` (float32 L2).

    ``||x||^2`` is the same for every code, so it is left out of the argmin.
    """
    with autocast_off(x.device):
        x = x.detach().float()
        codes = codes.detach().float()
        sq = (codes * codes).sum(1)[None, :]
        # Chunk rows so the [rows, K] distance matrix stays below ~256 MiB of float32.
        step = max(1, _MAX_DIST_ELEMENTS // codes.shape[0])
        if x.shape[0] <= step:
            return torch.addmm(sq, x, codes.t(), beta=1.0, alpha=-2.0).argmin(dim=1)
        return torch.cat(
            [torch.addmm(sq, part, codes.t(), beta=1.0, alpha=-2.0).argmin(dim=1) for part in x.split(step)]
        )


_MAX_DIST_ELEMENTS = 1 << 26


@dataclass
class CodebookOutput:
    """Result of :meth:`Codebook.forward` on ``x [N, dim]``.

    ``codes`` carry gradients to the codebook (not to ``x``): the quantizers apply the
    straight-through estimator themselves, once, on the assembled latent map.
    """

    indices: Tensor  # [N] long
    codes: Tensor  # [N, dim] float32
    loss: Tensor  # codebook_loss + beta * commitment_loss
    codebook_loss: Tensor  # ||sg[x] - q||^2 (M6-Fashion Eq. 3, 2nd term); 0 with EMA
    commitment_loss: Tensor  # ||x - sg[q]||^2 (3rd term, before beta)
    stats: dict[str, Tensor]


class Codebook(nn.Module):
    """K learnable code vectors with L2 nearest-code lookup (M6-Fashion Eq. 1 and 3).

    Args:
        codebook_size: K, number of codes (the transformer's vocabulary for this codebook).
        dim: dimension of each code.
        beta: commitment weight of MoVQ Eq. (3) (M6-Fashion Eq. (3) is the case ``beta = 1``).
        ema: learn codes by exponential moving averages instead of the codebook loss.
        decay: EMA decay of the cluster sizes and sums (``ema=True`` only).
        eps: Laplace smoothing constant of the EMA cluster sizes.
        kmeans_init: initialise the codes by k-means on the first training batch.
        kmeans_iters: Lloyd iterations after k-means++ seeding.
        kmeans_max_points: k-means runs on at most this many (randomly chosen) vectors of the batch.
        restart_dead: re-initialise dead codes from random vectors of the current batch.
        dead_after_steps: a code with no assignment for this many training steps is dead.
        dead_usage_threshold: a code whose EMA assignment share is below this fraction of the fair
            share ``1/K`` is dead as well (0 disables this criterion; must be < 1).
        usage_decay: decay of the running assignment share (``usage_ema``).
        init_scale: codes start as ``N(0, init_scale^2)``, i.e. at the scale of a roughly
            normalised encoder output (VQGAN's ``U(-1/K, 1/K)`` starts every code far inside the
            data, where only the few codes the codebook loss drags out get used). Match it to the
            encoder's output scale, or use ``kmeans_init``.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        *,
        beta: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        kmeans_max_points: int = 65536,
        restart_dead: bool = False,
        dead_after_steps: int = 100,
        dead_usage_threshold: float = 0.0,
        usage_decay: float = 0.99,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_int("codebook_size", codebook_size, 1)
        check_int("dim", dim, 1)
        check_int("kmeans_iters", kmeans_iters, 0)
        check_int("kmeans_max_points", kmeans_max_points, 1)
        check_int("dead_after_steps", dead_after_steps, 1)
        _check_range("beta", beta, 0.0, math.inf, lo_open=False)
        _check_range("decay", decay, 0.0, 1.0)
        _check_range("eps", eps, 0.0, math.inf)
        _check_range("dead_usage_threshold", dead_usage_threshold, 0.0, 1.0, lo_open=False)
        _check_range("usage_decay", usage_decay, 0.0, 1.0)
        _check_range("init_scale", init_scale, 0.0, math.inf)

        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = float(beta)
        self.ema = bool(ema)
        self.decay = float(decay)
        self.eps = float(eps)
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = kmeans_iters
        self.kmeans_max_points = kmeans_max_points
        self.restart_dead = bool(restart_dead)
        self.dead_after_steps = dead_after_steps
        self.dead_usage_threshold = float(dead_usage_threshold)
        self.usage_decay = float(usage_decay)

        weight = torch.randn(codebook_size, dim) * init_scale
        if self.ema:
            self.register_buffer("embed", weight)
            # One pseudo-observation per code located at the code itself: an unused code then
            # stays where it is (sum/count = code) instead of being divided by a near-zero count.
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", weight.clone())
        else:
            self.embed = nn.Parameter(weight)
        # Stored (not a Python flag) so that a loaded checkpoint is not re-initialised by k-means.
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))
        self._kmeans_done = not self.kmeans_init
        # Fresh and restarted codes start at 0: they get dead_after_steps steps of grace.
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("usage_ema", torch.full((codebook_size,), 1.0 / codebook_size))

    # ------------------------------------------------------------------ lookup
    @property
    def weight(self) -> Tensor:
        """The codes, ``[K, dim]`` (a Parameter, or a buffer with ``ema=True``).

        To overwrite codes use :meth:`set_codes`: with ``ema=True`` the codes are recomputed from
        the EMA sums at every training step, so a direct write would be undone.
        """
        return self.embed

    @torch.no_grad()
    def set_codes(self, values: Tensor, rows: Tensor | None = None) -> None:
        """Overwrite all codes (``values [K, dim]``) or ``rows`` of them, resetting their EMA and
        usage bookkeeping as for fresh codes."""
        if rows is None:
            rows = torch.arange(self.codebook_size, device=self.embed.device)
        rows = torch.as_tensor(rows, device=self.embed.device).reshape(-1)
        values = values.to(self.embed.device).reshape(rows.numel(), self.dim)
        self._set_codes(rows, values)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for ``indices`` (any shape) -> ``[..., dim]`` float32; differentiable w.r.t. codes."""
        return F.embedding(indices, self.embed).float()

    def quantize_indices(self, x: Tensor) -> Tensor:
        """Nearest-code indices ``[N]`` of ``x [N, dim]``; on the first training batch with
        ``kmeans_init`` the codes are first fitted to ``x`` (the only side effect here)."""
        if self.training and self.kmeans_init and not self._kmeans_done:
            if not bool(self.initialized):  # host sync, but only until the first init is seen
                self._kmeans(x)
            self._kmeans_done = True
        return _nearest(x, self.embed)

    def forward(self, x: Tensor) -> CodebookOutput:
        """Quantise ``x [N, dim]``: lookup, losses of Eq. (3), and in training mode the updates."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise AtelierInputError(f"Codebook expects x of shape [N, {self.dim}], got {list(x.shape)}")
        x = x.float()
        idx = self.quantize_indices(x)
        codes = self.lookup(idx)
        commitment = F.mse_loss(x, codes.detach())
        if self.ema:
            codebook_loss = torch.zeros((), device=x.device)
        else:
            codebook_loss = F.mse_loss(codes, x.detach())
        update = self.update(x, idx) if self.training else None
        return CodebookOutput(
            indices=idx,
            codes=codes,
            loss=codebook_loss + self.beta * commitment,
            codebook_loss=codebook_loss,
            commitment_loss=commitment,
            stats=self.stats(idx, update),
        )

    # ------------------------------------------------------------------ training-time updates
    @torch.no_grad()
    def update(self, x: Tensor, idx: Tensor) -> dict[str, Tensor]:
        """One training step's bookkeeping for the assignments ``x [N, dim] -> idx [N]``:
        usage tracking, the EMA update (``ema=True``) and dead-code restart (``restart_dead``).

        Call once per training step per codebook (a quantizer that uses a codebook several times
        per step, e.g. RQ with a shared codebook, concatenates its inputs first), so that
        ``steps_unused`` counts steps. Returns ``dead_fraction`` (before any restart) and
        ``restarted`` (number of codes re-initialised).
        """
        x = x.detach().float().reshape(-1, self.dim)
        idx = idx.reshape(-1)
        k = self.codebook_size
        counts = torch.bincount(idx, minlength=k).float()
        n = max(idx.numel(), 1)

        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        self.usage_ema.mul_(self.usage_decay).add_(counts / n, alpha=1.0 - self.usage_decay)

        if self.ema:
            sums = torch.zeros(k, self.dim, device=x.device).index_add_(0, idx, x)
            self.ema_count.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
            total = self.ema_count.sum()
            # Laplace smoothing keeps the divisor positive without biasing well-used codes.
            smoothed = (self.ema_count + self.eps) / (total + k * self.eps) * total
            self.embed.copy_(self.ema_sum / smoothed[:, None])

        dead = self.dead_mask()
        dead_fraction = dead.float().mean()
        restarted = torch.zeros((), device=x.device)
        if self.restart_dead and x.shape[0] > 0:
            rows = dead.nonzero().squeeze(1)
            if rows.numel() > 0:  # one host sync, only when restarts are enabled
                pick = torch.randint(x.shape[0], (rows.numel(),), device=x.device)
                self._set_codes(rows, x[pick])
                restarted = torch.tensor(float(rows.numel()), device=x.device)
        return {"dead_fraction": dead_fraction, "restarted": restarted}

    def dead_mask(self) -> Tensor:
        """Boolean ``[K]``: codes unused for ``dead_after_steps`` steps or below the usage threshold."""
        dead = self.steps_unused >= self.dead_after_steps
        if self.dead_usage_threshold > 0:
            dead = dead | (self.usage_ema < self.dead_usage_threshold / self.codebook_size)
        return dead

    @torch.no_grad()
    def _set_codes(self, rows: Tensor, values: Tensor) -> None:
        """Overwrite codes ``rows`` and reset their bookkeeping as if they were new."""
        values = values.to(self.embed.dtype)
        self.embed.data[rows] = values
        if self.ema:
            self.ema_sum[rows] = values.float()
            self.ema_count[rows] = 1.0
        self.steps_unused[rows] = 0
        self.usage_ema[rows] = 1.0 / self.codebook_size

    @torch.no_grad()
    def _kmeans(self, x: Tensor) -> None:
        """k-means++ seeding + Lloyd iterations on (a subsample of) ``x``; sets all codes."""
        x = x.detach().float().reshape(-1, self.dim)
        k = self.codebook_size
        if x.shape[0] > self.kmeans_max_points:
            x = x[torch.randperm(x.shape[0], device=x.device)[: self.kmeans_max_points]]
        n = x.shape[0]
        if n == 0:
            return
        if n <= k:
            # Fewer vectors than codes: use each once, fill the rest with repeats; the repeats
            # stay unused and are the first candidates for dead-code restart.
            pick = torch.cat([torch.randperm(n, device=x.device), torch.randint(n, (k - n,), device=x.device)])
            centroids = x[pick]
        else:
            centroids = self._kmeans_pp(x)
            for _ in range(self.kmeans_iters):
                assign = _nearest(x, centroids)
                counts = torch.bincount(assign, minlength=k).float()
                sums = torch.zeros_like(centroids).index_add_(0, assign, x)
                # An empty cluster keeps its centroid rather than collapsing to the origin.
                centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
        self._set_codes(torch.arange(k, device=x.device), centroids)
        self.initialized.fill_(True)

    def _kmeans_pp(self, x: Tensor) -> Tensor:
        """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre is drawn with
        probability proportional to the squared distance to the nearest centre so far, so that
        well-separated clusters each get a centre (plain random seeding often misses some)."""
        n, k = x.shape[0], self.codebook_size
        chosen = torch.empty(k, dtype=torch.long, device=x.device)
        chosen[0] = torch.randint(n, (1,), device=x.device)
        d2 = ((x - x[chosen[0]]) ** 2).sum(1)
        for i in range(1, k):
            total = d2.sum()
            # If every point already coincides with a centre, fall back to a uniform draw.
            weights = torch.where(total > 0, d2, torch.ones_like(d2))
            chosen[i] = torch.multinomial(weights, 1)[0]
            d2 = torch.minimum(d2, ((x - x[chosen[i]]) ** 2).sum(1))
        return x[chosen].clone()

    # ------------------------------------------------------------------ statistics
    @torch.no_grad()
    def stats(self, idx: Tensor, update: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Usage statistics as 0-d tensors (no host sync; the quantizer converts them once).

        ``usage``: fraction of codes used by ``idx``; ``perplexity``: exp entropy of the batch
        assignment distribution; ``usage_running``: fraction of codes used within the last
        ``dead_after_steps`` training steps (fresh codes count as used during their grace period);
        ``perplexity_running``: the same entropy measure on the running assignment shares;
        ``dead_fraction``: fraction of dead codes (before this step's restarts, if any);
        ``restarted``: number of codes re-initialised this step.
        """
        k = self.codebook_size
        counts = torch.bincount(idx.reshape(-1), minlength=k).float()
        p = counts / counts.sum().clamp_min(1.0)
        running = self.usage_ema / self.usage_ema.sum().clamp_min(1e-12)
        device = counts.device
        if update is None:
            update = {"dead_fraction": self.dead_mask().float().mean(), "restarted": torch.zeros((), device=device)}
        return {
            "usage": (counts > 0).float().mean(),
            "perplexity": _perplexity(p),
            "usage_running": (self.steps_unused < self.dead_after_steps).float().mean(),
            "perplexity_running": _perplexity(running),
            "dead_fraction": update["dead_fraction"].to(device),
            "restarted": update["restarted"].to(device),
        }

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, dim={self.dim}, beta={self.beta}, ema={self.ema}, "
            f"kmeans_init={self.kmeans_init}, restart_dead={self.restart_dead}"
        )


def _perplexity(p: Tensor) -> Tensor:
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


def check_int(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise AtelierInputError(f"{name} must be an integer >= {lo}, got {value!r}")


def _check_range(name: str, value, lo: float, hi: float, lo_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (lo < value if lo_open else lo <= value) and value < hi
    if not ok:
        lo_s = f"{lo} <" if lo_open else f"{lo} <="
        raise AtelierInputError(f"{name} must satisfy {lo_s} {name} < {hi}, got {value!r}")


CODEBOOK_OPTIONS: tuple[str, ...] = tuple(
    name
    for name, p in inspect.signature(Codebook.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
)
"""Keyword options a quantizer forwards to its codebook(s)."""


def check_codebook_options(options: Mapping[str, object], owner: str) -> None:
    """Raise ``ValueError`` naming any key of ``options`` that is not a :class:`Codebook` option."""
    unknown = sorted(set(options) - set(CODEBOOK_OPTIONS))
    if unknown:
        raise AtelierInputError(
            f"{owner}: unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"codebook options are {', '.join(CODEBOOK_OPTIONS)}"
        )
