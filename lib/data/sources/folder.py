"""Your own images as the caption dataset: ``<root>/captions.jsonl`` plus the image files.

One JSON object per line::

    {"image": "tops/0001.jpg", "caption": "a red striped shirt",
     "attributes": {"category": "shirt", "colour": "red", "pattern": "striped"},   # optional
     "split": "train"}                                                              # optional

``image`` is relative to ``root``. Several lines may name the same image: each adds a caption
(the first ``data.captions_per_image`` are kept; ``attributes`` and ``split`` must agree between
them). Attribute values are names from :mod:`lib.data.attributes`; an attribute counts as labelled
when every image has it. Without ``split`` on every line, images are split at random (seeded) by
``data_source.val_fraction`` / ``test_fraction``. No triplets or held-out compositions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lib.data.sources.write import ATTRIBUTES, SPLITS, VOCAB, Split, clean_caption, limit, read_image, split_groups, write_dataset
from lib.io import AtelierInputError

CAPTIONS_FILE = "captions.jsonl"
KEYS = ("image", "caption", "attributes", "split")


def read_lines(path: Path) -> dict[str, dict]:
    """image -> {"captions", "labels", "split"}, in first-seen order; every problem names its line."""
    if not path.is_file():
        raise AtelierInputError(f"{path}: not found (a folder source needs a {CAPTIONS_FILE} of "
                                '{"image": ..., "caption": ...} lines)')
    images: dict[str, dict] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise AtelierInputError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise AtelierInputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        stray = [k for k in row if k not in KEYS]
        if stray:
            raise AtelierInputError(f"{where}: unknown field {stray[0]!r} (known: {', '.join(KEYS)})")
        image, caption = row.get("image"), row.get("caption")
        if not isinstance(image, str) or not image.strip():
            raise AtelierInputError(f"{where}: field 'image' missing or not a non-empty string")
        if Path(image).is_absolute() or ".." in Path(image).parts:
            raise AtelierInputError(f"{where}: field 'image' must be a path inside the folder, got {image!r}")
        if not isinstance(caption, str) or not clean_caption(caption):
            raise AtelierInputError(f"{where}: field 'caption' missing, empty or not a string")
        labels = _labels(where, row.get("attributes"))
        split = row.get("split")
        if split is not None and split not in SPLITS:
            raise AtelierInputError(f"{where}: field 'split' must be one of {', '.join(SPLITS)}, got {split!r}")
        entry = images.setdefault(image, {"captions": [], "labels": labels, "split": split, "line": n})
        if entry["labels"] != labels or entry["split"] != split:
            raise AtelierInputError(f"{where}: image {image!r} has other 'attributes' or 'split' on line "
                                    f"{entry['line']}; every line of one image must agree")
        entry["captions"].append(clean_caption(caption))
    if not images:
        raise AtelierInputError(f"{path}: no lines")
    return images


def _labels(where: str, attributes) -> dict[str, int]:
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise AtelierInputError(f"{where}: field 'attributes' must be an object, got {type(attributes).__name__}")
    labels = {}
    for key, value in attributes.items():
        if key not in ATTRIBUTES:
            raise AtelierInputError(f"{where}: attributes.{key}: unknown attribute (known: {', '.join(ATTRIBUTES)})")
        if value not in VOCAB[key]:
            raise AtelierInputError(f"{where}: attributes.{key}: {value!r} is not one of {', '.join(VOCAB[key])}")
        labels[key] = VOCAB[key].index(value)
    return labels


def build(root: Path, out_dir: Path, *, settings: dict, seed: int, limits: dict, captions_per_image: int) -> dict:
    rng = np.random.default_rng(seed)
    images = read_lines(root / CAPTIONS_FILE)
    names = list(images)
    given = [images[n]["split"] for n in names]
    if all(s is not None for s in given):
        which = dict(zip(names, given))
    elif any(s is not None for s in given):
        first = next(n for n in names if images[n]["split"] is None)
        raise AtelierInputError(f"{root / CAPTIONS_FILE}:{images[first]['line']}: no 'split', while other lines "
                                "have one (give every line a split, or none)")
    else:
        which = split_groups(rng, names, settings["val_fraction"], settings["test_fraction"])
    position = {n: i for i, n in enumerate(names)}
    splits = {s: Split() for s in SPLITS}
    for split in SPLITS:
        members = [n for n in names if which[n] == split]
        for k in tqdm(limit(rng, len(members), limits[split]), desc=f"folder {split}", leave=False, mininterval=2):
            rel = members[k]
            path = root / rel
            if not path.is_file():
                raise AtelierInputError(f"{root / CAPTIONS_FILE}:{images[rel]['line']}: image {rel!r} not found in {root}")
            entry = images[rel]
            name = str(Path(rel).with_suffix("")).replace("/", "__")
            splits[split].add(read_image(path, settings["image_size"], settings["fit"]), name,
                              entry["captions"][:captions_per_image], position[rel], entry["labels"])
    recipe = {"kind": "folder", "root": settings["root"], "seed": seed, "fit": settings["fit"], "max_per_split": limits,
              "captions_per_image": captions_per_image, "split": "given" if given[0] is not None else "random",
              "val_fraction": settings["val_fraction"], "test_fraction": settings["test_fraction"]}
    return write_dataset(out_dir, splits, image_size=settings["image_size"], recipe=recipe,
                         source=f"image folder {settings['root']} with {CAPTIONS_FILE} (lib/data/sources/folder.py)")
