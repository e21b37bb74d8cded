"""Frozen image features for the Q-Former, computed once per split and cached (fp16 safetensors).

UniFashion (like BLIP-2) feeds the Q-Former's cross-attention with the patch features of a frozen
image encoder (EVA-ViT-g). Our stand-in (no ViT/CLIP weights ship offline, see
:mod:`lib.models.backbones`) is the real ImageNet EfficientNet-Lite0: the 32x32 images are
upsampled to ``size`` x ``size`` (the network is meaningless at 32 px: stage 4 would be 2x2) and the
feature MAP of block stage ``out_index`` is flattened into ``S = (size / stride)^2`` tokens of
``C_f`` channels. Default: ``size=96``, stage 4 (112 channels, stride 16) -> 36 tokens ``[N, 36, 112]``.

``source="tokenizer"`` uses instead a trained :class:`lib.models.tokenizer.Tokenizer`'s encoder
output before quantisation, ``z [B, z_dim, 8, 8]`` -> ``[B, 64, z_dim]`` (the image representation
the generative side of the project shares).

Speed (measured on the 2-core build machine, one thread, ``channels_last``, batch 32; the range
spans a quiet to a fully loaded machine): size 64 ~500-800 images/s, size 96 ~280-450, size 128
~100-250. ``channels_last`` is about 2x faster than the default layout here. The default profile's
~70k images at size 96 take about 2.5-4 minutes on one thread; :func:`feature_throughput` measures
it. A linear probe on mean-pooled features (1500 train / 600 val images) preferred stage 4 at 96 px
(category / colour / pattern accuracy 0.77 / 0.995 / 0.95) to stage 4 at 64 px (0.76 / 0.995 /
0.92) and stage 6 at 96 px (0.74 / 0.96 / 0.91). Storage: 36 x 112 fp16 = 8 KB per image.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lib.images import to_float
from lib.io import AtelierInputError, load_checkpoint, save_checkpoint
from lib.models.backbones import STAGES, WEIGHTS_FILE, efficientnet_lite0_features

SOURCES = ("efficientnet", "tokenizer")
DEFAULT_SIZE = 96
DEFAULT_OUT_INDEX = 4


def images_to_float(images: Any, device: Optional[torch.device | str] = None) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` (numpy or torch, the dataset's layout) -> float ``[N, 3, H, W]`` in
    [-1, 1]; float ``[N, 3, H, W]`` inputs (already in [-1, 1]) pass through."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else torch.as_tensor(images)
    if x.dtype == torch.uint8:
        if x.dim() != 4 or x.shape[-1] != 3:
            raise AtelierInputError(f"uint8 images must be [N, H, W, 3], got shape {tuple(x.shape)}")
        x = to_float(x)
    elif x.is_floating_point():
        if x.dim() != 4 or x.shape[1] != 3:
            raise AtelierInputError(f"float images must be [N, 3, H, W] in [-1, 1], got shape {tuple(x.shape)}")
        x = x.float()
    else:
        raise AtelierInputError(f"images must be uint8 [N, H, W, 3] or float [N, 3, H, W], got dtype {x.dtype}")
    return x if device is None else x.to(device)


class EfficientNetTokens(nn.Module):
    """Frozen EfficientNet-Lite0: images ``[B, 3, h, w]`` in [-1, 1] -> tokens ``[B, S, C_f]``."""

    def __init__(self, size: int = DEFAULT_SIZE, out_index: int = DEFAULT_OUT_INDEX, pretrained: bool = True,
                 weights_path: Optional[str | Path] = None):
        super().__init__()
        if out_index not in STAGES or out_index == "head":
            raise AtelierInputError(f"out_index must be a block stage in {[k for k in STAGES if k != 'head']}, "
                                    f"got {out_index!r}")
        stride = STAGES[out_index][1]
        if size < stride or size % stride:
            raise AtelierInputError(f"size must be a positive multiple of stage {out_index}'s stride {stride}, "
                                    f"got {size}")
        self.size, self.out_index, self.pretrained = int(size), out_index, pretrained
        self.net = efficientnet_lite0_features(pretrained=pretrained, out_indices=(out_index,),
                                               weights_path=weights_path)
        self.net = self.net.to(memory_format=torch.channels_last)  # ~2x faster on CPU, same numerics
        self.channels = STAGES[out_index][0]
        self.num_tokens = (size // stride) ** 2

    @property
    def arch(self) -> dict:
        return {"source": "efficientnet", "network": "efficientnet_lite0", "size": self.size,
                "out_index": self.out_index, "weights": WEIGHTS_FILE if self.pretrained else "random",
                "channels": self.channels, "num_tokens": self.num_tokens}

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        fmap = self.net(x.contiguous(memory_format=torch.channels_last))[0]
        return fmap.flatten(2).transpose(1, 2).contiguous()


class TokenizerTokens(nn.Module):
    """A tokenizer's encoder output before quantisation, ``z [B, z_dim, h, w]`` -> ``[B, h*w, z_dim]``."""

    def __init__(self, tokenizer: nn.Module):
        super().__init__()
        if not hasattr(tokenizer, "encoder") or not hasattr(tokenizer, "arch"):
            raise AtelierInputError("source='tokenizer' needs a lib.models.tokenizer.Tokenizer "
                                    "(with .encoder and .arch)")
        self.tokenizer = tokenizer.eval()
        h, w, _ = tokenizer.token_shape
        self.channels, self.num_tokens = int(tokenizer.config["z_dim"]), h * w

    @property
    def arch(self) -> dict:
        digest = hashlib.sha256()
        for name, t in sorted(self.tokenizer.state_dict().items()):
            digest.update(name.encode())
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        return {"source": "tokenizer", "tokenizer": self.tokenizer.arch, "weights_sha256": digest.hexdigest(),
                "channels": self.channels, "num_tokens": self.num_tokens}

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.tokenizer.eval()
        return self.tokenizer.encoder(images).flatten(2).transpose(1, 2).contiguous()


