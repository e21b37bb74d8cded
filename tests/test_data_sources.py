"""data_source (issue 21): the caption dataset built from a Fashion-IQ release, FashionGen HDF5 files
or an image folder, each as a small fixture in its real format (64 px images made here), and the
default fashion_mnist source left exactly as the recipe builds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import lib.config as lib_params
from lib.data import sources
from lib.data.build import build_caption_dataset
from lib.data.fashioniq import FashionIQ
from lib.data.sources.write import clean_caption, read_split
from lib.io import AtelierInputError, read_json
from lib.store import repo_root

SPLITS = ("train", "val", "test")
COLOURS = [(205, 35, 35), (35, 85, 210), (40, 150, 65), (25, 25, 25), (240, 135, 25), (128, 128, 128)]


def _garment(i: int, w: int = 64, h: int = 64) -> Image.Image:
    """A flat 'garment' (coloured trapezoid on white) so that fitted images are checkable."""
    a = np.full((h, w, 3), 255, np.uint8)
    top, bottom = h // 6, h - h // 6
    for y in range(top, bottom):
        half = int(w * (0.15 + 0.25 * (y - top) / (bottom - top)))
        a[y, w // 2 - half:w // 2 + half] = COLOURS[i % len(COLOURS)]
    return Image.fromarray(a)


def make_fashioniq(root: Path, per_split: int = 6) -> Path:
    """Fashion-IQ's layout: images/<asin>.jpg (non-square, as in the release), captions/, image_splits/."""
    for sub in ("images", "captions", "image_splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for c, cat in enumerate(("dress", "shirt", "toptee")):
        for s, split in enumerate(SPLITS):
            ids = [f"B0{c}{s}{k:03d}" for k in range(per_split)]
            for k, image_id in enumerate(ids):
                _garment(c + k, 48, 64).save(root / "images" / f"{image_id}.jpg", quality=95)
            gallery = ids + (["B010000"] if cat == "toptee" and split == "train" else [])  # also a shirt
            trip = [{"candidate": ids[k], "target": ids[k + 1], "captions": [f"is darker {k}", "has long sleeves"]}
                    for k in range(per_split - 1)]
            if split == "test":
                trip.append({"candidate": ids[0], "captions": ["is shorter", "is blue"]})  # withheld target
            (root / "captions" / f"cap.{cat}.{split}.json").write_text(json.dumps(trip))
            (root / "image_splits" / f"split.{cat}.{split}.json").write_text(json.dumps(gallery))
    return root


def make_fashiongen(root: Path, products: tuple[int, int] = (12, 5), poses: int = 2) -> Path:
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    for (name, n_products), offset in zip((("train", products[0]), ("validation", products[1])), (0, 1000)):
        n = n_products * poses
        with h5py.File(root / f"fashiongen_256_256_{name}.h5", "w") as h5:
            h5.create_dataset("input_image", data=np.stack([np.asarray(_garment(i)) for i in range(n)]))
            desc = [f"<b>Slim-fit</b> cotton &amp; linen shirt {i}. " + ("Long text. " * (60 if i == 0 else 0))
                    for i in range(n)]
            h5.create_dataset("input_description", data=np.array([[d.encode("latin-1")] for d in desc]))
            h5.create_dataset("input_category", data=np.array([[b"SHIRTS"]] * n))
            h5.create_dataset("input_productID", data=(offset + np.arange(n) // poses).reshape(n, 1))
    return root


def make_folder(root: Path, n: int = 30, split: bool = False, attributes: bool = True) -> Path:
    (root / "shop").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        rel = f"shop/item_{i:03d}.png"
        _garment(i, 64, 80).save(root / rel)
        row = {"image": rel, "caption": f"a {['red', 'blue', 'green'][i % 3]} shirt number {i}"}
        if attributes:
            row["attributes"] = {"category": "shirt", "colour": ["red", "blue", "green"][i % 3]}
        if split:
            row["split"] = SPLITS[i % 3]
        lines.append(row)
        if i % 2 == 0:
            lines.append({**row, "caption": f"shirt {i}, front view"})
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return root


MAKERS = {"fashioniq": make_fashioniq, "fashiongen": make_fashiongen, "folder": make_folder}


def _params(kind: str, root: Path | None, **extra) -> dict:
    P = lib_params.load("smoke")
    P["data_source"] = {"kind": kind, "root": None if root is None else str(root), **extra}
    return P


def _check_format(out: Path, meta: dict, size: int) -> dict:
    """What every later stage relies on: aligned arrays, captions per image, the attribute vocabulary."""
    caps = read_json(out / "captions.json")
    arrays = {}
    for split in SPLITS:
        a = read_split(out, split)
        n = len(a["images"])
        assert n == meta["counts"][split] > 0
        assert a["images"].shape == (n, size, size, 3) and a["images"].dtype == np.uint8
        assert all(a[f].shape == (n,) for f in ("category", "colour", "pattern", "heldout", "source_index", "names"))
        assert len(caps[split]) == n and all(c and all(isinstance(x, str) and x for x in c) for c in caps[split])
        assert len(set(a["names"])) == n
        arrays[split] = a
    names = [set(arrays[s]["names"]) for s in SPLITS]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2]), "a split shares an image"
    assert meta["vocab"]["category"][3] == "dress"
    return arrays


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("size", [32, 64])
def test_each_source_builds_the_caption_format_at_its_image_size(tmp_path, kind, size):
    root = MAKERS[kind](tmp_path / kind)
    out = tmp_path / "captions"
    meta = sources.build(_params(kind, root, image_size=size), out)
    _check_format(out, meta, size)
    assert meta["capabilities"]["image_size"] == size and meta["recipe"]["kind"] == kind
    again = tmp_path / "again"
    sources.build(_params(kind, root, image_size=size), again)
    for f in ("train.npz", "val.npz", "test.npz", "captions.json"):
        assert (out / f).read_bytes() == (again / f).read_bytes(), f"{kind}: {f} differs between two builds"


def test_fitting_pads_with_white_and_keeps_the_whole_garment(tmp_path):
    root = make_folder(tmp_path / "f", n=6, split=True)
    out = tmp_path / "captions"
    sources.build(_params("folder", root, image_size=32), out)
    img = read_split(out, "train")["images"][0].astype(int)
    # 64 wide x 80 high padded to 80 x 80: white columns left and right, garment colour in the middle
    assert (img[:, 0] > 245).all() and (img[:, -1] > 245).all()
    assert abs(img[16, 16] - np.array(COLOURS[0])).max() < 30
    padded = (img.min(axis=-1) < 245).mean()
    sources.build(_params("folder", root, image_size=32, fit="crop"), out)
    cropped = read_split(out, "train")["images"]
    assert cropped.shape == (2, 32, 32, 3)
    # the centre 64 x 64 square of a 64 x 80 image: the garment fills more of the frame than when padded
    assert (cropped[0].min(axis=-1) < 245).mean() > padded * 1.1


def test_fashioniq_source_keeps_splits_labels_triplets_and_derives_captions(tmp_path):
    root = make_fashioniq(tmp_path / "fiq")
    out = tmp_path / "captions"
    meta = sources.build(_params("fashioniq", root), out)
    arrays = _check_format(out, meta, 32)
    assert meta["counts"] == {"train": 18, "val": 18, "test": 18}  # the shared image is used once
    train = arrays["train"]
    assert set(train["category"]) == {3, 6, 0} and (train["colour"] == -1).all() and (train["pattern"] == -1).all()
    assert meta["capabilities"]["attributes"] == {"category": True, "colour": False, "pattern": False}
    assert meta["capabilities"]["triplets"] and meta["recipe"]["test_triplets_without_target_dropped"] == 3
    caps = read_json(out / "captions.json")["train"]
    i = list(train["names"]).index("B000001")  # a dress that is the target of one triplet
    assert caps[i] == ["a dress", "a dress that is darker 0", "a dress that has long sleeves"]
    fiq = FashionIQ(out / "fashioniq", "shirt", "test")
    assert len(fiq.triplets) == 5 and all(t.target for t in fiq.triplets)
    assert np.asarray(fiq.load_image(fiq.triplets[0].candidate)).shape == (32, 32, 3)
    unmet = {(r["stage"], r["needs"]) for r in sources.unmet_requirements(meta)}
    assert ("editing", "attributes.colour") in unmet and ("judges", "attributes.pattern") in unmet
    assert not any(stage == "retrieval" for stage, _ in unmet)


def test_fashiongen_source_splits_by_product_and_cleans_descriptions(tmp_path):
    root = make_fashiongen(tmp_path / "fg")
    out = tmp_path / "captions"
    meta = sources.build(_params("fashiongen", root, val_fraction=0.25), out)
    arrays = _check_format(out, meta, 32)
    assert meta["counts"] == {"train": 18, "val": 6, "test": 10}
    product = {s: {n.rsplit("_p", 1)[1] for n in arrays[s]["names"]} for s in ("train", "val")}
    assert not product["train"] & product["val"], "the poses of one product straddle train and val"
    caps = read_json(out / "captions.json")
    first = caps["train"][0][0] if arrays["train"]["source_index"][0] == 0 else caps["val"][0][0]
    assert first.startswith("Slim-fit cotton & linen shirt 0.") and len(first) <= 300 and "<b>" not in first
    assert meta["capabilities"] == {"attributes": {"category": False, "colour": False, "pattern": False},
                                    "heldout": False, "triplets": False, "image_size": 32}
    unmet = {r["stage"] for r in sources.unmet_requirements(meta)}
    assert {"judges", "retrieval", "composed_generation", "text_to_image"} <= unmet


def test_folder_source_given_splits_and_merged_captions(tmp_path):
    root = make_folder(tmp_path / "f", n=12, split=True)
    out = tmp_path / "captions"
    meta = sources.build(_params("folder", root), out)
    arrays = _check_format(out, meta, 32)
    assert meta["counts"] == {"train": 4, "val": 4, "test": 4} and meta["recipe"]["split"] == "given"
    assert meta["capabilities"]["attributes"] == {"category": True, "colour": True, "pattern": False}
    for split in SPLITS:  # colour names mapped into the vocabulary (red 0, green 3, blue 4)
        items = [int(n.rsplit("_", 1)[1]) for n in arrays[split]["names"]]
        assert list(arrays[split]["colour"]) == [(0, 4, 3)[i % 3] for i in items]
        assert (arrays[split]["category"] == 6).all() and (arrays[split]["pattern"] == -1).all()
    assert read_json(out / "captions.json")["train"][0] == ["a red shirt number 0", "shirt 0, front view"]


def test_switching_source_leaves_no_triplets_of_the_earlier_build(tmp_path):
    out = tmp_path / "captions"
    sources.build(_params("fashioniq", make_fashioniq(tmp_path / "fiq")), out)
    assert (out / "fashioniq" / "captions").is_dir()
    meta = sources.build(_params("folder", make_folder(tmp_path / "f", n=12, split=True)), out)
    assert not (out / "fashioniq").exists() and not meta["capabilities"]["triplets"]


def test_limits_apply_to_every_source(tmp_path):
    root = make_folder(tmp_path / "f", n=30, attributes=False)
    P = _params("folder", root)
    P["data"].update(max_train=5, max_val=2, max_test=1)
    meta = sources.build(P, tmp_path / "captions")
    assert meta["counts"] == {"train": 5, "val": 2, "test": 1}
    assert not any(meta["capabilities"]["attributes"].values())


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('{"image": "shop/item_000.png"}', "field 'caption' missing"),
    ('{"image": "../x.png", "caption": "a"}', "must be a path inside the folder"),
    ('{"image": "shop/item_000.png", "caption": "a", "attributes": {"colour": "mauve"}}', "'mauve' is not one of"),
    ('{"image": "shop/item_000.png", "caption": "a", "attributes": {"size": "L"}}', "attributes.size: unknown"),
    ('{"image": "shop/item_000.png", "caption": "a", "colour": "red"}', "unknown field 'colour'"),
    ('{"image": "shop/missing.png", "caption": "a"}', "image 'shop/missing.png' not found"),
    ('{"image": "shop/item_000.png", "caption": "a", "split": "dev"}', "field 'split' must be one of"),
])
def test_folder_bad_lines_name_file_line_and_field(tmp_path, line, message):
    root = make_folder(tmp_path / "f", n=3, attributes=False)
    path = root / "captions.jsonl"
    text = path.read_text()
    path.write_text(text + line + "\n")
    n_lines = len(text.splitlines()) + 1
    with pytest.raises(AtelierInputError, match=message) as err:
        sources.build(_params("folder", root, val_fraction=0.0, test_fraction=0.0), tmp_path / "captions")
    assert str(path) in str(err.value) and (f":{n_lines}:" in str(err.value) or "missing.png" in message)


