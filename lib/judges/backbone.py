"""A small convolutional image encoder for 32x32 (or larger) RGB images in [-1, 1]."""

from __future__ import annotations

import torch
from torch import nn

from lib.images import to_float


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(),
    )


class ConvEncoder(nn.Module):
    """Three conv stages (32 -> 16 -> 8 px) and global average pooling to a ``feature_dim`` vector."""

    def __init__(self, width: int = 32, feature_dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            _block(3, width), nn.MaxPool2d(2),
            _block(width, 2 * width), nn.MaxPool2d(2),
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, feature_dim), nn.SiLU(),
        )
        self.feature_dim = feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def images_to_tensor(images_uint8, device: str | torch.device = "cpu") -> torch.Tensor:
    """``[N,32,32,3]`` uint8 numpy -> float ``[N,3,32,32]`` in [-1, 1] on ``device``."""
    return to_float(torch.as_tensor(images_uint8, device=device))
