"""MiniLM embeddings of every distinct caption, computed once and stored as safetensors.

The frozen encoder is the slowest thing a training step would touch (~100 sentences/s on 2 CPU
cores), while the caption dataset has only a few thousand distinct strings per split; so stages
embed each distinct string once and look rows up by index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lib.io import AtelierInputError, load_checkpoint, save_checkpoint
from lib.text.encoder import NAME, shared_encoder, weights_sha256


def caption_index(captions_per_split: dict[str, list[list[str]]]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Distinct captions (sorted) and, per split, ``[N, captions_per_image]`` int indices into them."""
    texts = sorted({c for split in captions_per_split.values() for caps in split for c in caps})
    where = {t: i for i, t in enumerate(texts)}
    ids = {s: np.array([[where[c] for c in caps] for caps in split], dtype=np.int64)
           for s, split in captions_per_split.items()}
    return texts, ids


def pooled_table(texts: list[str], cache_path: str | Path, progress: bool = True) -> torch.Tensor:
    """``[len(texts), 384]`` pooled MiniLM embeddings, read from ``cache_path`` when it matches ``texts``."""
    cache_path = Path(cache_path)
    arch = {"name": "minilm_pooled_table", "encoder": NAME, "n": len(texts)}
    if cache_path.exists():
        try:
            tensors, meta = load_checkpoint(cache_path, expect_arch=arch)
            if meta.get("texts") == texts:
                return tensors["pooled"]
        except AtelierInputError:
            pass  # stale or corrupt cache: recompute below and overwrite atomically
    pooled = shared_encoder().encode(texts, batch_size=256, progress=progress)["pooled"]
    save_checkpoint(cache_path, {"pooled": pooled}, {"arch": arch, "texts": texts, "weights_sha256": weights_sha256()})
    return pooled
