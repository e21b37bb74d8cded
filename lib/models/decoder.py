"""Plain VQGAN-style decoder ``G`` (the conventional baseline of MoVQ Fig. 6(a), first row).

Image convention for every network in :mod:`lib.models`: **images are float tensors in
``[-1, 1]``** (``x = 2 * pixel / 255 - 1``), shape ``[B, 3, H, W]``. Decoders return *unbounded*
values (no ``tanh``) as VQGAN does, so the reconstruction loss is not flattened near the range ends;
clamp to ``[-1, 1]`` for display, PSNR and FID (``out.clamp(-1, 1)``).

:class:`Decoder` is also the trunk that :class:`~lib.models.movq_decoder.MoVQDecoder` extends: the
two differ only in what the first feature map is and which residual blocks normalise with a
conditional normalisation (hooks :meth:`Decoder._make_norm` and :meth:`Decoder.initial_features`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lib.io import AtelierInputError
from lib.models.blocks import NormFactory, ResBlock, Upsample, apply_norm, group_norm, resolve_downsample


class Decoder(nn.Module):
    """Decoder ``[B, z_dim, h, w] -> [B, out_ch, h*f, w*f]`` mirroring :class:`~lib.models.encoder.Encoder`.

    Same arguments as the encoder; each level has ``num_res_blocks + 1`` residual blocks as in
    VQGAN. ``forward(z_q)`` takes the (quantized) latent map as a plain tensor, so it plugs in behind
    any quantizer (``QuantizerOutput.quantized``). Output is unbounded; images live in ``[-1, 1]``.
    """

    def __init__(
        self,
        out_ch: int = 3,
        ch: int = 64,
        ch_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        z_dim: int = 64,
        downsample_factor: Optional[int] = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        self.out_ch, self.ch, self.ch_mult = out_ch, ch, ch_mult
        self.num_res_blocks, self.z_dim = num_res_blocks, z_dim
        downs = resolve_downsample(ch_mult, downsample_factor)
        self.downsample_factor = 2 ** sum(downs)
        self._block_index = 0  # running index of residual blocks, in decoding order, for _make_norm

        block_in = ch * ch_mult[-1]
        self.block_in = block_in
        self.conv_in = nn.Conv2d(self._initial_channels(), block_in, 3, padding=1)
        self.mid = nn.ModuleList([self._res_block(block_in, block_in, dropout) for _ in range(2)])
        # Levels are stored lowest resolution first (decoding order), unlike VQGAN's reversed list.
        self.levels = nn.ModuleList()
        for i in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i]
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.blocks.append(self._res_block(block_in, block_out, dropout))
                block_in = block_out
            # The encoder's transition i-1 -> i downsampled, so the decoder upsamples leaving level i.
            level.up = Upsample(block_in) if i > 0 and downs[i - 1] else nn.Identity()
            self.levels.append(level)
        self.norm_out = self._make_norm(None)(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    # --- hooks for subclasses -------------------------------------------------------------------

    def _initial_channels(self) -> int:
        """Channels of the map fed to ``conv_in`` (the latent itself here)."""
        return self.z_dim

    def _make_norm(self, block_index: Optional[int]) -> NormFactory:
        """Normalisation for residual block ``block_index`` (decoding order); ``None`` = output norm."""
        return group_norm

    def initial_features(self, z_q: torch.Tensor) -> torch.Tensor:
        """The decoder's first feature map before ``conv_in``: the latent itself (VQGAN)."""
        return z_q

    # --- construction / forward -----------------------------------------------------------------

    def _res_block(self, in_ch: int, out_ch: int, dropout: float) -> ResBlock:
        block = ResBlock(in_ch, out_ch, dropout=dropout, norm=self._make_norm(self._block_index))
        self._block_index += 1
        return block

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final conv: the layer VQGAN's adaptive GAN weight differentiates through."""
        return self.conv_out.weight

    def _check_latent(self, z_q: torch.Tensor) -> None:
        if z_q.dim() != 4 or z_q.shape[1] != self.z_dim:
            raise AtelierInputError(f"{type(self).__name__} expects [B, {self.z_dim}, h, w], got {tuple(z_q.shape)}")

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        self._check_latent(z_q)
        cond = z_q
        h = self.conv_in(self.initial_features(z_q))
        for block in self.mid:
            h = block(h, cond)
        for level in self.levels:
            for block in level.blocks:
                h = block(h, cond)
            h = level.up(h)
        h = F.silu(apply_norm(self.norm_out, h, cond))
        return self.conv_out(h)