def test_folder_mixed_splits_and_disagreeing_lines_are_refused(tmp_path):
    root = make_folder(tmp_path / "f", n=4, attributes=False, split=True)
    path = root / "captions.jsonl"
    path.write_text(path.read_text() + json.dumps({"image": "shop/extra.png", "caption": "x"}) + "\n")
    _garment(0).save(root / "shop" / "extra.png")
    with pytest.raises(AtelierInputError, match="no 'split', while other lines have one"):
        sources.build(_params("folder", root), tmp_path / "out")
    path.write_text(path.read_text() + json.dumps({"image": "shop/item_000.png", "caption": "y", "split": "val"}) + "\n")
    with pytest.raises(AtelierInputError, match="must agree"):
        sources.build(_params("folder", root), tmp_path / "out")


def test_a_source_too_small_for_its_splits_says_which_split_is_empty(tmp_path):
    root = make_folder(tmp_path / "f", n=3, attributes=False)
    with pytest.raises(AtelierInputError, match="split 'val' has no images"):
        sources.build(_params("folder", root, val_fraction=0.0), tmp_path / "out")


@pytest.mark.parametrize("section, message", [
    ({"kind": "coco"}, "data_source.kind: one of fashion_mnist, fashioniq, fashiongen, folder"),
    ({"kind": "folder"}, "data_source.root: the folder of the folder release"),
    ({"kind": "fashion_mnist", "root": "x"}, "data_source.root: must be empty for fashion_mnist"),
    ({"kind": "fashion_mnist", "image_size": 64}, "paints 28 px garments onto 32 px images"),
    ({"kind": "folder", "root": "x", "image_size": 4}, r"data_source.image_size: an integer in \[8, 1024\]"),
    ({"kind": "folder", "root": "x", "fit": "stretch"}, "data_source.fit: one of pad, crop"),
    ({"kind": "folder", "root": "x", "val_fraction": 0.7}, "data_source.val_fraction"),
    ({"sorce": "folder"}, "data_source.sorce: unknown parameter"),
])
def test_settings_errors_name_the_key(section, message):
    with pytest.raises(AtelierInputError, match=message):
        sources.source_settings({"data_source": section})


