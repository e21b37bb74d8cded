"""VQGAN-style convolutional encoder ``E`` of the stage-1 tokenizer.

``z = E(x)`` in M6-Fashion Eq. (1)-(2) and MoVQ Eq. (1): an image ``x`` in ``[-1, 1]`` of shape
``[B, 3, H, W]`` becomes a continuous map ``[B, z_dim, H/f, W/f]`` that any quantizer in
:mod:`lib.quantizers` turns into tokens. Layout as VQGAN's ``Encoder`` without the non-local
blocks (Muse Appendix A.2), so it is fully convolutional.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lib.io import AtelierInputError
from lib.models.blocks import Downsample, ResBlock, group_norm, resolve_downsample


class Encoder(nn.Module):
    """Convolutional encoder ``[B, in_ch, H, W] -> [B, z_dim, H/f, W/f]``.

    Args:
        in_ch: image channels (3; Fashion-MNIST is replicated to RGB).
        ch: base width; level ``i`` has ``ch * ch_mult[i]`` channels.
        ch_mult: width multipliers per resolution level.
        num_res_blocks: residual blocks per level.
        z_dim: channels of the output map (the quantizer's ``D``).
        downsample_factor: overall spatial factor ``f``; ``None`` means ``2 ** (len(ch_mult) - 1)``
            (the default ``(1, 2, 2)`` gives ``f = 4``: 32x32 -> 8x8, 64x64 -> 16x16). A smaller
            power of two keeps the last levels at the final resolution.
        dropout: dropout inside the residual blocks.

    Inputs must have ``H`` and ``W`` divisible by ``f``.
    """

    def __init__(
        self,
        in_ch: int = 3,
        ch: int = 64,
        ch_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        z_dim: int = 64,
        downsample_factor: Optional[int] = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        self.in_ch, self.ch, self.ch_mult = in_ch, ch, ch_mult
        self.num_res_blocks, self.z_dim = num_res_blocks, z_dim
        downs = resolve_downsample(ch_mult, downsample_factor)
        self.downsample_factor = 2 ** sum(downs)

        self.conv_in = nn.Conv2d(in_ch, ch * ch_mult[0], 3, padding=1)
        self.levels = nn.ModuleList()
        block_in = ch * ch_mult[0]
        for i, mult in enumerate(ch_mult):
            block_out = ch * mult
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.blocks.append(ResBlock(block_in, block_out, dropout=dropout))
                block_in = block_out
            level.down = Downsample(block_in) if i < len(downs) and downs[i] else nn.Identity()
            self.levels.append(level)
        self.mid = nn.ModuleList([ResBlock(block_in, block_in, dropout=dropout) for _ in range(2)])
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise AtelierInputError(f"Encoder input {tuple(x.shape[-2:])} is not divisible by its factor {f}")
        h = self.conv_in(x)
        for level in self.levels:
            for block in level.blocks:
                h = block(h)
            h = level.down(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))
