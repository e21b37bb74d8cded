"""The masking schedule gamma(r), shared by training and decoding (as google-research/maskgit's
``libml/mask_schedule.py`` is).

gamma(r) is the share of the unknown entries still masked after a fraction r of the decoding steps
(MaskGIT Sec. 3.2; Muse Sec. 2.6 trains with r = gamma(u), u ~ U(0, 1), the cosine schedule's arccos
masking-rate distribution). Each schedule takes a float or a tensor.
"""

from __future__ import annotations

import math

import torch


def cosine(r):
    """gamma(r) = cos(pi r / 2)."""
    return torch.cos(0.5 * math.pi * r) if torch.is_tensor(r) else math.cos(0.5 * math.pi * r)


def linear(r):
    """gamma(r) = 1 - r."""
    return 1.0 - r


MASK_SCHEDULES = {"cosine": cosine, "linear": linear}
