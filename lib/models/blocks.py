"""Building blocks shared by the tokenizer encoder and decoders.

The layout follows the VQGAN autoencoder (Esser et al., 2021, "Taming Transformers"), which MoVQ
(Sec. 4.1: "built upon the original VQGAN ... except ... spatially conditional normalization")
and Muse (Appendix A.2: "similar to ... Esser et al. ... we remove the non-local block") both start
from: pre-activation residual blocks of GroupNorm -> SiLU -> 3x3 conv, stride-2 conv downsampling
and nearest-neighbour + conv upsampling. Like Muse we leave out the non-local attention blocks so
every network here is fully convolutional and accepts any input size divisible by its factor.

All modules take and return plain ``[B, C, H, W]`` tensors; nothing here knows about quantizers or
devices.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from lib.io import AtelierInputError

#: A factory ``channels -> normalisation module``. A module whose ``conditional`` attribute is
#: true is called as ``norm(x, cond)``; any other as ``norm(x)``.
NormFactory = Callable[[int], nn.Module]


def num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= ``max_groups`` that divides ``channels``.

    VQGAN uses 32 groups everywhere; our laptop-scale widths (16, 24, 48 ...) are not always
    multiples of 32, and GroupNorm refuses a count that does not divide the channels.
    """
    return math.gcd(int(channels), int(max_groups)) or 1


def group_norm(channels: int, affine: bool = True, max_groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with VQGAN's eps (1e-6) and a group count that always divides ``channels``."""
    return nn.GroupNorm(num_groups(channels, max_groups), channels, eps=eps, affine=affine)


def apply_norm(norm: nn.Module, x: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
    """Call ``norm`` with the conditioning map only if it is a conditional normalisation."""
    if getattr(norm, "conditional", False):
        if cond is None:
            raise AtelierInputError(f"{type(norm).__name__} needs a conditioning map but got cond=None")
        return norm(x, cond)
    return norm(x)


class ResBlock(nn.Module):
    """Pre-activation residual block ``x + conv(act(norm(conv(act(norm(x))))))`` (VQGAN ResnetBlock).

    ``norm`` picks the normalisation: plain GroupNorm by default, or a conditional one such as
    MoVQ's :class:`~lib.models.movq_decoder.SpatialConditionalNorm`, in which case ``forward``
    must receive ``cond``. A 1x1 convolution matches channels on the skip path when they change.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: Optional[int] = None,
        dropout: float = 0.0,
        norm: Optional[NormFactory] = None,
    ) -> None:
        super().__init__()
        out_ch = in_ch if out_ch is None else out_ch
        norm = norm or group_norm
        self.in_ch, self.out_ch = in_ch, out_ch
        self.norm1 = norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = norm(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    @property
    def conditional(self) -> bool:
        return bool(getattr(self.norm1, "conditional", False) or getattr(self.norm2, "conditional", False))

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv1(F.silu(apply_norm(self.norm1, x, cond)))
        h = self.conv2(self.dropout(F.silu(apply_norm(self.norm2, h, cond))))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv.

    VQGAN pads only right/bottom by one so that a 3x3/stride-2 conv maps 2n -> n exactly; a
    symmetric pad of 1 gives the same size but shifts the sampling grid by half a pixel relative
    to the decoder's nearest-neighbour upsampling.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour then a 3x3 conv (avoids transposed-conv checkerboards)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def resolve_downsample(ch_mult: tuple[int, ...] | list[int], downsample_factor: Optional[int]) -> list[bool]:
    """Which level transitions halve the resolution, for a requested overall factor.

    With ``downsample_factor=None`` every transition between the ``len(ch_mult)`` levels halves
    the resolution (VQGAN: factor ``2 ** (len(ch_mult) - 1)``). A smaller power of two keeps the
    extra levels at the final resolution (the first ``log2(factor)`` transitions downsample), so
    width and depth can be chosen independently of the token-grid size.
    """
    n_trans = len(ch_mult) - 1
    if len(ch_mult) < 1:
        raise AtelierInputError("ch_mult must have at least one level")
    if downsample_factor is None:
        return [True] * n_trans
    f = int(downsample_factor)
    if f < 1 or f & (f - 1):
        raise AtelierInputError(f"downsample_factor must be a power of two >= 1, got {downsample_factor}")
    n_down = int(math.log2(f))
    if n_down > n_trans:
        raise AtelierInputError(
            f"downsample_factor={f} needs {n_down} level transitions but ch_mult={tuple(ch_mult)} has "
            f"only {n_trans}; add levels to ch_mult"
        )
    return [i < n_down for i in range(n_trans)]


def sinusoidal_position_encoding(
    channels: int, height: int, width: int, device=None, dtype=None, max_period: float = 10000.0
) -> torch.Tensor:
    """Fixed 2-D sine/cosine position encoding ``[1, channels, height, width]``.

    Transformer-style (Vaswani et al., 2017) frequencies, half the channels for the row and half
    for the column coordinate; MoVQ Sec. 4.4: "sine and cosine functions of different frequencies on
    different locations and channels". Channels that do not divide by 4 are filled by computing
    the next multiple of 4 and truncating.
    """
    c4 = max(1, math.ceil(channels / 4))
    freqs = torch.exp(-math.log(max_period) * torch.arange(c4, device=device, dtype=torch.float32) / c4)
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freqs[None]  # [H, c4]
    xs = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freqs[None]  # [W, c4]
    y_enc = torch.cat([ys.sin(), ys.cos()], dim=1)  # [H, 2c4]
    x_enc = torch.cat([xs.sin(), xs.cos()], dim=1)  # [W, 2c4]
    enc = torch.cat(
        [
            y_enc.t()[:, :, None].expand(-1, height, width),
            x_enc.t()[:, None, :].expand(-1, height, width),
        ],
        dim=0,
    )[:channels]
    return enc.unsqueeze(0).to(dtype=dtype or torch.get_default_dtype())


def resize_like(x: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Resize a map to ``size`` (no-op when it already has that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
