"""Build the caption dataset: our stand-in for M2C-Fashion / FashionGen / Fashion-IQ.

Recipe (deterministic given ``seed``; every random draw comes from one ``numpy.random.Generator``):

1. Sources: real Fashion-MNIST. Its train set is permuted and split into our ``train`` and ``val``;
   its test set is our ``test``. A source image is used once, so splits never share one.
2. Held-out compositions: for every category, ``heldout_per_category`` (colour, pattern) pairs are
   drawn. No train or val image has them; a ``heldout_test_fraction`` of test images is given one,
   so generation and retrieval can be measured on compositions never seen in training (M6-Fashion's
   counterfactual "men's suit dress", Fig. 4, made measurable).
3. Every other image gets a uniformly drawn colour and pattern (re-drawn while it hits a held-out
   pair, for train/val), is rendered by :func:`lib.data.render.colourise`, and gets
   ``captions_per_image`` captions from :mod:`lib.data.captions`.
4. Fashion-IQ-style triplets for dress, shirt and toptee: each reference image of the split is paired
   with a *different* garment of the same category whose colour, pattern or both differ (chosen
   with probabilities 0.4 / 0.3 / 0.3), described by two relative captions; written in Fashion-IQ's
   own file format so :class:`lib.data.fashioniq.FashionIQ` reads it like the real thing.

Outputs in ``out_dir``: ``{train,val,test}.npz`` (images ``[N,32,32,3]`` uint8, ``category``,
``colour``, ``pattern``, ``heldout``, ``source_index``, ``names``), ``captions.json``
(``{split: [[caption, ...], ...]}`` aligned with the arrays), ``meta.json`` (vocabulary, recipe
parameters, held-out pairs, counts) and ``fashioniq/``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lib.data import fashion_mnist
from lib.data.attributes import CATEGORY_NAMES, COLOUR_NAMES, FASHIONIQ_CATEGORIES, PATTERN_NAMES
from lib.data.captions import captions as draw_captions, relative_captions
from lib.data.render import colourise
from lib.io import atomic_path, atomic_write_bytes, atomic_write_json

N_CAT, N_COL, N_PAT = len(CATEGORY_NAMES), len(COLOUR_NAMES), len(PATTERN_NAMES)
SPLITS = ("train", "val", "test")
CHANGE_PROBS = {"colour": 0.4, "pattern": 0.3, "both": 0.3}


def heldout_pairs(rng: np.random.Generator, per_category: int) -> np.ndarray:
    """Boolean ``[category, colour, pattern]``: True for compositions held out of training."""
    held = np.zeros((N_CAT, N_COL, N_PAT), dtype=bool)
    for cat in range(N_CAT):
        flat = rng.choice(N_COL * N_PAT, size=per_category, replace=False)
        held[cat].flat[flat] = True
    return held


def _draw_attributes(rng, categories, held, allow_heldout: bool, heldout_fraction: float):
    n = len(categories)
    colour = rng.integers(N_COL, size=n)
    pattern = rng.integers(N_PAT, size=n)
    if not allow_heldout:
        bad = held[categories, colour, pattern]
        while bad.any():
            colour[bad] = rng.integers(N_COL, size=bad.sum())
            pattern[bad] = rng.integers(N_PAT, size=bad.sum())
            bad = held[categories, colour, pattern]
    else:
        forced = rng.random(n) < heldout_fraction
        for i in np.flatnonzero(forced):
            options = np.argwhere(held[categories[i]])
            colour[i], pattern[i] = options[rng.integers(len(options))]
    return colour, pattern


def _choose_sources(rng, n_total: int, limit: int | None) -> np.ndarray:
    order = rng.permutation(n_total)
    return np.sort(order[:limit]) if limit is not None else np.sort(order)


def build_caption_dataset(
    fmnist_root: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    captions_per_image: int = 3,
    val_size: int = 5000,
    heldout_per_category: int = 2,
    heldout_test_fraction: float = 0.2,
    max_per_split: dict | None = None,
    write_fashioniq: bool = True,
) -> dict:
    """Build the dataset into ``out_dir`` (see the module docstring); returns ``meta``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    limits = {"train": None, "val": None, "test": None, **(max_per_split or {})}
    rng = np.random.default_rng(seed)
    held = heldout_pairs(rng, heldout_per_category)

    train_x, train_y = fashion_mnist.load(fmnist_root, "train")
    test_x, test_y = fashion_mnist.load(fmnist_root, "test")
    perm = rng.permutation(len(train_x))
    sources = {
        "val": ("train", np.sort(perm[:val_size])),
        "train": ("train", np.sort(perm[val_size:])),
        "test": ("test", np.arange(len(test_x))),
    }
    arrays: dict[str, dict[str, np.ndarray]] = {}
    all_captions: dict[str, list[list[str]]] = {}
    for split in SPLITS:
        src_name, idx = sources[split]
        if limits[split] is not None:
            idx = np.sort(rng.choice(idx, size=min(int(limits[split]), len(idx)), replace=False))
        grey, labels = (train_x, train_y) if src_name == "train" else (test_x, test_y)
        cats = labels[idx]
        colour, pattern = _draw_attributes(rng, cats, held, split == "test", heldout_test_fraction)
        images = colourise(grey[idx], colour, pattern)
        caps = [draw_captions(rng, int(c), int(k), int(p), captions_per_image) for c, k, p in zip(cats, colour, pattern)]
        names = np.array([f"fm{src_name}{i:05d}" for i in idx])
        arrays[split] = {
            "images": images,
            "category": cats.astype(np.int64),
            "colour": colour.astype(np.int64),
            "pattern": pattern.astype(np.int64),
            "heldout": held[cats, colour, pattern],
            "source_index": idx.astype(np.int64),
            "names": names,
        }
        all_captions[split] = caps
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays[split])
        atomic_write_bytes(out_dir / f"{split}.npz", buf.getvalue())
    atomic_write_json(out_dir / "captions.json", all_captions)

    triplet_counts = {}
    if write_fashioniq:
        triplet_counts = _write_fashioniq(rng, arrays, out_dir / "fashioniq")

    meta = {
        "recipe": {
            "seed": seed, "captions_per_image": captions_per_image, "val_size": val_size,
            "heldout_per_category": heldout_per_category, "heldout_test_fraction": heldout_test_fraction,
            "max_per_split": limits, "image_size": 32, "change_probabilities": CHANGE_PROBS,
        },
        "vocab": {"category": list(CATEGORY_NAMES), "colour": list(COLOUR_NAMES), "pattern": list(PATTERN_NAMES)},
        "heldout_pairs": [
            {"category": CATEGORY_NAMES[c], "colour": COLOUR_NAMES[k], "pattern": PATTERN_NAMES[p]}
            for c, k, p in np.argwhere(held)
        ],
        "counts": {split: int(len(arrays[split]["category"])) for split in SPLITS},
        "heldout_counts": {split: int(arrays[split]["heldout"].sum()) for split in SPLITS},
        "fashioniq_triplets": triplet_counts,
        "source": "Fashion-MNIST (Zalando, MIT), decompressed idx sha256 verified",
    }
    atomic_write_json(out_dir / "meta.json", meta)
    return meta