def test_a_missing_root_folder_is_named(tmp_path):
    with pytest.raises(AtelierInputError, match="is not a folder"):
        sources.build(_params("fashiongen", tmp_path / "nowhere"), tmp_path / "out")
    (tmp_path / "fg").mkdir()
    with pytest.raises(AtelierInputError, match="fashiongen_256_256_train.h5 not found"):
        sources.build(_params("fashiongen", tmp_path / "fg"), tmp_path / "out")


def test_clean_caption_strips_markup_and_cuts_at_a_word():
    assert clean_caption("  <p>Wool &amp; silk</p>\n coat ") == "Wool & silk coat"
    long = clean_caption("word " * 100)
    assert len(long) <= 300 and long.endswith("word")


def test_default_source_is_the_fashion_mnist_recipe_byte_for_byte(tmp_path):
    """data_source absent or fashion_mnist: exactly lib.data.build's dataset (the committed default
    results stay valid), and capabilities read as 'everything'."""
    P = lib_params.load("smoke")
    assert sources.source_settings(P)["kind"] == "fashion_mnist"
    P["data"].update(max_train=300, max_val=100, max_test=200)
    via = sources.build(P, tmp_path / "via")
    d = P["data"]
    direct = build_caption_dataset(repo_root() / "data" / "fashion-mnist", tmp_path / "direct", seed=P["seed"],
                                   captions_per_image=d["captions_per_image"], val_size=d["val_size"],
                                   heldout_per_category=d["heldout_per_category"],
                                   heldout_test_fraction=d["heldout_test_fraction"],
                                   max_per_split={"train": 300, "val": 100, "test": 200})
    assert via == direct and "capabilities" not in via
    for f in ("train.npz", "val.npz", "test.npz", "captions.json", "meta.json"):
        assert (tmp_path / "via" / f).read_bytes() == (tmp_path / "direct" / f).read_bytes()
    assert sources.unmet_requirements(via) == []


