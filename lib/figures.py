"""Figures: image grids and atomic saving, shared by every notebook."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import atomic_path
from .paths import artifacts_dir


def to_uint8_hwc(images) -> np.ndarray:
    """``[N,3,H,W]`` float in [-1,1] (torch or numpy) or ``[N,H,W,3]`` uint8 -> ``[N,H,W,3]`` uint8."""
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.dtype == np.uint8:
        return arr
    arr = np.transpose(arr, (0, 2, 3, 1))
    return np.clip(np.rint((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images, ncol: int = 8, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile images into one ``[H', W', 3]`` uint8 array with ``pad`` pixels of ``fill`` between."""
    imgs = to_uint8_hwc(images)
    n, h, w, c = imgs.shape
    nrow = -(-n // ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), fill, dtype=np.uint8)
    for i, img in enumerate(imgs):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = img
    return grid


def save_figure(fig, stage: str, name: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure as ``artifacts/figures/<stage>/<name>.png``, atomically."""
    target = artifacts_dir(f"figures/{stage}") / f"{name}.png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return target