def _write_fashioniq(rng, arrays, root: Path) -> dict:
    for sub in ("captions", "image_splits", "images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        a = arrays[split]
        for fiq_cat, label in FASHIONIQ_CATEGORIES.items():
            members = np.flatnonzero(a["category"] == label)
            by_attr: dict[tuple[int, int], list[int]] = {}
            for i in members:
                by_attr.setdefault((int(a["colour"][i]), int(a["pattern"][i])), []).append(int(i))
            triplets = []
            for ref in members:
                c0, p0 = int(a["colour"][ref]), int(a["pattern"][ref])
                change = rng.choice(list(CHANGE_PROBS), p=list(CHANGE_PROBS.values()))
                c1 = (c0 + rng.integers(1, N_COL)) % N_COL if change in ("colour", "both") else c0
                p1 = (p0 + rng.integers(1, N_PAT)) % N_PAT if change in ("pattern", "both") else p0
                pool = [j for j in by_attr.get((c1, p1), []) if j != ref]
                if not pool:
                    continue  # no garment with that composition in this split: skip this reference
                tgt = pool[rng.integers(len(pool))]
                triplets.append({
                    "candidate": str(a["names"][ref]),
                    "target": str(a["names"][tgt]),
                    "captions": relative_captions(rng, (c0, p0), (c1, p1)),
                })
            atomic_write_json(root / "captions" / f"cap.{fiq_cat}.{split}.json", triplets)
            atomic_write_json(root / "image_splits" / f"split.{fiq_cat}.{split}.json",
                              [str(n) for n in a["names"][members]])
            for i in tqdm(members, desc=f"fashioniq images {fiq_cat}/{split}", leave=False, mininterval=2):
                target = root / "images" / f"{a['names'][i]}.png"
                buf = io.BytesIO()
                Image.fromarray(a["images"][i]).save(buf, format="PNG")
                # compared, not skipped when present: an old or corrupt PNG left in the folder would
                # otherwise disagree with the npz the figures and metrics read (issue 18)
                if not target.is_file() or target.read_bytes() != buf.getvalue():
                    with atomic_path(target, fsync=False) as tmp:
                        Path(tmp).write_bytes(buf.getvalue())
            counts[f"{fiq_cat}/{split}"] = len(triplets)
    return counts