def test_repository_params_select_the_default_source_in_every_profile():
    for profile in lib_params.PROFILES:
        assert sources.source_settings(lib_params.load(profile))["kind"] == "fashion_mnist"


def test_data_stage_runs_on_a_fashioniq_release(tmp_path):
    """The real stage command (notebook 00 under papermill) on a Fashion-IQ fixture: it builds the
    dataset, draws its figures and writes metrics naming what this source cannot feed."""
    root = make_fashioniq(tmp_path / "fiq", per_split=5)
    raw = yaml.safe_load((repo_root() / "params.yaml").read_text())
    raw["data_source"] = {"kind": "fashioniq", "root": str(root), "image_size": 32}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    env = {**os.environ, "ATELIER_OUT": str(out), lib_params.ENV_PARAMS: str(params)}
    done = subprocess.run([sys.executable, "-m", "lib.stages", "data", "--profile", "smoke"], cwd=repo_root(),
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = read_json(out / "results" / "00_data" / "metrics.json")["metrics"]
    assert metrics["source"]["kind"] == "fashioniq" and metrics["counts"]["test"] == 15
    assert {"stage": "editing", "needs": "attributes.colour"}.items() <= next(
        r for r in metrics["unmet_requirements"] if r["stage"] == "editing").items()
    figures = {p.name for p in (out / "artifacts" / "figures" / "00_data").iterdir()}
    assert any(f.startswith("grid_with_captions") for f in figures) and any(f.startswith("triplets") for f in figures)


def test_meta_names_the_root_as_params_give_it(tmp_path, monkeypatch):
    """A relative root is resolved against the repository for reading but recorded as written, so two
    checkouts' metrics compare equal (issue 18: no absolute paths in metrics)."""
    make_folder(tmp_path / "repo" / "shop_data", n=9, attributes=False)
    (tmp_path / "repo" / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "repo" / "lib").mkdir()
    monkeypatch.setattr("lib.store.repo_root", lambda start=None: tmp_path / "repo")
    meta = sources.build(_params("folder", Path("shop_data")), tmp_path / "captions")
    assert meta["recipe"]["root"] == "shop_data" and str(tmp_path) not in json.dumps(meta)
