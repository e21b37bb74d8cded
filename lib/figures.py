"""Figures: image grids and atomic saving, shared by every notebook."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lib.images import to_uint8_hwc
from lib.io import atomic_path
from lib.store import artifacts_dir


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


def labelled_image_rows(rows, title: str | None = None, scale: float = 0.55):
    """One matplotlib figure with one image row per ``(label, images)`` pair, the label on the left.

    ``images`` as accepted by :func:`to_uint8_hwc`; every row should hold the same number of images
    (e.g. originals, then each tokenizer's reconstructions of them). Returns the figure.
    """
    rows = [(label, to_uint8_hwc(images)) for label, images in rows]
    ncol = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(scale * ncol + 1.6, scale * len(rows) + (0.4 if title else 0.1)),
                             squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows):
        ax.imshow(image_grid(images, ncol=ncol, pad=1), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(h_pad=0.1)
    return fig
