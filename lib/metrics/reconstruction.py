"""Tokenizer reconstruction quality (PSNR, SSIM) and codebook usage.

MoVQ (Zheng et al., 2022) and the VQGAN family report reconstruction PSNR/SSIM of the image
tokenizer and watch codebook usage (dead codes, perplexity), because a codebook that collapses to a
few entries caps what the token generator can express.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from lib.io import AtelierInputError


def _check_pair(pred: torch.Tensor, target: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (torch.is_tensor(pred) and torch.is_tensor(target)):
        raise AtelierInputError(f"{name}: expected torch tensors")
    if pred.shape != target.shape or pred.dim() != 4:
        raise AtelierInputError(f"{name}: expected two [N, C, H, W] tensors of equal shape, got "
                                f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if not (pred.is_floating_point() and target.is_floating_point()):
        raise AtelierInputError(f"{name}: expected float images in [0, 1], got {pred.dtype} / {target.dtype}")
    lo = min(float(pred.min()), float(target.min()))
    hi = max(float(pred.max()), float(target.max()))
    if lo < -1e-3 or hi > 1 + 1e-3:
        # Catches [-1, 1] or [0, 255] inputs, which would silently shift PSNR by 6 or 48 dB.
        raise AtelierInputError(f"{name}: images must lie in [0, 1], found values in [{lo:.3g}, {hi:.3g}]")
    return pred.float(), target.float()


def psnr(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor | float:
    """Peak signal-to-noise ratio in dB, ``10 log10(1 / MSE)`` for images in [0, 1].

    Computed per image (torchmetrics ``peak_signal_noise_ratio`` with ``dim=(1, 2, 3)``) and then
    averaged, the usual convention for reconstruction tables; one pooled MSE over the whole batch
    would weight images differently. Identical images give ``inf``. ``reduction="none"`` returns
    the per-image tensor.
    """
    pred, target = _check_pair(pred, target, "psnr")
    per_image = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    if reduction == "none":
        return per_image
    return float(per_image.mean())


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Structural similarity (Wang et al., 2004) via torchmetrics: Gaussian window 11, sigma 1.5,
    k1=0.01, k2=0.03, data range 1, averaged over images. Needs H, W >= 11."""
    pred, target = _check_pair(pred, target, "ssim")
    if min(pred.shape[-2:]) < 11:
        raise AtelierInputError(f"ssim: images of {tuple(pred.shape[-2:])} are smaller than the 11x11 window")
    return float(structural_similarity_index_measure(pred, target, data_range=1.0))


def codebook_stats(indices: Any, codebook_size: int) -> dict[str, Any]:
    """Usage of a VQ codebook from the token indices it produced (any shape).

    Returns ``{"codebook_size", "num_tokens", "used_codes", "usage_fraction", "dead_fraction",
    "perplexity", "normalized_perplexity"}``. Perplexity is ``exp(H(p))`` of the empirical code
    distribution (van den Oord et al., 2017 monitor it): K for uniform use of all K codes, 1 for a
    collapsed codebook. Dead codes are codes never used in ``indices``.
    """
    idx = torch.as_tensor(indices).reshape(-1).long().cpu()
    if codebook_size < 1:
        raise AtelierInputError(f"codebook_stats: codebook_size must be >= 1, got {codebook_size}")
    if idx.numel() == 0:
        raise AtelierInputError("codebook_stats: no indices given")
    if int(idx.min()) < 0 or int(idx.max()) >= codebook_size:
        raise AtelierInputError(f"codebook_stats: indices must be in [0, {codebook_size}), "
                                f"found [{int(idx.min())}, {int(idx.max())}]")
    counts = torch.bincount(idx, minlength=codebook_size).double()
    p = counts / counts.sum()
    entropy = float(-(torch.xlogy(p, p)).sum())
    used = int((counts > 0).sum())
    perplexity = math.exp(entropy)
    return {
        "codebook_size": int(codebook_size),
        "num_tokens": int(idx.numel()),
        "used_codes": used,
        "usage_fraction": used / codebook_size,
        "dead_fraction": 1.0 - used / codebook_size,
        "perplexity": perplexity,
        "normalized_perplexity": perplexity / codebook_size,
    }
