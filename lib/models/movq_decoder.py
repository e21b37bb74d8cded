"""MoVQ decoder: spatially conditional normalisation (SCN) on the quantized map.

Zheng et al., "MoVQ: Modulating Quantized Vectors for High-Fidelity Image Generation" (NeurIPS
2022), Sec. 3.1, Eq. (4)::

    F^i = phi_gamma(z_q) * (F^{i-1} - mu(F^{i-1})) / sigma(F^{i-1}) + phi_beta(z_q)

``mu``/``sigma`` are GroupNorm statistics (following VQGAN) and ``phi_gamma``/``phi_beta`` are
learned convolutions of the quantized map, evaluated at the resolution of ``F`` so that the
scale and bias vary per pixel. Because a code index always maps to the same vector, a plain
decoder renders repeated indices as repeated patches; modulating the activations with ``z_q`` at
several resolutions lets the same index decode differently in different places (MoVQ Fig. 3).

Sec. 4.1: the layer replaces GroupNorm "in the first three blocks of the decoder".
Sec. 4.4 / Fig. 6(a) compares initial features ``F^0``: sinusoidal position encodings, learned
constants and Fourier features (computed from the discrete feature); see :class:`MoVQDecoder`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from lib.io import AtelierInputError
from lib.models.blocks import NormFactory, group_norm, num_groups, resize_like, sinusoidal_position_encoding
from lib.models.decoder import Decoder

INITIAL_FEATURES = ("quantized", "sinusoidal", "learned_constant", "fourier", "fourier_position")


class SpatialConditionalNorm(nn.Module):
    """MoVQ Eq. (4): ``GroupNorm(F; affine=False) * gamma(z_q) + beta(z_q)``.

    ``z_q`` ``[B, D, h, w]`` is upsampled with nearest neighbour to the size of ``F`` (each token
    covers its own ``f x f`` patch, as in the MoVQ release) and two 1x1 convolutions give a
    per-pixel scale and bias for every channel of ``F``.

    The scale conv's bias starts at 1 (its weights keep PyTorch's default init): a zero-mean
    random scale would gate the normalised activations towards zero and start training far from
    the plain VQGAN decoder, while a scale of ``1 + small(z_q)`` starts close to it and still lets
    ``z_q`` act from the first step. The equation is unchanged.

    Call as ``norm(F, z_q)``.
    """

    conditional = True

    def __init__(self, channels: int, cond_channels: int, max_groups: int = 32, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels, self.cond_channels = channels, cond_channels
        self.norm = nn.GroupNorm(num_groups(channels, max_groups), channels, eps=eps, affine=False)
        self.conv_gamma = nn.Conv2d(cond_channels, channels, 1)
        self.conv_beta = nn.Conv2d(cond_channels, channels, 1)
        nn.init.ones_(self.conv_gamma.bias)
        nn.init.zeros_(self.conv_beta.bias)

    def forward(self, f: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        z = resize_like(z_q, tuple(f.shape[-2:]), mode="nearest")
        return self.norm(f) * self.conv_gamma(z) + self.conv_beta(z)


class MoVQDecoder(Decoder):
    """VQGAN decoder whose first ``num_scn_blocks`` residual blocks use :class:`SpatialConditionalNorm`.

    Args (beyond :class:`~lib.models.decoder.Decoder`):
        initial_features: what the first feature map ``F^0`` is (MoVQ Fig. 6(a)):

            - ``"quantized"``: ``z_q`` itself (the conventional decoder input; also what the
              public MoVQ code used in Kandinsky 2.x does: ``conv_in(z_q)`` plus SCN everywhere).
            - ``"sinusoidal"``: fixed 2-D sine/cosine position encoding with ``z_dim`` channels.
            - ``"learned_constant"``: a learned tensor "with the same size as the embedded discrete
              feature" (``[1, z_dim, latent_size, latent_size]``; bilinearly resized for other
              grid sizes).
            - ``"fourier"`` (**default**, the best row of Fig. 6(a), rFID 2.26 vs 3.52/3.48): Fourier
              features (Tancik et al., 2020) ``[sin(2 pi B z_q), cos(2 pi B z_q)]`` with a fixed
              Gaussian ``B``. MoVQ Sec. 4.4: "each Fourier feature is calculated from the
              corresponding discrete feature, which contains the identity feature, as well as
              the high-frequency signals" -- so this variant is NOT position-only.
            - ``"fourier_position"``: random Fourier features of the normalised pixel
              coordinates, a position-only reading of "Fourier features" kept for comparison.

          With ``"sinusoidal"``, ``"learned_constant"`` and ``"fourier_position"`` the decoder
          sees ``z_q`` only through SCN.
        num_scn_blocks: how many residual blocks, in decoding order (mid blocks first), use SCN;
            MoVQ Sec. 4.1 uses 3. ``None`` puts SCN in every block and in the output norm.
        latent_size: token-grid side the learned constant is stored at.
        fourier_scale: standard deviation ``sigma`` of ``B`` (Tancik et al.'s bandwidth). Phases
            scale with the magnitude of ``z_q``, so codebooks with unit-norm codes may want a
            larger value.
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
        initial_features: str = "fourier",
        num_scn_blocks: Optional[int] = 3,
        latent_size: int = 8,
        fourier_scale: float = 1.0,
    ) -> None:
        if initial_features not in INITIAL_FEATURES:
            raise AtelierInputError(f"initial_features must be one of {INITIAL_FEATURES}, got {initial_features!r}")
        if num_scn_blocks is not None and num_scn_blocks < 1:
            raise AtelierInputError("num_scn_blocks must be >= 1 (or None for all blocks)")
        # Plain attributes read by the construction hooks, which Decoder.__init__ calls.
        self.initial_feature_kind = initial_features
        self.num_scn_blocks = num_scn_blocks
        self._cond_channels = z_dim
        super().__init__(out_ch, ch, ch_mult, num_res_blocks, z_dim, downsample_factor, dropout)
        self.latent_size = latent_size
        self.fourier_scale = fourier_scale
        if initial_features == "learned_constant":
            self.constant = nn.Parameter(torch.randn(1, z_dim, latent_size, latent_size))
        if initial_features in ("fourier", "fourier_position"):
            # A fixed (non-trained) projection, as in Tancik et al.; a buffer so it is saved with
            # the checkpoint and follows .to(device). Seeded so two decoders built with the same
            # arguments agree even before loading weights.
            gen = torch.Generator().manual_seed(0)
            in_dim = z_dim if initial_features == "fourier" else 2
            n_freq = max(1, math.ceil(z_dim / 2))
            self.register_buffer("fourier_B", torch.randn(n_freq, in_dim, generator=gen) * fourier_scale)

    def _make_norm(self, block_index: Optional[int]) -> NormFactory:
        if block_index is None:
            use_scn = self.num_scn_blocks is None
        else:
            use_scn = self.num_scn_blocks is None or block_index < self.num_scn_blocks
        if use_scn:
            cond = self._cond_channels
            return lambda c: SpatialConditionalNorm(c, cond)
        return group_norm

    @property
    def scn_layers(self) -> list[SpatialConditionalNorm]:
        return [m for m in self.modules() if isinstance(m, SpatialConditionalNorm)]

    def initial_features(self, z_q: torch.Tensor) -> torch.Tensor:
        b, d, h, w = z_q.shape
        kind = self.initial_feature_kind
        if kind == "quantized":
            return z_q
        if kind == "sinusoidal":
            pe = sinusoidal_position_encoding(d, h, w, device=z_q.device, dtype=z_q.dtype)
            return pe.expand(b, -1, -1, -1)
        if kind == "learned_constant":
            return resize_like(self.constant, (h, w), mode="bilinear").expand(b, -1, -1, -1)
        if kind == "fourier":
            proj = 2 * math.pi * torch.einsum("kd,bdhw->bkhw", self.fourier_B.to(z_q.dtype), z_q)
        else:  # fourier_position: coordinates in [-1, 1]
            ys = torch.linspace(-1, 1, h, device=z_q.device, dtype=z_q.dtype)
            xs = torch.linspace(-1, 1, w, device=z_q.device, dtype=z_q.dtype)
            grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=0)  # [2, h, w]
            proj = 2 * math.pi * torch.einsum("kd,dhw->khw", self.fourier_B.to(z_q.dtype), grid)
            proj = proj.unsqueeze(0).expand(b, -1, -1, -1)
        return torch.cat([proj.sin(), proj.cos()], dim=1)[:, :d]
