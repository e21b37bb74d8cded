"""Issue 8, guarantee (3): bad input gives one clear :class:`AtelierInputError` naming the file, field
or parameter -- never a raw KeyError/TypeError/struct/numpy/h5py exception -- and nothing already
written is lost. Fuzzed with hypothesis (derandomized: CI sees the same examples every run).

Covered: ``params.yaml`` validation (random mutations of the real file), the idx reader, JSON
files (read_json, captions.json, meta.json, Fashion-IQ captions and splits), the caption dataset's
npz splits, FashionGen HDF5 files, images of any size and mode, captions that are empty or
absurdly long, and checkpoint files.
"""

from __future__ import annotations

import copy
import io
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import lib.config as params
from lib.data import fashion_mnist
from lib.data.caption_dataset import CaptionDataset, load_split
from lib.data.fashiongen import FashionGen
from lib.data.fashioniq import MAX_CAPTION_CHARS, FashionIQ
from lib.io import AtelierInputError, load_checkpoint, read_json, save_checkpoint
from lib.store import repo_root


def fuzz(n: int):
    """Deterministic, bounded hypothesis settings (the whole module runs in well under 40 s)."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="atelier-fuzz-") as tmp:
        yield Path(tmp)


def _fresh(scratch: Path, name: str) -> Path:
    """An empty folder, reused across hypothesis examples (function fixtures are not per example)."""
    folder = scratch / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _refused(call, *names: str) -> str:
    """Run ``call``: it must raise AtelierInputError whose message contains every one of ``names``."""
    with pytest.raises(AtelierInputError) as err:
        call()
    message = str(err.value)
    for name in names:
        assert name in message, f"error does not name {name!r}: {message}"
    return message


def _refused_or_ok(call, *names: str):
    """``call`` succeeds, or raises AtelierInputError naming ``names`` -- never another exception."""
    try:
        return call()
    except AtelierInputError as err:
        for name in names:
            assert name in str(err), f"error does not name {name!r}: {err}"
        return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


# == params.yaml ===================================================================================

RAW = yaml.safe_load((repo_root() / "params.yaml").read_text(encoding="utf-8"))
PROFILES = tuple(RAW["profiles"])
#: free-form mappings handed to model constructors, not checked key by key in params.yaml
FREE_FORM = ("codebook", "quantizer_kwargs", "decoder_kwargs")


def _paths(node, prefix=()):
    if prefix:
        yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


ALL_PATHS = [p for p in _paths(RAW) if p[0] != "profile"]


def _value_at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


#: every numeric leaf a schema checks: shared (section.key) and per profile (profiles.p.section.key)
NUMERIC_PATHS = [p for p in ALL_PATHS
                 if not any(isinstance(k, int) or k in FREE_FORM or k == "sampling" for k in p)
                 and (p[0] in params.SCHEMA or p[0] == "profiles")
                 and isinstance(_value_at(RAW, p), (int, float)) and not isinstance(_value_at(RAW, p), bool)
                 and (p[0] != "profiles" or (len(p) > 3 and p[2] in params.SCHEMA))]
#: mappings whose keys params.py checks (an unknown key must be refused by name)
STRICT_MAPPINGS = (
    [(s,) for s in params.SCHEMA if s in RAW]
    + [("tokenizers", "configs", n) for n in RAW["tokenizers"]["configs"]]
    + [("tokenizers", "finetunes", n) for n in RAW["tokenizers"]["finetunes"]]
    + [("profiles", p, s) for p in PROFILES for s in RAW["profiles"][p] if s in params.SCHEMA]
    + [("profiles", p, s, "steps") for p in PROFILES for s in RAW["profiles"][p]
       if isinstance(RAW["profiles"][p][s], dict) and isinstance(RAW["profiles"][p][s].get("steps"), dict)]
    + ([("generation", "models", n) for n in RAW["generation"]["models"]] if "generation" in RAW else [])
)


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _dotted(path) -> str:
    """What the error must name: the key as validated (a profile override is merged into its section)."""
    keys = [k for k in path if not isinstance(k, int)]
    if keys[:1] == ["profiles"] and len(keys) > 2:
        keys = keys[2:]
    return ".".join(str(k) for k in keys)


def _load_mutated(scratch: Path, mutate, profile: str):
    raw = copy.deepcopy(RAW)
    mutate(raw)
    path = _fresh(scratch, "params") / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return lambda: params.load(profile, path)


def _profile_of(path, fallback: str) -> str:
    return path[1] if path[0] == "profiles" and len(path) > 1 and path[1] in PROFILES else fallback


junk = (st.text(max_size=10) | st.booleans() | st.none() | st.lists(st.integers(), max_size=3)
        | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2) | st.integers(-10**12, 10**12)
        | st.floats(allow_nan=True, allow_infinity=True))


@fuzz(100)
@given(path=st.sampled_from(ALL_PATHS), value=junk, profile=st.sampled_from(PROFILES))
def test_params_any_mutation_loads_or_names_the_key(scratch, path, value, profile):
    """Any value anywhere in params.yaml: it loads, or the one error names the key it broke."""
    profile = _profile_of(path, profile)
    load = _load_mutated(scratch, lambda raw: _set(raw, path, value), profile)
    if path[0] == "profiles" and len(path) <= 2:
        _refused_or_ok(load, "params.yaml")  # the profile table itself: named as a profile problem
    else:
        _refused_or_ok(load, "params.yaml", _dotted(path).split(".")[0])


@fuzz(50)
@given(path=st.sampled_from(NUMERIC_PATHS),
       value=st.text(max_size=8) | st.booleans() | st.lists(st.integers(), min_size=1, max_size=3)
       | st.dictionaries(st.text(max_size=4), st.integers(), min_size=1, max_size=2))
def test_params_wrong_type_is_refused_by_name(scratch, path, value):
    load = _load_mutated(scratch, lambda raw: _set(raw, path, value), _profile_of(path, "smoke"))
    _refused(load, "params.yaml", _dotted(path))


@fuzz(50)
@given(path=st.sampled_from(NUMERIC_PATHS),
       value=st.integers(max_value=-1) | st.integers(min_value=10**8) | st.sampled_from([float("nan"), float("inf")])
       | st.floats(max_value=-1e-9, allow_infinity=True))
def test_params_out_of_range_is_refused_by_name(scratch, path, value):
    load = _load_mutated(scratch, lambda raw: _set(raw, path, value), _profile_of(path, "smoke"))
    _refused(load, "params.yaml", _dotted(path))


@fuzz(40)
@given(where=st.sampled_from(STRICT_MAPPINGS), key=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
       value=st.integers(0, 5) | st.text(max_size=4))
def test_params_unknown_key_is_refused_by_name(scratch, where, key, value):
    assume(key not in _value_at(RAW, where))
    load = _load_mutated(scratch, lambda raw: _set(raw, where + (key,), value), _profile_of(where, "smoke"))
    message = _refused(load, "params.yaml")
    assert _dotted(where + (key,)) in message or ".".join(map(str, where + (key,))) in message, message


@fuzz(40)
@given(path=st.sampled_from([p for p in ALL_PATHS if isinstance(_value_at(RAW, p), dict)]),
       value=st.lists(st.integers(), max_size=2) | st.text(max_size=5) | st.integers())
def test_params_mapping_replaced_by_non_mapping_is_refused(scratch, path, value):
    profile = _profile_of(path, "smoke")
    load = _load_mutated(scratch, lambda raw: _set(raw, path, value), profile)
    name = ".".join(map(str, path)) if path[0] == "profiles" and len(path) <= 2 else _dotted(path)
    _refused(load, "params.yaml", name)


@fuzz(40)
@given(name=st.text(max_size=12) | st.integers() | st.lists(st.text(max_size=3), max_size=2) | st.booleans())
def test_params_unknown_profile_is_refused_by_name(scratch, name):
    assume(name not in PROFILES)
    path = _fresh(scratch, "params") / "params.yaml"
    shutil.copy(repo_root() / "params.yaml", path)
    message = _refused(lambda: params.load(name, path), "params.yaml", "profile")
    assert "smoke" in message  # says which profiles exist


def test_params_missing_section_is_refused_by_name(tmp_path):
    for section in params.SCHEMA:
        if section not in RAW:
            continue
        raw = {k: v for k, v in copy.deepcopy(RAW).items() if k != section}
        for profile in raw["profiles"].values():
            profile.pop(section, None)
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        _refused(lambda: params.load("smoke", path), "params.yaml", section, "missing")


def test_params_cli_check_names_unknown_profile():
    proc = subprocess.run([sys.executable, "-m", "lib.config", "--check", "fastest"], cwd=repo_root(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "unknown profile 'fastest'" in proc.stderr and "Traceback" not in proc.stderr


# == idx files (Fashion-MNIST) =====================================================================

def _idx(ndim: int, dims: list[int], payload: bytes, magic: bytes = b"\x00\x00\x08") -> bytes:
    return magic + bytes([ndim]) + b"".join(d.to_bytes(4, "big") for d in dims) + payload


idx_files = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda n, dims, extra: _idx(n, dims, bytes(max(0, math.prod(dims) + extra))),
              st.integers(0, 4), st.lists(st.integers(0, 12), min_size=0, max_size=4), st.integers(-3, 3)),
    st.builds(_idx, st.integers(0, 255), st.lists(st.integers(0, 2**32 - 1), max_size=5), st.binary(max_size=16)),
    st.builds(lambda magic, rest: magic + rest, st.binary(min_size=3, max_size=3), st.binary(max_size=24)),
)


@fuzz(120)
@given(raw=idx_files)
def test_idx_reader_parses_or_names_the_file(scratch, raw):
    path = _fresh(scratch, "idx") / "train-images-idx3-ubyte"
    path.write_bytes(raw)
    out = _refused_or_ok(lambda: fashion_mnist.read_idx(path), "train-images-idx3-ubyte")
    if out is not None:  # accepted: the header's shape accounts for every payload byte
        assert raw[:3] == b"\x00\x00\x08" and out.dtype == np.uint8
        assert 4 + 4 * out.ndim + out.size == len(raw)


@fuzz(40)
@given(n_images=st.integers(0, 4), side=st.integers(1, 30), n_labels=st.integers(0, 4), label_ndim=st.integers(1, 2))
def test_fashion_mnist_split_of_wrong_shape_is_refused(scratch, n_images, side, n_labels, label_ndim):
    root = _fresh(scratch, "fm")
    (root / "t10k-images-idx3-ubyte").write_bytes(_idx(3, [n_images, side, side], bytes(n_images * side * side)))
    label_dims = [n_labels] + [1] * (label_ndim - 1)
    (root / "t10k-labels-idx1-ubyte").write_bytes(_idx(label_ndim, label_dims, bytes(n_labels)))
    ok = side == 28 and n_labels == n_images and label_ndim == 1
    out = _refused_or_ok(lambda: fashion_mnist.load(root, "test", verify_checksums=False), "t10k-")
    assert (out is not None) == ok
    if not ok:  # with checksums on (the default) the same files are refused by their checksum
        _refused(lambda: fashion_mnist.load(root, "test"), "t10k-", "checksum")


# == JSON ==========================================================================================

@fuzz(100)
@given(raw=st.binary(max_size=40) | st.text(max_size=40).map(str.encode)
       | st.sampled_from([b"[" * 100_000, b"1" * 5000, b'{"a": ' + b"9" * 5000 + b"}", b"\xff\xfe{}", b"", b"  "]))
def test_read_json_parses_or_names_the_file(scratch, raw):
    path = _fresh(scratch, "json") / "meta.json"
    path.write_bytes(raw)
    _refused_or_ok(lambda: read_json(path), "meta.json")


# -- the caption dataset (captions.json, meta.json, {split}.npz) ------------------------------------

@pytest.fixture(scope="module")
def caption_root(scratch):
    from lib.data.build import build_caption_dataset

    root = scratch / "captions_built"
    build_caption_dataset(repo_root() / "data" / "fashion-mnist", root, seed=0, val_size=100,
                          max_per_split={"train": 12, "val": 6, "test": 6}, write_fashioniq=False)
    return root


def _caption_copy(scratch: Path, caption_root: Path) -> Path:
    root = scratch / "captions_case"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(caption_root, root)
    return root


def test_caption_dataset_built_is_accepted(caption_root):
    ds = CaptionDataset(caption_root, "train")
    assert len(ds) == 12 and isinstance(ds[0]["caption"], str) and ds[0]["caption"]


caption_lists = st.lists(st.text(max_size=6) | st.integers() | st.none(), max_size=3) | json_values


@fuzz(80)
@given(data=st.data())
def test_captions_json_loads_or_names_file_and_field(scratch, caption_root, data):
    root = _caption_copy(scratch, caption_root)
    good = json.loads((root / "captions.json").read_text())
    kind = data.draw(st.sampled_from(["whole", "split", "row", "caption"]))
    if kind == "whole":
        bad = data.draw(json_values)
    elif kind == "split":
        bad = {**good, "train": data.draw(json_values)}
    elif kind == "row":
        rows = list(good["train"])
        rows[data.draw(st.integers(0, len(rows) - 1))] = data.draw(caption_lists)
        bad = {**good, "train": rows}
    else:  # one caption replaced by an empty, blank, absurdly long or non-string one
        rows = [list(r) for r in good["train"]]
        i = data.draw(st.integers(0, len(rows) - 1))
        rows[i][0] = data.draw(st.sampled_from(["", "   ", "x" * (MAX_CAPTION_CHARS + 1), "y" * 100_000, None, 7]))
        bad = {**good, "train": rows}
    (root / "captions.json").write_text(json.dumps(bad))
    ds = _refused_or_ok(lambda: CaptionDataset(root, "train"), "captions.json")
    if ds is not None:  # accepted: every caption of every image is a usable string
        assert bad == good or all(isinstance(c, str) and c.strip() and len(c) <= MAX_CAPTION_CHARS
                                  for caps in ds.captions for c in caps)
        for i in range(len(ds)):
            assert isinstance(ds[i]["caption"], str)
    if kind == "caption":
        _refused(lambda: CaptionDataset(root, "train"), "captions.json", "train", f"[{i}]")


@fuzz(40)
@given(meta=json_values | st.fixed_dictionaries({"vocab": json_values}))
def test_meta_json_loads_or_names_the_file(scratch, caption_root, meta):
    root = _caption_copy(scratch, caption_root)
    good = json.loads((root / "meta.json").read_text())
    assume(meta != good)
    (root / "meta.json").write_text(json.dumps(meta))
    _refused(lambda: CaptionDataset(root, "train"), "meta.json")


npz_mutations = st.sampled_from([
    ("category", lambda a: np.array(3)),
    ("category", lambda a: np.full(len(a["category"]), 99)),
    ("category", lambda a: np.full(len(a["category"]), -1)),
    ("colour", lambda a: a["colour"].astype(np.float32) + 0.5),
    ("pattern", lambda a: a["pattern"][:, None].repeat(2, 1)),
    ("heldout", lambda a: np.zeros((len(a["heldout"]), 2), bool)),
    ("names", lambda a: np.arange(len(a["names"]))),
    ("names", lambda a: a["names"][:-1]),
    ("images", lambda a: a["images"].astype(np.float32)),
    ("images", lambda a: a["images"][:, :16]),
    ("images", lambda a: a["images"][..., :1]),
    ("source_index", lambda a: np.zeros(0, np.int64)),
    ("images", None),
])


@fuzz(30)
@given(mutation=npz_mutations)
def test_npz_split_of_wrong_content_is_refused_naming_file_and_field(scratch, caption_root, mutation):
    field, make = mutation
    root = _caption_copy(scratch, caption_root)
    arrays = dict(np.load(root / "train.npz"))
    if make is None:
        del arrays[field]
    else:
        arrays[field] = make(arrays)
    np.savez(root / "train.npz", **arrays)
    _refused(lambda: load_split(root, "train"), "train.npz", field)


@fuzz(30)
@given(cut=st.floats(0.0, 0.999), flip=st.integers(0, 10**6))
def test_npz_split_truncated_or_flipped_is_refused(scratch, caption_root, cut, flip):
    root = _caption_copy(scratch, caption_root)
    raw = bytearray((root / "train.npz").read_bytes())
    if flip % 2:
        raw = raw[:int(len(raw) * cut)]
    else:
        raw[flip % len(raw)] ^= 0xFF
    (root / "train.npz").write_bytes(bytes(raw))
    _refused_or_ok(lambda: load_split(root, "train"), "train.npz")


# -- Fashion-IQ ---------------------------------------------------------------------------------------

def _fiq(root: Path, triplets, gallery, images=("a", "b", "c")) -> Path:
    from PIL import Image

    for sub in ("captions", "image_splits", "images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "captions" / "cap.dress.val.json").write_text(json.dumps(triplets))
    (root / "image_splits" / "split.dress.val.json").write_text(json.dumps(gallery))
    for name in images:
        Image.new("RGB", (6, 8), (200, 10, 10)).save(root / "images" / f"{name}.png")
    return root


triplet = st.fixed_dictionaries(
    {"candidate": st.sampled_from(["a", "b", "zz"]) | json_values},
    optional={"target": st.sampled_from(["a", "c", "missing"]) | json_values,
              "captions": st.lists(st.sampled_from(["is red", "", "  ", "z" * 400]) | json_values, max_size=3)},
)


@fuzz(100)
@given(triplets=json_values | st.lists(triplet, max_size=3),
       gallery=st.lists(st.sampled_from(["a", "b", "c", "nope"]), max_size=3) | json_values)
def test_fashioniq_json_loads_or_names_the_file(scratch, triplets, gallery):
    root = _fiq(_fresh(scratch, "fiq"), triplets, gallery)
    fiq = _refused_or_ok(lambda: FashionIQ(root, "dress", "val"), "dress.val.json")
    if fiq is not None:  # accepted: every named image exists and every caption is usable
        for t in fiq.triplets:
            assert fiq.load_image(t.candidate).mode == "RGB"
            assert all(c and len(c) <= MAX_CAPTION_CHARS for c in t.captions)
        assert set(fiq.gallery) <= {"a", "b", "c"}


@fuzz(30)
@given(missing=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8),
       field=st.sampled_from(["candidate", "target"]))
def test_fashioniq_triplet_naming_a_missing_image_is_refused(scratch, missing, field):
    assume(missing not in ("a", "b", "c"))
    trip = {"candidate": "a", "target": "b", "captions": ["is red"], field: missing}
    root = _fiq(_fresh(scratch, "fiq"), [trip], ["a", "b"])
    _refused(lambda: FashionIQ(root, "dress", "val"), "cap.dress.val.json", f"{field} image {missing!r}",
             "does not exist")


MODES = ["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I", "F", "CMYK", "YCbCr", "HSV"]


@fuzz(60)
@given(mode=st.sampled_from(MODES), w=st.integers(1, 70), h=st.integers(1, 70), size=st.none() | st.integers(-2, 40),
       fmt=st.sampled_from(["PNG", "JPEG", "TIFF", "BMP", "GIF"]))
def test_fashioniq_images_of_any_size_and_mode(scratch, mode, w, h, size, fmt):
    """Any readable image comes back RGB at the requested size (the documented conversion); an
    unwritable combination is skipped; a bad ``size`` is refused by name."""
    from PIL import Image

    root = _fiq(_fresh(scratch, "fiq"), [{"candidate": "a", "target": "b", "captions": ["x"]}], ["a", "b"],
                images=("b",))
    buf = io.BytesIO()
    try:
        Image.new(mode, (w, h)).save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        assume(False)
    (root / "images" / "a.png").write_bytes(buf.getvalue())  # the extension need not match the content
    fiq = FashionIQ(root, "dress", "val")
    img = _refused_or_ok(lambda: fiq.load_image("a", size=size), "a.png" if size is None or size > 0 else "size")
    if size is not None and size <= 0:
        assert img is None
    elif img is not None:
        assert img.mode == "RGB" and img.size == ((size, size) if size else (w, h))


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a" + bytes(20), b"not an image"])
def test_fashioniq_unreadable_image_is_refused(tmp_path, content):
    root = _fiq(tmp_path, [{"candidate": "a", "target": "b", "captions": ["x"]}], ["a", "b"])
    (root / "images" / "a.png").write_bytes(content)
    _refused(lambda: FashionIQ(root, "dress", "val").load_image("a"), "a.png", "cannot read image")


def test_fashioniq_decompression_bomb_is_refused(tmp_path):
    from PIL import Image

    root = _fiq(tmp_path, [{"candidate": "a", "target": "b", "captions": ["x"]}], ["a", "b"])
    Image.new("1", (20_000, 20_000)).save(root / "images" / "a.png")  # 400 Mpx, a few KB on disk
    _refused(lambda: FashionIQ(root, "dress", "val").load_image("a", size=32), "a.png")


# -- FashionGen HDF5 ----------------------------------------------------------------------------------

N_FG = 3
FG_GOOD = {
    "input_image": lambda: np.zeros((N_FG, 8, 8, 3), np.uint8),
    "input_description": lambda: np.array([[b"A cotton shirt."]] * N_FG),
    "input_category": lambda: np.array([[b"SHIRTS"]] * N_FG),
    "input_subcategory": lambda: np.array([[b"SHIRTS"]] * N_FG),
    "input_productID": lambda: np.arange(N_FG).reshape(N_FG, 1),
}
FG_BAD = {
    "missing": None,
    "group": "group",
    "scalar": lambda: np.array(b"x"),
    "scalar number": lambda: np.array(3.0),
    "too few rows": lambda: np.zeros((N_FG - 1, 1), np.int64),
    "empty trailing axis": lambda: np.zeros((N_FG, 0), "S1"),
    "float values": lambda: np.full((N_FG, 1), 0.5, np.float32),
    "nan values": lambda: np.full((N_FG, 1), np.nan, np.float32),
    "text values": lambda: np.array([[b"abc"]] * N_FG),
    "empty text": lambda: np.array([[b""]] * N_FG),
    "long text": lambda: np.array([[b"word " * 20_000]] * N_FG),
    "images float": lambda: np.zeros((N_FG, 8, 8, 3), np.float32),
    "images grey": lambda: np.zeros((N_FG, 8, 8), np.uint8),
    "images rgba": lambda: np.zeros((N_FG, 8, 8, 4), np.uint8),
}


def _write_fg(path: Path, override: dict) -> None:
    import h5py

    with h5py.File(path, "w") as h5:
        for key, make in {**FG_GOOD, **override}.items():
            if make is None:
                continue
            if make == "group":
                h5.create_group(key)
            else:
                h5.create_dataset(key, data=make())


def _read_all(path: Path) -> list[dict]:
    with FashionGen(path) as fg:
        return [fg[i] for i in range(len(fg))]


@fuzz(80)
@given(field=st.sampled_from(sorted(FG_GOOD)), bad=st.sampled_from(sorted(FG_BAD)))
def test_fashiongen_wrong_datasets_are_refused_naming_file_and_dataset(scratch, field, bad):
    path = _fresh(scratch, "fg") / "fashiongen_256_256_validation.h5"
    _write_fg(path, {field: FG_BAD[bad]})
    rows = _refused_or_ok(lambda: _read_all(path), "fashiongen_256_256_validation.h5", field)
    if rows is not None:  # accepted: only where the "bad" value is a legal one for that field
        assert (field, bad) in {("input_subcategory", "missing"), ("input_category", "empty text"),
                                ("input_subcategory", "empty text"),
                                ("input_category", "text values"), ("input_subcategory", "text values"),
                                ("input_description", "text values")}, (field, bad)


def test_fashiongen_good_file_and_truncated_file(tmp_path):
    path = tmp_path / "fg.h5"
    _write_fg(path, {})
    rows = _read_all(path)
    assert [r["product_id"] for r in rows] == [0, 1, 2] and rows[0]["description"] == "A cotton shirt."
    raw = path.read_bytes()
    for keep in (0, 100, len(raw) // 2, len(raw) - 1):
        path.write_bytes(raw[:keep])
        _refused(lambda: _read_all(path), "fg.h5")


# == checkpoints ===================================================================================

@pytest.fixture(scope="module")
def checkpoint_bytes(scratch) -> bytes:
    import torch

    path = scratch / "good.safetensors"
    save_checkpoint(path, {"model.w": torch.arange(12.0).reshape(3, 4), "model.b": torch.zeros(3, dtype=torch.int64)},
                    {"arch": {"name": "toy", "dim": 4}, "step": 3, "history": [{"step": 1, "loss": 0.5}]})
    return path.read_bytes()


@fuzz(120)
@given(edits=st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 10**6),
                                st.integers(0, 255)), min_size=1, max_size=3))
def test_corrupted_checkpoint_loads_or_is_refused_naming_the_file(scratch, checkpoint_bytes, edits):
    raw = bytearray(checkpoint_bytes)
    for op, pos, byte in edits:
        pos = pos % (len(raw) + 1)
        if op == "flip" and pos < len(raw):
            raw[pos] ^= byte or 1
        elif op == "cut":
            raw = raw[:pos]
        elif op == "insert":
            raw[pos:pos] = bytes([byte])
        elif op == "delete":
            del raw[pos:pos + 1]
    path = _fresh(scratch, "ckpt") / "model.safetensors"
    path.write_bytes(bytes(raw))
    _refused_or_ok(lambda: load_checkpoint(path, expect_arch={"name": "toy", "dim": 4}), "model.safetensors")


def test_checkpoint_with_bad_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file
    import torch

    for meta in ({"arch": "{not json"}, {"arch": "[" * 50_000 + "]" * 50_000}, {"arch": "9" * 5000}):
        path = tmp_path / "meta.safetensors"
        save_file({"w": torch.zeros(2)}, str(path), metadata=meta)
        _refused(lambda: load_checkpoint(path), "meta.safetensors", "arch")


def test_checkpoint_of_another_architecture_is_refused_by_a_loader(tmp_path):
    """The model loaders (not only the trainer) refuse a checkpoint of another architecture."""
    import torch

    from lib.judges.classifier import DomainClassifier, load_classifier
    from lib.training import arch_of

    path = tmp_path / "classifier.safetensors"
    model = DomainClassifier(width=4)
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()},
                    {"arch": arch_of("domain_classifier", width=4, feature_dim=256)})
    assert isinstance(load_classifier(path, width=4), DomainClassifier)
    message = _refused(lambda: load_classifier(path, width=8), "classifier.safetensors", "architecture")
    assert re.search(r"'width': 4", message) and re.search(r"'width': 8", message)
    save_checkpoint(path, {"model.w": torch.zeros(1)}, {"arch": {"name": "tokenizer", "ch": 8}})
    _refused(lambda: load_classifier(path, width=4), "classifier.safetensors", "tokenizer")
