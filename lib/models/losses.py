"""Stage-1 tokenizer losses: reconstruction, perceptual, PatchGAN hinge and VQGAN's adaptive weight.

The stage-1 objective of VQGAN (Esser et al., 2021, Eq. 3-7), which MoVQ (Sec. 4.1: "hyper-parameters
following the baseline VQGAN") and Muse (Appendix A.2) train with, is::

    L = L_rec(x, x_hat) + w_p * L_perc(x, x_hat) + L_quant + lambda * disc_factor(step) * L_G(D(x_hat))
    lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_G|| + 1e-4)           (VQGAN Eq. 7)

with ``G_L`` the decoder's last layer, and the discriminator trained with the hinge loss. The
quantizer's own terms (codebook/commitment, M6-Fashion Eq. 3, MoVQ Eq. 3) come from
:mod:`lib.quantizers` (``QuantizerOutput.loss``); this module supplies the rest.

Images are in ``[-1, 1]`` throughout.

**LPIPS is unavailable offline**: it needs VGG or AlexNet ImageNet weights, and none install from a
package registry here. :class:`PerceptualLoss` stands in for it with the same recipe (unit-normalised
deep features, squared differences averaged over space and summed over channels) on the real
ImageNet EfficientNet-Lite0 weights from :mod:`lib.models.backbones`. Its values are therefore
*not* LPIPS numbers and must not be reported as such.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lib.io import AtelierInputError
from lib.models.backbones import EfficientNetLite0Features, efficientnet_lite0_features
from lib.models.blocks import num_groups

# --- reconstruction ------------------------------------------------------------------------------


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean pixel loss: ``"l1"`` (VQGAN) or ``"l2"`` (the ``||x - x_hat||^2`` of M6-Fashion Eq. 3 / MoVQ Eq. 3)."""
    if kind == "l1":
        return (x_hat - x).abs().mean()
    if kind == "l2":
        return (x_hat - x).pow(2).mean()
    raise AtelierInputError(f"kind must be 'l1' or 'l2', got {kind!r}")


