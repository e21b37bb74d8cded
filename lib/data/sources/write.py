"""Writing a real source in the caption dataset's on-disk format (see :mod:`lib.data.build`).

What every real source shares: fitting images to ``image_size`` (white padding or a centre crop,
then an antialiased bicubic resize), cleaning captions into what the caption reader accepts,
seeded split and size limits, and the writer of ``{split}.npz`` / ``captions.json`` /
``meta.json`` / ``fashioniq/``. Attribute labels a source lacks are ``-1``; ``meta.json``'s
``capabilities`` says so (:func:`lib.data.sources.capabilities`).
"""

from __future__ import annotations

import html
import io
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lib.data.attributes import CATEGORY_NAMES, COLOUR_NAMES, PATTERN_NAMES
from lib.data.fashioniq import MAX_CAPTION_CHARS
from lib.io import AtelierInputError, atomic_path, atomic_write_bytes, atomic_write_json

SPLITS = ("train", "val", "test")
ATTRIBUTES = ("category", "colour", "pattern")
VOCAB = {"category": list(CATEGORY_NAMES), "colour": list(COLOUR_NAMES), "pattern": list(PATTERN_NAMES)}
#: background of padded product photos (they are shot on white)
PAD_COLOUR = (255, 255, 255)


def fit_image(img: Image.Image, size: int, fit: str) -> np.ndarray:
    """``img`` as ``[size, size, 3]`` uint8: ``pad`` keeps the whole garment (white borders to a
    square), ``crop`` keeps the centre square."""
    img = img.convert("RGB")
    if fit == "pad":
        side = max(img.size)
        square = Image.new("RGB", (side, side), PAD_COLOUR)
        square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        img = square.resize((size, size), Image.BICUBIC)
    else:
        img = ImageOps.fit(img, (size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def read_image(path: Path, size: int, fit: str) -> np.ndarray:
    """The image file at ``path`` fitted to ``size``; an unreadable file is an error naming it."""
    try:
        with Image.open(path) as img:
            return fit_image(img, size, fit)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise AtelierInputError(f"{path}: cannot read image ({err})") from None


_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    """HTML entities and tags out, whitespace collapsed, cut at a word boundary to the caption
    reader's limit (real product descriptions run longer than a caption)."""
    text = _SPACE.sub(" ", _TAG.sub(" ", html.unescape(text))).strip()
    if len(text) > MAX_CAPTION_CHARS:
        cut = text[:MAX_CAPTION_CHARS + 1].rsplit(" ", 1)[0]
        text = (cut if cut else text[:MAX_CAPTION_CHARS]).rstrip(" ,;:")
    return text


@dataclass
class Split:
    """One split being collected: parallel lists, one entry per image."""

    images: list = field(default_factory=list)
    names: list = field(default_factory=list)
    captions: list = field(default_factory=list)
    source_index: list = field(default_factory=list)
    labels: dict = field(default_factory=lambda: {a: [] for a in ATTRIBUTES})

    def add(self, image: np.ndarray, name: str, captions: list[str], source_index: int,
            labels: dict | None = None) -> None:
        self.images.append(image)
        self.names.append(name)
        self.captions.append(captions)
        self.source_index.append(source_index)
        for a in ATTRIBUTES:
            self.labels[a].append(int((labels or {}).get(a, -1)))

    def __len__(self) -> int:
        return len(self.names)


def limit(rng: np.random.Generator, n: int, cap: int | None) -> np.ndarray:
    """Indices of a seeded random subset of ``range(n)`` of at most ``cap`` (sorted, so the kept
    images stay in source order); all of them when ``cap`` is None."""
    if cap is None or cap >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=int(cap), replace=False))


