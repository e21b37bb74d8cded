"""Colourise real Fashion-MNIST garments: colour and pattern inside the silhouette, white background.

Recipe (deterministic, no randomness here): pad 28x28 -> 32x32; the garment's coverage ``a`` is the
grey value scaled so that faint edge pixels blend with the background; the garment keeps its real
texture by multiplying the painted fabric with a shading term from the grey value; the fabric is the
named colour, with the pattern drawn in a lighter tint of the same colour (so black-on-black or
yellow-on-white never makes a pattern vanish).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from lib.config import DATA_IMAGE_SIZE
from lib.data.attributes import COLOURS, PATTERNS
from lib.io import AtelierInputError

SIZE = DATA_IMAGE_SIZE
_PAD = (SIZE - 28) // 2


def pattern_masks(size: int = SIZE, scale: int = 1) -> np.ndarray:
    """Boolean ``[P, size * scale, size * scale]``: where each pattern draws its secondary tint (plain
    draws none). ``scale`` > 1 draws the same pattern geometry at ``scale`` pixels per base pixel."""
    yy, xx = np.mgrid[0:size * scale, 0:size * scale] // scale
    masks = np.zeros((len(PATTERNS), size * scale, size * scale), dtype=bool)
    for p, (name, _, _) in enumerate(PATTERNS):
        if name == "striped":
            masks[p] = (yy % 4) < 2
        elif name == "dotted":
            masks[p] = np.isin(yy % 5, (2, 3)) & np.isin(xx % 5, (2, 3))   # 2x2 dots every 5 px
        elif name == "checked":
            masks[p] = ((yy // 4) + (xx // 4)) % 2 == 0
        elif name != "plain":
            raise AtelierInputError(f"no drawing rule for pattern {name!r}")
    return masks


def _upsample_grey(grey: np.ndarray, scale: int) -> np.ndarray:
    """``[N, 28, 28]`` float in [0, 1] -> ``[N, 28 * scale, 28 * scale]`` (bilinear, PIL)."""
    side = 28 * scale
    return np.stack([np.asarray(Image.fromarray(g, mode="F").resize((side, side), Image.BILINEAR))
                     for g in grey]).clip(0.0, 1.0)


def colourise(grey: np.ndarray, colour: np.ndarray, pattern: np.ndarray, scale: int = 1) -> np.ndarray:
    """Render ``[N, 28, 28]`` uint8 garments as ``[N, 32 * scale, 32 * scale, 3]`` uint8 RGB images.

    ``colour`` and ``pattern`` are ``[N]`` indices into :data:`COLOURS` / :data:`PATTERNS`.
    ``scale`` > 1 renders the same garment at a higher resolution (the grey silhouette upsampled
    bilinearly, the pattern drawn crisply at the finer pixel grid): the high-resolution images of
    the Muse super-resolution stage (Sec. 2.4), whose ``scale`` x ``scale`` average matches the
    ``scale = 1`` render up to the silhouette's interpolation.
    """
    grey = np.asarray(grey)
    if grey.ndim != 3 or grey.shape[1:] != (28, 28):
        raise AtelierInputError(f"grey images must be [N, 28, 28], got {grey.shape}")
    if int(scale) != scale or scale < 1:
        raise AtelierInputError(f"scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    n, size, pad = grey.shape[0], SIZE * scale, _PAD * scale
    g = np.zeros((n, size, size), dtype=np.float32)
    g0 = grey.astype(np.float32) / 255.0
    g[:, pad:pad + 28 * scale, pad:pad + 28 * scale] = g0 if scale == 1 else _upsample_grey(g0, scale)
    coverage = np.clip(g * 4.0, 0.0, 1.0)[..., None]           # faint edges blend into white
    base = np.array([rgb for _, rgb in COLOURS], dtype=np.float32)[colour] / 255.0   # [N,3]
    tint = base + 0.55 * (1.0 - base)                                                 # lighter tint
    tint = np.where(base.mean(1, keepdims=True) > 0.75, base * 0.5, tint)             # dark tint on light colours
    on = pattern_masks(SIZE, scale)[pattern][..., None]          # [N,S,S,1]
    fabric = np.where(on, tint[:, None, None, :], base[:, None, None, :])
    # The real grey texture shades the fabric (relative to the garment's brightest pixel); the 0.55
    # floor keeps folds visible without turning every colour into black.
    brightness = g / g.max(axis=(1, 2), keepdims=True).clip(1e-6)
    painted = fabric * (0.55 + 0.45 * brightness[..., None])
    out = coverage * painted + (1.0 - coverage) * 1.0
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
