"""The result type and interface shared by every quantizer (VQ, RQ, PQ, MoVQ).

A quantizer maps an encoder output ``z [B, D, H, W]`` to

* ``quantized [B, D, H, W]``: the quantised latent with the straight-through estimator applied
  (M6-Fashion Sec. 3.1: gradients are copied from the decoder input to the encoder output);
* ``indices [B, H, W, C]``: C tokens per spatial position, each in ``[0, codebook_size)`` -- the
  sequence the stage-2 transformer models (C = 1 for VQ, the depth for RQ, the number of groups for
  PQ, the number of chunks for MoVQ);
* ``loss``: ``codebook + beta * commitment``, the last two terms of M6-Fashion Eq. (3) / MoVQ
  Eq. (3) (default ``beta = 0.25`` as in MoVQ; M6-Fashion's unweighted form is ``beta = 1``); the
  reconstruction term belongs to the autoencoder, not here;
* ``stats``: floats for logging (see :data:`STATS_KEYS`).

``decode_indices(indices)`` rebuilds the latent from tokens alone (what stage 2 hands to the
decoder). In eval mode it is bit-for-bit equal to ``forward(z).quantized`` for float32 ``z``: the
straight-through estimator is written as ``codes + (z - sg[z])`` rather than ``z + sg[codes - z]``
because ``z - z`` is exactly zero in IEEE arithmetic whereas ``z + (codes - z)`` is ``codes`` only up
to rounding. For low-precision ``z``, ``quantized`` is cast to ``z.dtype`` and equals
``decode_indices(indices).to(z.dtype)``. In training mode with EMA, k-means init or restarts the
codebook changes *after* the lookup, so the identity only holds for the codebook used in the call.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.io import AtelierInputError
from lib.quantizers.codebook import Codebook, autocast_off

__all__ = ["QuantizerOutput", "Quantizer", "STATS_KEYS"]

STATS_KEYS: tuple[str, ...] = (
    "loss_codebook",  # codebook term of Eq. (3) (0 with EMA), summed as the loss is
    "loss_commitment",  # commitment term of Eq. (3), before beta
    "quant_mse",  # mean squared error between z and its quantisation
    "usage",  # fraction of codes used in this batch (mean over codebooks)
    "usage_running",  # fraction used within the last dead_after_steps training steps (mean over codebooks)
    "perplexity",  # exp entropy of this batch's assignments (mean over codebooks)
    "perplexity_running",  # same, on the running assignment shares (mean over codebooks)
    "dead_fraction",  # fraction of dead codes before this step's restarts (mean over codebooks)
    "restarted",  # codes re-initialised this step (sum over codebooks)
)
"""Keys of :attr:`QuantizerOutput.stats`; every quantizer reports exactly these."""


@dataclass
class QuantizerOutput:
    """What every quantizer returns (see module docstring for the exact semantics)."""

    quantized: Tensor  # [B, D, H, W], straight-through: value = codes, d/dz = identity
    indices: Tensor  # [B, H, W, C] long
    loss: Tensor  # scalar: codebook + beta * commitment (M6-Fashion Eq. 3)
    stats: dict[str, float] = field(default_factory=dict)


class Quantizer(nn.Module, metaclass=abc.ABCMeta):
    """Abstract quantizer of ``z [B, D, H, W]`` into ``C`` tokens per position.

    Subclasses implement :meth:`_quantize` and :meth:`_decode` on flattened vectors ``[N, D]``
    (``N = B*H*W``); this class handles layout, float32 math, the straight-through estimator and
    statistics, so every quantizer obeys the same contract.

    Attributes:
        dim: D, channels of the latent map.
        num_channels: C, tokens per spatial position.
        codebook_size: K, entries of each codebook = the transformer's vocabulary per channel.
    """

    def __init__(self, dim: int, codebook_size: int, num_channels: int) -> None:
        super().__init__()
        self.dim = dim
        self.codebook_size = codebook_size
        self.num_channels = num_channels

    # ---------------------------------------------------------------- to implement
    @abc.abstractmethod
    def codebooks(self) -> list[Codebook]:
        """The distinct codebooks of this quantizer (a shared codebook appears once)."""

    @abc.abstractmethod
    def _quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, list[dict[str, Tensor]]]:
        """``x [N, D]`` float32 -> (codes [N, D], indices [N, C], codebook_loss, commitment_loss,
        per-codebook stats). ``codes`` must equal ``self._decode(indices)`` bit for bit."""

    @abc.abstractmethod
    def _decode(self, indices: Tensor) -> Tensor:
        """``indices [N, C]`` -> codes ``[N, D]`` float32."""

    # ---------------------------------------------------------------- shared behaviour
    @property
    def beta(self) -> float:
        return self.codebooks()[0].beta

    @property
    def codebook_storage(self) -> int:
        """Total stored code entries x dims over all distinct codebooks (equal-storage ablation)."""
        return sum(cb.codebook_size * cb.dim for cb in self.codebooks())

    @property
    def effective_codebook_size(self) -> int:
        """Number of distinct index tuples per position, ``K ** C`` (an upper bound on the
        number of distinct quantised vectors; exact for PQ and MoVQ with distinct codes)."""
        return self.codebook_size**self.num_channels

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise ``z [B, D, H, W]`` (any float dtype; math in float32 with autocast off).

        In training mode this also runs the codebooks' updates (EMA, k-means init, restarts).
        """
        self._check_latent(z)
        b, _, h, w = z.shape
        with autocast_off(z.device):
            z32 = z.float()
            x = z32.permute(0, 2, 3, 1).reshape(-1, self.dim)
            codes, indices, codebook_loss, commitment, cb_stats = self._quantize(x)
            codes_map = codes.detach().reshape(b, h, w, self.dim).permute(0, 3, 1, 2)
            quantized = codes_map + (z32 - z32.detach())
            loss = codebook_loss + self.beta * commitment
            with torch.no_grad():
                quant_mse = F.mse_loss(codes.detach(), x.detach())
        stats = _merge_stats(cb_stats, codebook_loss.detach(), commitment.detach(), quant_mse)
        return QuantizerOutput(
            quantized=quantized.to(z.dtype),
            indices=indices.reshape(b, h, w, self.num_channels),
            loss=loss,
            stats=stats,
        )

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Tokens ``[B, H, W, C]`` -> latent ``[B, D, H, W]`` float32 (eval: == forward().quantized)."""
        if indices.ndim != 4 or indices.shape[-1] != self.num_channels:
            raise AtelierInputError(
                f"{type(self).__name__}.decode_indices expects indices [B, H, W, {self.num_channels}], "
                f"got {list(indices.shape)}"
            )
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise AtelierInputError(f"indices must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise AtelierInputError(
                f"indices out of range [0, {self.codebook_size}): min {int(indices.min())}, max {int(indices.max())}"
            )
        b, h, w, c = indices.shape
        with autocast_off(indices.device):
            codes = self._decode(indices.long().reshape(-1, c))
        return codes.reshape(b, h, w, self.dim).permute(0, 3, 1, 2).contiguous()

    def _check_latent(self, z: Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise AtelierInputError(f"{type(self).__name__} expects z of shape [B, {self.dim}, H, W], got {list(z.shape)}")
        if not z.dtype.is_floating_point:
            raise AtelierInputError(f"{type(self).__name__} expects a floating-point z, got {z.dtype}")


def _merge_stats(
    per_codebook: list[dict[str, Tensor]], codebook_loss: Tensor, commitment: Tensor, quant_mse: Tensor
) -> dict[str, float]:
    """Average per-codebook stats (sum ``restarted``) and convert everything with one host sync."""
    keys = [k for k in STATS_KEYS if k not in ("loss_codebook", "loss_commitment", "quant_mse")]
    values = []
    for key in keys:
        stacked = torch.stack([s[key].float() for s in per_codebook])
        values.append(stacked.sum() if key == "restarted" else stacked.mean())
    scalars = torch.stack([codebook_loss.float(), commitment.float(), quant_mse.float(), *values]).tolist()
    return dict(zip(("loss_codebook", "loss_commitment", "quant_mse", *keys), scalars))