def psnr(x_hat: torch.Tensor, x: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB for images in ``[-1, 1]`` (``data_range=2``); ``x_hat`` is clamped first."""
    mse = (x_hat.clamp(-1, 1) - x).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


# --- perceptual ----------------------------------------------------------------------------------


def _unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # LPIPS normalises each pixel's feature vector so that layers with large activations do not
    # dominate and the distance compares feature directions, not magnitudes.
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on frozen ImageNet EfficientNet-Lite0 features (a stand-in for LPIPS).

    ``d(x, y) = mean_l  sum_c mean_{h,w} (n(f_l(x)) - n(f_l(y)))^2`` with ``n`` the per-pixel unit
    normalisation and ``f_l`` the feature maps of stages ``layers`` (default: strides 4, 8, 16, 32).
    It is LPIPS's formula with uniform layer/channel weights, since the learned LPIPS calibration
    needs VGG/AlexNet weights that are not available offline.

    Args:
        layers: EfficientNet stage indices (see :data:`lib.models.backbones.STAGES`).
        resize: if set, both images are bilinearly resized to ``resize x resize`` first. ImageNet
            features are tuned to objects tens of pixels wide, and at 32x32 the stride-32 stage
            is a 1x1 map; ``resize=64`` gives the deeper stages more room but costs ~3x (batch 32
            forward+backward on 2 CPU cores: ~1 s native vs ~3 s at 64), so the default is off.
        pretrained: load the real weights (``False`` only for tests of the plumbing).
        reduction: ``"mean"`` over the batch, or ``"none"`` for a ``[B]`` tensor.
        backbone: reuse an existing :class:`~lib.models.backbones.EfficientNetLite0Features`.

    Inputs are images in ``[-1, 1]``; the backbone maps them to ImageNet normalisation. The backbone
    is frozen and stays in eval mode, but gradients flow to ``x_hat``.
    """

    def __init__(
        self,
        layers: Sequence[int] = (1, 2, 4, 6),
        resize: Optional[int] = None,
        pretrained: bool = True,
        reduction: str = "mean",
        backbone: Optional[EfficientNetLite0Features] = None,
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "none"):
            raise AtelierInputError("reduction must be 'mean' or 'none'")
        self.backbone = backbone or efficientnet_lite0_features(pretrained=pretrained, out_indices=tuple(layers))
        if tuple(self.backbone.out_indices) != tuple(layers):
            raise AtelierInputError(f"backbone returns stages {self.backbone.out_indices}, loss wants {tuple(layers)}")
        self.resize, self.reduction = resize, reduction

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grey images: replicate, the backbone is RGB
            x = x.expand(-1, 3, -1, -1)
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x_hat.shape != x.shape:
            raise AtelierInputError(f"shape mismatch {tuple(x_hat.shape)} vs {tuple(x.shape)}")
        # One backbone pass for both images halves the Python/kernel overhead on CPU.
        feats = self.backbone(torch.cat([self._prep(x_hat), self._prep(x)], dim=0))
        b = x.shape[0]
        total = x.new_zeros(b)
        for f in feats:
            fa, fb = _unit_normalize(f[:b]), _unit_normalize(f[b:])
            total = total + (fa - fb).pow(2).sum(dim=1).mean(dim=(1, 2))
        total = total / len(feats)
        return total.mean() if self.reduction == "mean" else total


# --- adversarial ---------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al., 2017) as used by VQGAN's ``NLayerDiscriminator``.

    Stride-2 4x4 convs with LeakyReLU(0.2), a stride-1 conv, and a 1-channel logit map; each logit
    judges one overlapping patch (receptive field 34 px for ``n_layers=2``, 70 px for 3), which at
    32x32 is close to the whole image. ``norm="batch"`` follows VQGAN; ``"group"`` avoids BatchNorm's
    dependence on batch composition when real and fake batches are passed separately.
    Weights initialised N(0, 0.02) as in VQGAN. Input ``[B, in_ch, H, W]`` in ``[-1, 1]``.
    """

    def __init__(self, in_ch: int = 3, ndf: int = 32, n_layers: int = 2, norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "group", "none"):
            raise AtelierInputError("norm must be 'batch', 'group' or 'none'")

        def norm_layer(c: int) -> nn.Module:
            if norm == "batch":
                return nn.BatchNorm2d(c)
            if norm == "group":
                return nn.GroupNorm(num_groups(c), c)
            return nn.Identity()

        use_bias = norm == "none"
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=use_bias), norm_layer(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=use_bias), norm_layer(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*layers)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])`` (VQGAN)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: ``-E[D(x_hat)]`` (VQGAN's ``g_loss``)."""
    return -logits_fake.mean()


def adaptive_weight(
    nll_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    disc_weight: float = 1.0,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VQGAN Eq. 7: ``lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_G|| + eps)``, clamped to ``[0, max_weight]``.

    Balances the GAN gradient against the reconstruction (+ perceptual) gradient at the decoder's
    last layer (``decoder.last_layer``), so neither drowns the other whatever their raw scales.
    The result is detached (a weight, not a path for gradients) and multiplied by ``disc_weight``.
    Both losses must still have their graphs (the grads are taken with ``retain_graph=True``).
    Where no graph exists (``torch.no_grad``, e.g. validation) the GAN term is not trained, and
    0 is returned, as VQGAN does.
    """
    if not (torch.is_grad_enabled() and nll_loss.requires_grad and g_loss.requires_grad):
        return torch.zeros((), device=last_layer.device)
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (g_grad.norm() + eps)
    return torch.clamp(weight, 0.0, max_weight).detach() * disc_weight


def disc_factor(step: int, start_step: int, factor: float = 1.0) -> float:
    """GAN warm-up switch (VQGAN ``adopt_weight``): ``0`` before ``start_step``, ``factor`` from then on.

    VQGAN starts the adversarial term only once reconstructions are reasonable; a discriminator
    that wins against blurry early reconstructions gives the decoder useless gradients.
    """
    return float(factor) if step >= start_step else 0.0
