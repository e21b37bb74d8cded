"""The one conversion between stored images and model inputs.

Stored images (datasets, samples, PNGs) are ``uint8 [N, H, W, 3]``; every tokenizer and judge takes
``float [N, 3, H, W]`` in [-1, 1]. Rounding is half-to-even in both directions of every helper.
"""

from __future__ import annotations

import numpy as np
import torch


def to_uint8_hwc(images) -> np.ndarray:
    """``[N,3,H,W]`` float in [-1,1] (torch or numpy) or ``[N,H,W,3]`` uint8 -> ``[N,H,W,3]`` uint8."""
    arr = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.dtype == np.uint8:
        return arr
    arr = np.transpose(arr, (0, 2, 3, 1))
    return np.clip(np.rint((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_float(images_u8) -> torch.Tensor:
    """``[N,H,W,3]`` uint8 (numpy or torch) -> float ``[N,3,H,W]`` in [-1, 1] (every model's input)."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)) if isinstance(images_u8, np.ndarray) else images_u8
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8_chw(images):
    """Float ``[N,3,H,W]`` in [-1, 1] -> uint8 ``[N,3,H,W]`` (what an image file would hold)."""
    return torch.round((images.clamp(-1, 1) + 1.0) * 127.5).to(torch.uint8)
