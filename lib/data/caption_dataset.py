"""Reading the built caption dataset (see :mod:`lib.data.build`) for training and evaluation."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from lib.data.attributes import CATEGORY_NAMES, COLOUR_NAMES, PATTERN_NAMES
from lib.data.fashioniq import MAX_CAPTION_CHARS
from lib.images import to_float
from lib.io import AtelierInputError, read_json

FIELDS = ("images", "category", "colour", "pattern", "heldout", "source_index", "names")
#: attribute field -> number of classes (values must lie in [0, n))
CLASS_FIELDS = {"category": len(CATEGORY_NAMES), "colour": len(COLOUR_NAMES), "pattern": len(PATTERN_NAMES)}


def load_split(root: str | Path, split: str) -> dict[str, np.ndarray]:
    """Arrays of one split, validated: images ``[N,32,32,3]`` uint8 and aligned attribute arrays."""
    path = Path(root) / f"{split}.npz"
    if not path.is_file():
        raise AtelierInputError(f"{path}: caption dataset split not found (run the 'data' stage: reproduce/run)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise AtelierInputError(f"{path}: corrupt or truncated npz ({err})") from None
    missing = [f for f in FIELDS if f not in arrays]
    if missing:
        raise AtelierInputError(f"{path}: missing field(s) {missing}")
    images = arrays["images"]
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise AtelierInputError(f"{path}: field 'images' must be [N,32,32,3] uint8, got {images.shape} {images.dtype}")
    for f in FIELDS[1:]:
        if arrays[f].ndim != 1:
            raise AtelierInputError(f"{path}: field '{f}' must be one value per image, got shape {arrays[f].shape}")
        if arrays[f].shape[0] != images.shape[0]:
            raise AtelierInputError(f"{path}: field '{f}' has {arrays[f].shape[0]} rows, 'images' has {images.shape[0]}")
    for f in (*CLASS_FIELDS, "source_index"):
        if arrays[f].dtype.kind not in "iu":
            raise AtelierInputError(f"{path}: field '{f}' must hold integers, got {arrays[f].dtype}")
    for f, n in CLASS_FIELDS.items():
        bad = (arrays[f] < 0) | (arrays[f] >= n)
        if bad.any():
            raise AtelierInputError(f"{path}: field '{f}' has value {arrays[f][bad][0]} at row {int(np.argmax(bad))}; "
                                    f"values must be in [0, {n})")
    if arrays["heldout"].dtype != np.bool_:
        raise AtelierInputError(f"{path}: field 'heldout' must be boolean, got {arrays['heldout'].dtype}")
    if arrays["names"].dtype.kind not in "US":
        raise AtelierInputError(f"{path}: field 'names' must hold strings, got {arrays['names'].dtype}")
    return arrays


def _check_captions(path: Path, captions, split: str, n: int) -> list[list[str]]:
    """``captions.json``'s rows of ``split``: one non-empty list of usable captions per image."""
    if not isinstance(captions, dict) or not isinstance(captions.get(split), list) or len(captions[split]) != n:
        raise AtelierInputError(f"{path}: split '{split}' missing or misaligned with {split}.npz")
    rows = captions[split]
    for i, caps in enumerate(rows):
        if not isinstance(caps, list) or not caps:
            raise AtelierInputError(f"{path}: {split}[{i}] must be a non-empty list of captions, got {caps!r:.80}")
        for j, cap in enumerate(caps):
            if not isinstance(cap, str) or not cap.strip():
                raise AtelierInputError(f"{path}: {split}[{i}][{j}] is empty or not a string")
            if len(cap) > MAX_CAPTION_CHARS:
                raise AtelierInputError(
                    f"{path}: {split}[{i}][{j}] is {len(cap)} characters long (limit {MAX_CAPTION_CHARS})")
    return rows


def _check_meta(path: Path, meta) -> dict:
    """``meta.json`` must describe a dataset built with this code's attribute vocabulary (the
    integer labels in the npz files index it)."""
    vocab = meta.get("vocab") if isinstance(meta, dict) else None
    expected = {"category": list(CATEGORY_NAMES), "colour": list(COLOUR_NAMES), "pattern": list(PATTERN_NAMES)}
    if not isinstance(vocab, dict) or any(vocab.get(k) != v for k, v in expected.items()):
        raise AtelierInputError(f"{path}: field 'vocab' missing or not this code's attribute vocabulary "
                                f"(rebuild the dataset: reproduce/run)")
    return meta


class CaptionDataset:
    """A torch-style dataset: ``image`` float ``[3,32,32]`` in [-1, 1], one caption, attributes.

    ``caption_index=None`` draws a caption per access from a generator seeded by ``seed`` and the
    item index (reproducible); an int always returns that caption.
    """

    def __init__(self, root: str | Path, split: str, caption_index: int | None = None, seed: int = 0):
        self.root, self.split = Path(root), split
        self.arrays = load_split(root, split)
        caps_path = self.root / "captions.json"
        self.captions = _check_captions(caps_path, read_json(caps_path), split, len(self.arrays["images"]))
        self.caption_index, self.seed = caption_index, seed
        self.meta = _check_meta(self.root / "meta.json", read_json(self.root / "meta.json"))

    def __len__(self) -> int:
        return len(self.arrays["images"])

    def __getitem__(self, i: int) -> dict:
        caps = self.captions[i]
        if self.caption_index is None:
            j = int(np.random.default_rng((self.seed, i)).integers(len(caps)))
        else:
            j = self.caption_index
        image = to_float(self.arrays["images"][i:i + 1])[0]
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
        return to_float(self.arrays["images"])