def feature_extractor(source: str = "efficientnet", *, size: int = DEFAULT_SIZE, out_index: int = DEFAULT_OUT_INDEX,
                      tokenizer: Optional[nn.Module] = None, pretrained: bool = True) -> nn.Module:
    """The frozen extractor for ``source`` (``"efficientnet"`` or ``"tokenizer"``)."""
    if source not in SOURCES:
        raise AtelierInputError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "tokenizer":
        if tokenizer is None:
            raise AtelierInputError("source='tokenizer' needs tokenizer=<a trained lib.models.tokenizer.Tokenizer>")
        return TokenizerTokens(tokenizer)
    return EfficientNetTokens(size, out_index, pretrained)


@torch.no_grad()
def extract_features(images: Any, extractor: nn.Module, batch_size: int = 32, dtype: torch.dtype = torch.float16,
                     device: Optional[torch.device | str] = None, progress: bool = False) -> torch.Tensor:
    """Tokens ``[N, S, C_f]`` (CPU, ``dtype``) of all ``images`` (see :func:`images_to_float`), in
    batches on ``device`` (default: where the extractor's weights are)."""
    if batch_size < 1:
        raise AtelierInputError(f"batch_size must be >= 1, got {batch_size}")
    device = device or next(extractor.parameters()).device
    extractor = extractor.to(device).eval()
    n = len(images)
    if n == 0:
        raise AtelierInputError("no images to extract features from")
    out = None
    for start in tqdm(range(0, n, batch_size), desc="image features", disable=not progress, mininterval=2):
        feats = extractor(images_to_float(images[start:start + batch_size], device)).to("cpu", dtype)
        if out is None:
            out = torch.empty((n,) + tuple(feats.shape[1:]), dtype=dtype)
        out[start:start + len(feats)] = feats
    return out


def images_sha256(images: Any) -> str:
    arr = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    digest = hashlib.sha256(str((arr.shape, str(arr.dtype))).encode())
    digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def cached_features(images: Any, cache_path: str | Path, extractor: nn.Module, batch_size: int = 32,
                    device: Optional[torch.device | str] = None, progress: bool = True) -> torch.Tensor:
    """:func:`extract_features` computed once and stored at ``cache_path`` (fp16 safetensors via
    :func:`lib.io.save_checkpoint`); later calls with the same images and extractor read the file.
    A cache written for other images or another extractor is recomputed and overwritten."""
    cache_path = Path(cache_path)
    arch = {"name": "qformer_image_features", "n": len(images), "images_sha256": images_sha256(images),
            **extractor.arch}
    if cache_path.exists():
        try:
            return load_checkpoint(cache_path, expect_arch=arch)[0]["features"]
        except AtelierInputError:
            pass  # stale or corrupt: recompute below, replace atomically
    feats = extract_features(images, extractor, batch_size, torch.float16, device, progress)
    save_checkpoint(cache_path, {"features": feats}, {"arch": arch})
    return feats


def feature_throughput(size: int = DEFAULT_SIZE, out_index: int = DEFAULT_OUT_INDEX, num_images: int = 256,
                       batch_size: int = 32, threads: Optional[int] = 1, pretrained: bool = True) -> dict:
    """Measured EfficientNet feature extraction speed on random 32x32 images: ``{"images_per_s", ...}``.

    ``threads`` sets ``torch.set_num_threads`` for the measurement (restored afterwards)."""
    extractor = EfficientNetTokens(size, out_index, pretrained)
    images = torch.randint(0, 256, (num_images, 32, 32, 3), dtype=torch.uint8)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        extract_features(images[:batch_size], extractor, batch_size)  # warm-up (allocations, kernels)
        start = time.perf_counter()
        extract_features(images, extractor, batch_size)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return {"images_per_s": num_images / seconds, "seconds": seconds, "num_images": num_images, "size": size,
            "out_index": out_index, "batch_size": batch_size, "threads": threads,
            "tokens": [extractor.num_tokens, extractor.channels]}
