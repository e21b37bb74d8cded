"""The caption dataset recipe, the Fashion-MNIST reader and the real-format loaders."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lib.data import fashion_mnist
from lib.data.attributes import CATEGORIES, COLOUR_NAMES, FASHIONIQ_CATEGORIES, PATTERNS
from lib.data.build import build_caption_dataset
from lib.data.caption_dataset import CaptionDataset, load_split
from lib.data.captions import caption, relative_captions
from lib.data.fashiongen import FashionGen
from lib.data.fashioniq import FashionIQ
from lib.data.render import colourise, pattern_masks
from lib.io import AtelierInputError
from lib.store import repo_root

FM_ROOT = repo_root() / "data" / "fashion-mnist"
LIMITS = {"train": 600, "val": 200, "test": 400}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("captions")
    meta = build_caption_dataset(FM_ROOT, out, seed=3, val_size=1000, max_per_split=LIMITS, heldout_test_fraction=0.3)
    return out, meta


# -- Fashion-MNIST ------------------------------------------------------------------------------

def test_fashion_mnist_real_files_verify_and_load():
    fashion_mnist.verify(FM_ROOT)
    x, y = fashion_mnist.load(FM_ROOT, "test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10  # the real test set is balanced


def test_fashion_mnist_missing_file_names_it_and_says_how(tmp_path):
    shutil.copy(FM_ROOT / "t10k-labels-idx1-ubyte", tmp_path)
    with pytest.raises(AtelierInputError, match=r"t10k-images-idx3-ubyte.*missing.*dataset-fashion-mnist"):
        fashion_mnist.load(tmp_path, "test")


def test_fashion_mnist_corrupt_file_is_refused(tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(FM_ROOT / name, tmp_path)
    data = bytearray((tmp_path / "t10k-images-idx3-ubyte").read_bytes())
    data[5000] ^= 0xFF
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(bytes(data))
    with pytest.raises(AtelierInputError, match=r"t10k-images-idx3-ubyte: checksum mismatch"):
        fashion_mnist.load(tmp_path, "test")


def test_idx_reader_rejects_truncation_and_bad_magic(tmp_path):
    raw = (FM_ROOT / "t10k-labels-idx1-ubyte").read_bytes()
    (tmp_path / "cut").write_bytes(raw[:-10])
    with pytest.raises(AtelierInputError, match="truncated"):
        fashion_mnist.read_idx(tmp_path / "cut")
    (tmp_path / "magic").write_bytes(b"\x00\x00\x0d\x01" + raw[4:])
    with pytest.raises(AtelierInputError, match="magic"):
        fashion_mnist.read_idx(tmp_path / "magic")


def test_fetch_from_gzip_source_verifies(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in fashion_mnist.SHA256:
        with open(FM_ROOT / name, "rb") as fin, gzip.open(src / f"{name}.gz", "wb", compresslevel=1) as fout:
            shutil.copyfileobj(fin, fout)
    dest = fashion_mnist.fetch(tmp_path / "dest", source=src)
    fashion_mnist.verify(dest)
    # a gzip with the wrong content is refused and leaves no file behind
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in fashion_mnist.SHA256:
        with gzip.open(bad / f"{name}.gz", "wb") as fout:
            fout.write(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(AtelierInputError, match="does not match"):
        fashion_mnist.fetch(tmp_path / "dest2", source=bad)
    assert not any((tmp_path / "dest2").glob("*-ubyte"))


@pytest.mark.parametrize("damage", ["not gzip", "truncated"])
def test_fetch_cli_names_a_corrupt_gzip_source_in_one_line(tmp_path, damage):
    """Issue 18: a corrupt ``.gz`` source ended ``python -m lib.data.fashion_mnist fetch`` in a
    22-line ``BadGzipFile`` traceback that named no file."""
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    name = next(iter(fashion_mnist.SHA256))
    good = gzip.compress((FM_ROOT / name).read_bytes()[:4096], compresslevel=1)
    (src / f"{name}.gz").write_bytes(b"this is not gzip" if damage == "not gzip" else good[: len(good) // 2])
    proc = subprocess.run([sys.executable, "-m", "lib.data.fashion_mnist", "fetch", str(tmp_path / "dest"),
                           "--source", str(src)], cwd=repo_root(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{name}.gz" in lines[0] and "corrupt" in lines[0]
    assert not (tmp_path / "dest" / name).exists()


# -- rendering and captions ---------------------------------------------------------------------

def test_render_keeps_silhouette_and_paints_colour():
    x, y = fashion_mnist.load(FM_ROOT, "test")
    img = colourise(x[:50], np.full(50, COLOUR_NAMES.index("red")), np.zeros(50, dtype=int))
    assert img.shape == (50, 32, 32, 3) and img.dtype == np.uint8
    inside = np.pad(x[:50], ((0, 0), (2, 2), (2, 2))) > 128
    outside = np.pad(x[:50], ((0, 0), (2, 2), (2, 2))) == 0
    assert (img[outside] == 255).all()                   # white background
    red = img[inside].astype(int)
    assert (red[:, 0] > red[:, 1] + 60).mean() > 0.95     # garment is red where it is opaque


def test_patterns_differ_and_plain_draws_nothing():
    masks = pattern_masks()
    assert not masks[0].any()
    assert len({m.tobytes() for m in masks}) == len(PATTERNS)


def test_captions_mention_attributes_and_vary():
    rng = np.random.default_rng(0)
    for cat in range(len(CATEGORIES)):
        for col in range(len(COLOUR_NAMES)):
            text = caption(rng, cat, col, 1)
            assert COLOUR_NAMES[col] in text
            assert any(w in text for w in CATEGORIES[cat][1])
            assert any(w in text for w in PATTERNS[1][1] + PATTERNS[1][2])
    many = {caption(rng, 3, 0, 2) for _ in range(200)}
    assert len(many) > 10
    assert not any(" a o" in t or t.startswith("a o") for t in many)


def test_relative_captions_describe_exactly_the_changes():
    rng = np.random.default_rng(0)
    caps = relative_captions(rng, (0, 0), (4, 0))
    assert len(caps) == 2 and all("blue" in c for c in caps)
    caps = relative_captions(rng, (0, 0), (0, 2))   # pattern only: plain -> dotted
    dotted_words = PATTERNS[2][1] + PATTERNS[2][2]
    assert all(any(w in c for w in dotted_words) for c in caps)
    assert not any(name in c for c in caps for name in COLOUR_NAMES)
    with pytest.raises(ValueError, match="identical"):
        relative_captions(rng, (1, 1), (1, 1))


# -- the built dataset ----------------------------------------------------------------------------

def test_build_is_deterministic(built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    build_caption_dataset(FM_ROOT, again, seed=3, val_size=1000, max_per_split=LIMITS,
                          heldout_test_fraction=0.3, write_fashioniq=False)
    for split in ("train", "val", "test"):
        a, b = load_split(out, split), load_split(again, split)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert json.loads((out / "captions.json").read_text()) == json.loads((again / "captions.json").read_text())


def test_rebuild_replaces_an_old_or_corrupt_fashioniq_png(tmp_path):
    """Issue 18: rebuilding over a folder that held an old or corrupt PNG kept it, so the images
    figures read and the npz the metrics read could disagree; a rebuild now rewrites what differs
    and leaves identical files alone."""
    limits = {"train": 60, "val": 20, "test": 40}
    out = tmp_path / "captions"
    build_caption_dataset(FM_ROOT, out, seed=3, val_size=1000, max_per_split=limits)
    pngs = sorted((out / "fashioniq" / "images").glob("*.png"))
    assert len(pngs) >= 2
    first = {p.name: p.read_bytes() for p in pngs}
    pngs[0].write_bytes(b"corrupt")
    pngs[1].write_bytes(pngs[2].read_bytes())  # an old, valid PNG of another garment
    untouched = pngs[3].stat().st_mtime_ns
    build_caption_dataset(FM_ROOT, out, seed=3, val_size=1000, max_per_split=limits)
    assert {p.name: p.read_bytes() for p in pngs} == first
    assert pngs[3].stat().st_mtime_ns == untouched


def test_splits_never_share_a_source_image(built):
    out, meta = built
    names = {s: set(load_split(out, s)["names"].tolist()) for s in ("train", "val", "test")}
    assert all(len(names[s]) == LIMITS[s] for s in names)
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
    assert meta["counts"] == LIMITS


def test_heldout_compositions_only_in_test(built):
    out, meta = built
    held = {(h["category"], h["colour"], h["pattern"]) for h in meta["heldout_pairs"]}
    assert len(held) == 2 * len(CATEGORIES)
    from lib.data.attributes import CATEGORY_NAMES, PATTERN_NAMES
    for split in ("train", "val", "test"):
        a = load_split(out, split)
        combos = {(CATEGORY_NAMES[c], COLOUR_NAMES[k], PATTERN_NAMES[p]) for c, k, p in zip(a["category"], a["colour"], a["pattern"])}
        flags = [(CATEGORY_NAMES[c], COLOUR_NAMES[k], PATTERN_NAMES[p]) in held for c, k, p in zip(a["category"], a["colour"], a["pattern"])]
        np.testing.assert_array_equal(a["heldout"], flags)
        if split == "test":
            assert a["heldout"].mean() > 0.25
        else:
            assert not combos & held


def test_attributes_agree_with_captions_and_pixels(built):
    out, _ = built
    a = load_split(out, "train")
    caps = json.loads((out / "captions.json").read_text())["train"]
    x, _ = fashion_mnist.load(FM_ROOT, "train")
    for i in range(len(caps)):
        assert all(COLOUR_NAMES[a["colour"][i]] in c for c in caps[i])
        assert len(caps[i]) == 3
    # the pixels are the real garment of that source index, rendered with the stored attributes
    np.testing.assert_array_equal(a["images"][:20], colourise(x[a["source_index"][:20]], a["colour"][:20], a["pattern"][:20]))
    assert (np.bincount(a["category"], minlength=10) > 0).all()


def test_triplets_are_valid(built):
    out, _ = built
    from lib.data.attributes import CATEGORY_NAMES
    arrays = {s: load_split(out, s) for s in ("train", "val", "test")}
    for split, a in arrays.items():
        index = {n: i for i, n in enumerate(a["names"].tolist())}
        for cat, label in FASHIONIQ_CATEGORIES.items():
            fiq = FashionIQ(out / "fashioniq", cat, split)
            assert len(fiq) > 0
            assert set(fiq.gallery) == {n for n, c in zip(a["names"].tolist(), a["category"]) if c == label}
            for t in fiq.triplets:
                r, g = index[t.candidate], index[t.target]
                assert r != g and a["category"][r] == a["category"][g] == label
                changed = (a["colour"][r] != a["colour"][g]) + (a["pattern"][r] != a["pattern"][g])
                assert changed in (1, 2) and len(t.captions) == 2
                if a["colour"][r] != a["colour"][g]:
                    assert all(COLOUR_NAMES[a["colour"][g]] in c for c in t.captions)
            img = fiq.load_image(fiq.triplets[0].target)
            assert img.size == (32, 32) and img.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(img), a["images"][index[fiq.triplets[0].target]])
    assert CATEGORY_NAMES[FASHIONIQ_CATEGORIES["toptee"]] == "t-shirt"


def test_caption_dataset_items(built):
    out, _ = built
    ds = CaptionDataset(out, "val", seed=1)
    item = ds[5]
    assert item["image"].shape == (3, 32, 32) and -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["caption"] == CaptionDataset(out, "val", seed=1)[5]["caption"]
    assert ds.images_tensor().shape == (200, 3, 32, 32)


def test_load_split_errors_name_file(tmp_path, built):
    with pytest.raises(AtelierInputError, match=r"train\.npz: caption dataset split not found"):
        load_split(tmp_path, "train")
    out, _ = built
    (tmp_path / "train.npz").write_bytes((out / "train.npz").read_bytes()[:1000])
    with pytest.raises(AtelierInputError, match=r"train\.npz: corrupt or truncated"):
        load_split(tmp_path, "train")


# -- real-format loaders on fixtures shaped like the real thing --------------------------------

def _fiq_fixture(root: Path, triplets, gallery, images):
    from PIL import Image

    for sub in ("captions", "image_splits", "images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "captions" / "cap.dress.val.json").write_text(json.dumps(triplets))
    (root / "image_splits" / "split.dress.val.json").write_text(json.dumps(gallery))
    for name in images:
        Image.fromarray(np.full((64, 48, 3), 128, np.uint8)).save(root / "images" / f"{name}.jpg")


def test_fashioniq_real_format_fixture(tmp_path):
    trip = [{"target": "B00A1", "candidate": "B00A2", "captions": ["is shorter", "has no sleeves"]},
            {"target": "B00A3", "candidate": "B00A1", "captions": ["is red", "is more formal"]}]
    _fiq_fixture(tmp_path, trip, ["B00A1", "B00A2", "B00A3"], ["B00A1", "B00A2", "B00A3"])
    fiq = FashionIQ(tmp_path, "dress", "val")
    assert len(fiq) == 2 and fiq.query_text(fiq.triplets[0]) == "is shorter and has no sleeves"
    assert fiq.load_image("B00A2", size=32).size == (32, 32)


@pytest.mark.parametrize("bad, message", [
    ([{"target": "B00A1", "candidate": "B00ZZ", "captions": ["x", "y"]}], r"names candidate image 'B00ZZ', which does not exist"),
    ([{"target": "B00A1", "candidate": "B00A2", "captions": ["", "y"]}], r"entry 0: captions\[0\] is empty"),
    ([{"target": "B00A1", "candidate": "B00A2", "captions": ["x" * 400, "y"]}], r"captions\[0\] is 400 characters long"),
    ([{"target": "B00A1", "captions": ["x"]}], r"field 'candidate' missing"),
    ({"not": "a list"}, r"expected a JSON list"),
])
def test_fashioniq_bad_input_names_file_and_field(tmp_path, bad, message):
    _fiq_fixture(tmp_path, bad, ["B00A1"], ["B00A1", "B00A2"])
    with pytest.raises(AtelierInputError, match=message) as err:
        FashionIQ(tmp_path, "dress", "val")
    assert "cap.dress.val.json" in str(err.value)


def test_fashioniq_corrupt_json_and_image(tmp_path):
    _fiq_fixture(tmp_path, [], ["B00A1"], ["B00A1"])
    (tmp_path / "image_splits" / "split.dress.val.json").write_text("[\"B00A1\", ")
    with pytest.raises(AtelierInputError, match=r"split\.dress\.val\.json: not valid JSON"):
        FashionIQ(tmp_path, "dress", "val")
    (tmp_path / "image_splits" / "split.dress.val.json").write_text("[\"B00A1\"]")
    (tmp_path / "images" / "B00A1.jpg").write_bytes(b"not a jpeg")
    fiq = FashionIQ(tmp_path, "dress", "val")
    with pytest.raises(AtelierInputError, match=r"B00A1\.jpg: cannot read image"):
        fiq.load_image("B00A1")
    with pytest.raises(AtelierInputError, match="category must be one of"):
        FashionIQ(tmp_path, "shoes", "val")


def _fashiongen_fixture(path: Path, n: int = 6, drop: str | None = None):
    import h5py

    with h5py.File(path, "w") as h5:
        data = {
            "input_image": np.random.default_rng(0).integers(0, 255, (n, 256, 256, 3), dtype=np.uint8),
            "input_description": np.array([[f"A slim-fit cotton shirt number {i}.".encode("latin-1")] for i in range(n)]),
            "input_category": np.array([[b"SHIRTS"]] * n),
            "input_subcategory": np.array([[b"SHIRTS"]] * n),
            "input_productID": np.arange(100, 100 + n).reshape(n, 1) // 2,
            "input_name": np.array([[b"shirt"]] * n),
        }
        for key, value in data.items():
            if key != drop:
                h5.create_dataset(key, data=value)


def test_fashiongen_hdf5_fixture(tmp_path):
    path = tmp_path / "fashiongen_256_256_validation.h5"
    _fashiongen_fixture(path)
    with FashionGen(path) as fg:
        assert len(fg) == 6
        item = fg[3]
        assert item["image"].shape == (256, 256, 3) and item["category"] == "SHIRTS"
        assert item["description"].startswith("A slim-fit") and item["product_id"] == 51
        with pytest.raises(IndexError):
            fg[6]


def test_fashiongen_errors(tmp_path):
    with pytest.raises(AtelierInputError, match="not found"):
        FashionGen(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"definitely not hdf5")
    with pytest.raises(AtelierInputError, match=r"junk\.h5: not a readable HDF5"):
        FashionGen(tmp_path / "junk.h5")
    _fashiongen_fixture(tmp_path / "nodesc.h5", drop="input_description")
    with pytest.raises(AtelierInputError, match=r"missing dataset\(s\) \['input_description'\]"):
        FashionGen(tmp_path / "nodesc.h5")