def split_groups(rng: np.random.Generator, groups: list, val_fraction: float, test_fraction: float) -> dict:
    """group -> split, drawn once per distinct group so that images of one product share a split."""
    distinct = sorted(set(groups), key=str)
    order = rng.permutation(len(distinct))
    n_val, n_test = int(round(val_fraction * len(distinct))), int(round(test_fraction * len(distinct)))
    which = {}
    for rank, g in enumerate(order):
        which[distinct[g]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return which


def write_dataset(out_dir: Path, splits: dict[str, Split], *, image_size: int, recipe: dict, source: str,
                  triplets: dict[str, dict[str, list[dict]]] | None = None) -> dict:
    """Write the splits (and ``triplets``: Fashion-IQ category -> split -> triplet dicts, whose ids
    are image names) in the caption dataset's format; returns ``meta``. ``recipe`` and ``source``
    name the root as params.yaml gives it (not resolved), so that metrics carry no machine's paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        if len(splits[name]) == 0:
            raise AtelierInputError(f"{source}: split '{name}' has no images (the source is too small for "
                                    f"data_source.val_fraction / test_fraction, or data.max_{name} is 0)")
    all_captions = {}
    arrays = {}
    for name in SPLITS:
        s = splits[name]
        arrays[name] = {
            "images": np.stack(s.images).astype(np.uint8),
            **{a: np.asarray(s.labels[a], dtype=np.int64) for a in ATTRIBUTES},
            "heldout": np.zeros(len(s), dtype=bool),
            "source_index": np.asarray(s.source_index, dtype=np.int64),
            "names": np.asarray(s.names, dtype=str),
        }
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays[name])
        atomic_write_bytes(out_dir / f"{name}.npz", buf.getvalue())
        all_captions[name] = s.captions
    atomic_write_json(out_dir / "captions.json", all_captions)
    if not triplets and (out_dir / "fashioniq").exists():
        # an earlier build's triplets (the recipe writes them) would be read as this source's
        shutil.rmtree(out_dir / "fashioniq")
    counts = _write_triplets(out_dir / "fashioniq", arrays, triplets) if triplets else {}
    labelled = {a: all(bool((arrays[n][a] >= 0).all()) for n in SPLITS) for a in ATTRIBUTES}
    meta = {
        "recipe": {**recipe, "image_size": image_size},
        "vocab": VOCAB,
        "capabilities": {"attributes": labelled, "heldout": False, "triplets": bool(counts and sum(counts.values())),
                         "image_size": image_size},
        "labelled_images": {a: {n: int((arrays[n][a] >= 0).sum()) for n in SPLITS} for a in ATTRIBUTES},
        "heldout_pairs": [],
        "counts": {n: len(splits[n]) for n in SPLITS},
        "heldout_counts": {n: 0 for n in SPLITS},
        "fashioniq_triplets": counts,
        "source": source,
    }
    atomic_write_json(out_dir / "meta.json", meta)
    return meta


def read_split(out_dir: Path, split: str) -> dict[str, np.ndarray]:
    """The arrays of one split as written here (``-1`` = no label, any ``image_size``), for the data
    stage's own figures; later stages read through :func:`lib.data.caption_dataset.load_split`."""
    path = Path(out_dir) / f"{split}.npz"
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _write_triplets(root: Path, arrays: dict, triplets: dict) -> dict:
    """Triplets whose two images were both kept, in Fashion-IQ's own layout (read back by
    :class:`lib.data.fashioniq.FashionIQ`), images as PNG at the dataset's size."""
    for sub in ("captions", "image_splits", "images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        index = {str(n): i for i, n in enumerate(arrays[split]["names"])}
        for cat, by_split in triplets.items():
            kept = [t for t in by_split.get(split, []) if t["candidate"] in index and t.get("target") in index]
            members = sorted({t[k] for t in kept for k in ("candidate", "target")}, key=index.get)
            atomic_write_json(root / "captions" / f"cap.{cat}.{split}.json", kept)
            atomic_write_json(root / "image_splits" / f"split.{cat}.{split}.json", members)
            for name in members:
                buf = io.BytesIO()
                Image.fromarray(arrays[split]["images"][index[name]]).save(buf, format="PNG")
                target = root / "images" / f"{name}.png"
                if not target.is_file() or target.read_bytes() != buf.getvalue():
                    with atomic_path(target, fsync=False) as tmp:
                        Path(tmp).write_bytes(buf.getvalue())
            counts[f"{cat}/{split}"] = len(kept)
    return counts
