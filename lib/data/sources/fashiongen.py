"""The FashionGen HDF5 files (Rostamzadeh et al., 2018) as the caption dataset.

``<root>/fashiongen_256_256_train.h5`` gives train and val (``data_source.val_fraction`` of its
*products* go to val, so the poses of one product never straddle two splits);
``fashiongen_256_256_validation.h5`` is the test split, as in the papers that report on FashionGen.
Each image's caption is its product description (HTML cleaned, cut at 300 characters). FashionGen's
categories are its own (``TOPS``, ``SWEATERS``, ...), not this code's vocabulary, so no attribute
label is set; no triplets or held-out compositions either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lib.data.fashiongen import FashionGen
from lib.data.sources.write import SPLITS, Split, clean_caption, fit_image, limit, split_groups, write_dataset
from lib.io import AtelierInputError

FILES = {"train": "fashiongen_256_256_train.h5", "test": "fashiongen_256_256_validation.h5"}


def build(root: Path, out_dir: Path, *, settings: dict, seed: int, limits: dict, captions_per_image: int) -> dict:
    rng = np.random.default_rng(seed)
    splits = {s: Split() for s in SPLITS}
    for f in FILES.values():
        if not (root / f).is_file():
            raise AtelierInputError(f"data_source.root: {root / f} not found (a FashionGen root holds "
                                    f"{' and '.join(FILES.values())})")
    with FashionGen(root / FILES["train"]) as train, FashionGen(root / FILES["test"]) as test:
        # product ids alone decide the split: read them without decoding images
        ids = train.product_ids()
        which = split_groups(rng, ids, settings["val_fraction"], 0.0)
        rows = {"train": [i for i, p in enumerate(ids) if which[p] == "train"],
                "val": [i for i, p in enumerate(ids) if which[p] == "val"],
                "test": list(range(len(test)))}
        for split in SPLITS:
            source = test if split == "test" else train
            chosen = [rows[split][k] for k in limit(rng, len(rows[split]), limits[split])]
            for i in tqdm(chosen, desc=f"fashiongen {split}", leave=False, mininterval=2):
                item = source[i]
                image = fit_image(Image.fromarray(item["image"]), settings["image_size"], settings["fit"])
                caption = clean_caption(item["description"])
                if not caption:
                    raise AtelierInputError(f"{source.path}: row {i} has no description text left after cleaning")
                file_split = "test" if split == "test" else "train"
                splits[split].add(image, f"fg{file_split}{i:06d}_p{item['product_id']}", [caption], i)
    recipe = {"kind": "fashiongen", "root": settings["root"], "seed": seed, "fit": settings["fit"], "max_per_split": limits,
              "val_fraction": settings["val_fraction"], "captions_per_image": 1}
    return write_dataset(out_dir, splits, image_size=settings["image_size"], recipe=recipe,
                         source=f"FashionGen HDF5 files at {settings['root']} (lib/data/sources/fashiongen.py)")
