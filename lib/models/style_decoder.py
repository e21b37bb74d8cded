"""M6-Fashion style-based generator on spatial style codes (StyleMapGAN-style spatial modulation).

M6-Fashion (Li et al., 2022), Sec. 3.1, "Discovering Spatial-aware Style Prior Knowledge": instead
of StyleGAN's global style vector ``z in R^d`` that modulates every layer via AdaIN, the style
code is a tensor with explicit spatial dimensions ``z in R^{h x w}`` -- here the quantized map
``z_q`` ``[B, D, h, w]`` -- and a style-based generator ``G`` reconstructs ``x_hat = G(z_q)``
(Eq. 2). Spatial style codes are what make local editing and local style mixing possible:
changing the codes at some positions should change the image there.

The generator follows StyleMapGAN (Kim et al., CVPR 2021, "Exploiting Spatial Dimensions of Latent
in GAN for Real-time Image Editing"): synthesis starts from a learned constant, a *stylemap
resizer* of (upsample +) conv layers turns the stylemap into one map per resolution, and every
layer is modulated per pixel::

    h <- gamma(s_r) * norm(h) + beta(s_r)      (gamma, beta: convs of the stylemap s_r)

i.e. AdaIN with spatially varying scale and shift. We write the scale as ``1 + gamma`` so that a
freshly initialised network is close to an unmodulated one.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lib.io import AtelierInputError
from lib.models.blocks import ResBlock, Upsample, num_groups, resize_like, resolve_downsample

NORMS = ("pixel", "instance", "group")


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector over channels (zero mean, unit variance).

    Unlike Instance/GroupNorm it pools no statistics over space, so an edit of the style code in
    one region cannot shift the normalisation of the rest of the image -- the property local
    editing (M6-Fashion Sec. 4) relies on.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return (x - mu) * torch.rsqrt(var + self.eps)


def _make_plain_norm(kind: str, channels: int) -> nn.Module:
    if kind == "pixel":
        return PixelNorm()
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, eps=1e-6)
    if kind == "group":
        return nn.GroupNorm(num_groups(channels), channels, affine=False, eps=1e-6)
    raise AtelierInputError(f"norm must be one of {NORMS}, got {kind!r}")


class SpatialModulation(nn.Module):
    """Per-pixel AdaIN: ``norm(h) * (1 + gamma(s)) + beta(s)`` with ``gamma, beta`` = 1x1 convs of ``s``.

    ``s`` is the stylemap at (or resized to) the resolution of ``h``. 1x1 convolutions keep each
    pixel's modulation a function of the style code at that pixel only.
    """

    conditional = True

    def __init__(self, channels: int, style_dim: int, norm: str = "pixel") -> None:
        super().__init__()
        self.norm = _make_plain_norm(norm, channels)
        self.gamma = nn.Conv2d(style_dim, channels, 1)
        self.beta = nn.Conv2d(style_dim, channels, 1)
        nn.init.zeros_(self.gamma.bias)
        nn.init.zeros_(self.beta.bias)

    def forward(self, h: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = resize_like(style, tuple(h.shape[-2:]), mode="nearest")
        return self.norm(h) * (1 + self.gamma(s)) + self.beta(s)


class StyleDecoder(nn.Module):
    """Style-based generator ``G(z_q)``: ``[B, z_dim, h, w] -> [B, out_ch, h*f, w*f]`` (images in ``[-1, 1]``, unbounded).

    Args:
        out_ch, ch, ch_mult, num_res_blocks, z_dim, downsample_factor, dropout: as
            :class:`~lib.models.decoder.Decoder` (levels run lowest resolution first, each with
            ``num_res_blocks + 1`` modulated residual blocks).
        style_dim: channels of the stylemaps after the per-pixel mapping network.
        mapping_layers: 1x1-conv layers of the mapping network applied to ``z_q`` at every
            position (StyleGAN's mapping MLP made per-pixel so that it stays spatial).
        start: ``"constant"`` -- a learned ``[1, C, latent_size, latent_size]`` tensor
            (StyleGAN/StyleMapGAN; bilinearly resized for other grid sizes), so all image content
            enters through modulation; ``"coarse"`` -- a 3x3 conv of ``z_q`` as the coarse map.
        resizer: ``"learned"`` -- StyleMapGAN's stylemap resizer, one (nearest x2 upsample +)
            3x3 conv + LeakyReLU per resolution; ``"nearest"`` -- the mapped code nearest-resized
            to every resolution (strictly local; no parameters).
        norm: normalisation before each modulation: ``"pixel"`` (default; no spatial pooling so
            local edits stay local), ``"instance"`` (StyleMapGAN's choice) or ``"group"``.
        latent_size: token-grid side for the learned constant.

    ``forward(z_q)`` takes the quantized map as a plain tensor (``QuantizerOutput.quantized``).
    Every residual block and the output layer are modulated by the stylemap of their resolution.
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
        style_dim: int = 64,
        mapping_layers: int = 2,
        start: str = "constant",
        resizer: str = "learned",
        norm: str = "pixel",
        latent_size: int = 8,
    ) -> None:
        super().__init__()
        if start not in ("constant", "coarse"):
            raise AtelierInputError(f"start must be 'constant' or 'coarse', got {start!r}")
        if resizer not in ("learned", "nearest"):
            raise AtelierInputError(f"resizer must be 'learned' or 'nearest', got {resizer!r}")
        _make_plain_norm(norm, 8)  # validate early with a clear message
        ch_mult = tuple(int(m) for m in ch_mult)
        self.out_ch, self.ch, self.ch_mult, self.num_res_blocks = out_ch, ch, ch_mult, num_res_blocks
        self.z_dim, self.style_dim, self.start, self.resizer_kind = z_dim, style_dim, start, resizer
        self.norm_kind, self.latent_size = norm, latent_size
        downs = resolve_downsample(ch_mult, downsample_factor)
        self.downsample_factor = 2 ** sum(downs)

        layers: list[nn.Module] = []
        in_dim = z_dim
        for _ in range(max(1, mapping_layers)):
            layers += [nn.Conv2d(in_dim, style_dim, 1), nn.LeakyReLU(0.2)]
            in_dim = style_dim
        self.mapping = nn.Sequential(*layers)

        block_in = ch * ch_mult[-1]
        if start == "constant":
            self.constant = nn.Parameter(torch.randn(1, block_in, latent_size, latent_size))
        else:
            self.conv_in = nn.Conv2d(z_dim, block_in, 3, padding=1)

        def mod(c: int) -> SpatialModulation:
            return SpatialModulation(c, style_dim, norm)

        self.levels = nn.ModuleList()
        self.style_resizers = nn.ModuleList()
        for i in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i]
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.blocks.append(ResBlock(block_in, block_out, dropout=dropout, norm=mod))
                block_in = block_out
            upsample = i > 0 and downs[i - 1]
            level.up = Upsample(block_in) if upsample else nn.Identity()
            self.levels.append(level)
            if i > 0:  # stylemap for the next level (StyleMapGAN's resizer; identity size if no upsample)
                if resizer == "learned":
                    self.style_resizers.append(
                        nn.Sequential(
                            nn.Upsample(scale_factor=2.0, mode="nearest") if upsample else nn.Identity(),
                            nn.Conv2d(style_dim, style_dim, 3, padding=1),
                            nn.LeakyReLU(0.2),
                        )
                    )
                else:
                    self.style_resizers.append(nn.Identity())
        self.norm_out = mod(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.conv_out.weight

    def stylemaps(self, z_q: torch.Tensor) -> list[torch.Tensor]:
        """One stylemap per resolution level, lowest resolution first."""
        s = self.mapping(z_q)
        maps = [s]
        for resize in self.style_resizers:
            s = resize(s)
            maps.append(s)
        return maps

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        if z_q.dim() != 4 or z_q.shape[1] != self.z_dim:
            raise AtelierInputError(f"StyleDecoder expects [B, {self.z_dim}, h, w], got {tuple(z_q.shape)}")
        b, _, h, w = z_q.shape
        styles = self.stylemaps(z_q)
        if self.start == "constant":
            x = resize_like(self.constant, (h, w), mode="bilinear").expand(b, -1, -1, -1)
        else:
            x = self.conv_in(z_q)
        for level, style in zip(self.levels, styles):
            for block in level.blocks:
                x = block(x, style)
            x = level.up(x)
        x = F.silu(self.norm_out(x, styles[-1]))
        return self.conv_out(x)
