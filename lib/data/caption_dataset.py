"""Reading the built caption dataset (see :mod:`lib.data.build`) for training and evaluation."""

from __future__ import annotations

from pathlib import Path

import zipfile

import numpy as np

from ..io import AtelierInputError, read_json

FIELDS = ("images", "category", "colour", "pattern", "heldout", "source_index", "names")


def load_split(root: str | Path, split: str) -> dict[str, np.ndarray]:
    """Arrays of one split, validated: images ``[N,32,32,3]`` uint8 and aligned attribute arrays."""
    path = Path(root) / f"{split}.npz"
    if not path.is_file():
        raise AtelierInputError(f"{path}: caption dataset split not found (run the 'data' stage: reproduce/run)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise AtelierInputError(f"{path}: corrupt or truncated npz ({err})") from None
    missing = [f for f in FIELDS if f not in arrays]
    if missing:
        raise AtelierInputError(f"{path}: missing field(s) {missing}")
    images = arrays["images"]
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise AtelierInputError(f"{path}: field 'images' must be [N,32,32,3] uint8, got {images.shape} {images.dtype}")
    for f in FIELDS[1:]:
        if arrays[f].shape[0] != images.shape[0]:
            raise AtelierInputError(f"{path}: field '{f}' has {arrays[f].shape[0]} rows, 'images' has {images.shape[0]}")
    return arrays


class CaptionDataset:
    """A torch-style dataset: ``image`` float ``[3,32,32]`` in [-1, 1], one caption, attributes.

    ``caption_index=None`` draws a caption per access from a generator seeded by ``seed`` and the
    item index (reproducible); an int always returns that caption.
    """

    def __init__(self, root: str | Path, split: str, caption_index: int | None = None, seed: int = 0):
        self.root, self.split = Path(root), split
        self.arrays = load_split(root, split)
        caps = read_json(self.root / "captions.json")
        if split not in caps or len(caps[split]) != len(self.arrays["images"]):
            raise AtelierInputError(f"{self.root / 'captions.json'}: split '{split}' missing or misaligned with {split}.npz")
        self.captions = caps[split]
        self.caption_index, self.seed = caption_index, seed
        self.meta = read_json(self.root / "meta.json")

    def __len__(self) -> int:
        return len(self.arrays["images"])

    def __getitem__(self, i: int) -> dict:
        import torch

        caps = self.captions[i]
        if self.caption_index is None:
            j = int(np.random.default_rng((self.seed, i)).integers(len(caps)))
        else:
            j = self.caption_index
        image = torch.from_numpy(self.arrays["images"][i]).permute(2, 0, 1).float() / 127.5 - 1.0
        return {
            "image": image,
            "caption": caps[j],
            "category": int(self.arrays["category"][i]),
            "colour": int(self.arrays["colour"][i]),
            "pattern": int(self.arrays["pattern"][i]),
            "heldout": bool(self.arrays["heldout"][i]),
            "index": i,
        }

    def images_tensor(self):
        """All images as float ``[N,3,32,32]`` in [-1, 1] (for fast in-memory training)."""
        import torch

        return torch.from_numpy(self.arrays["images"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
