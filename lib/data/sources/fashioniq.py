"""A Fashion-IQ release (Wu et al., CVPR 2021) as the caption dataset.

Fashion-IQ's own splits are kept (``image_splits/split.<category>.<split>.json``); an image listed
under several categories is used once, under the first of dress / shirt / toptee. Category labels
come from the Fashion-IQ category (dress -> dress, shirt -> shirt, toptee -> t-shirt, as in
:data:`lib.data.attributes.FASHIONIQ_CATEGORIES`); colour and pattern are not annotated (``-1``).

Fashion-IQ has relative captions only, no description per image. Each image's captions are
derived from them: ``"a <category>"`` first, then ``"a <category> that <relative caption>"`` for
each relative caption whose *target* it is (the relative caption says what the target has, e.g.
"is red and sleeveless"), up to ``data.captions_per_image``. ``meta.json`` says so under
``source``. Triplets with both images kept are written back in Fashion-IQ's format; the official
test split withholds targets, so its triplets without one are dropped (the count is in ``recipe``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lib.data.attributes import CATEGORY_NAMES, FASHIONIQ_CATEGORIES
from lib.data.fashioniq import CATEGORIES, FashionIQ
from lib.data.sources.write import SPLITS, Split, clean_caption, limit, read_image, write_dataset


def build(root: Path, out_dir: Path, *, settings: dict, seed: int, limits: dict, captions_per_image: int) -> dict:
    rng = np.random.default_rng(seed)
    splits = {s: Split() for s in SPLITS}
    triplets: dict[str, dict[str, list[dict]]] = {}
    dropped = 0
    for split in SPLITS:
        members: list[tuple[str, str]] = []  # (image id, Fashion-IQ category), first category wins
        seen = set()
        relative: dict[str, list[str]] = {}
        for cat in CATEGORIES:
            fiq = FashionIQ(root, cat, split)
            for image_id in fiq.gallery:
                if image_id not in seen:
                    seen.add(image_id)
                    members.append((image_id, cat))
            kept = []
            for t in fiq.triplets:
                if t.target is None:
                    dropped += 1
                    continue
                kept.append({"candidate": t.candidate, "target": t.target, "captions": list(t.captions)})
                relative.setdefault(t.target, []).extend(t.captions)
            triplets.setdefault(cat, {})[split] = kept
            loader = fiq
        for k in tqdm(limit(rng, len(members), limits[split]), desc=f"fashioniq {split}", leave=False, mininterval=2):
            image_id, cat = members[k]
            label = FASHIONIQ_CATEGORIES[cat]
            noun = CATEGORY_NAMES[label]
            caps = [f"a {noun}"] + [clean_caption(f"a {noun} that {rc}") for rc in relative.get(image_id, [])]
            splits[split].add(read_image(loader.image_path(image_id), settings["image_size"], settings["fit"]),
                              image_id, caps[:captions_per_image], int(k), {"category": label})
    recipe = {"kind": "fashioniq", "root": settings["root"], "seed": seed, "fit": settings["fit"], "max_per_split": limits,
              "captions_per_image": captions_per_image, "test_triplets_without_target_dropped": dropped}
    return write_dataset(out_dir, splits, image_size=settings["image_size"], recipe=recipe, triplets=triplets,
                         source=f"Fashion-IQ release at {settings['root']}; per-image captions derived from the relative "
                                "captions of the triplets an image is the target of (lib/data/sources/fashioniq.py)")
