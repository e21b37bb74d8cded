"""Issue 8, guarantee (4): with a fixed seed, runs on CPU are identical.

The full smoke pipeline twice is too slow for CI, so its parts are checked instead: the data stage's
build at smoke size twice, in two processes with different string-hash seeds, byte for byte; tiny
trainings of a classifier, a contrastive judge and a tokenizer twice (ambient RNG state disturbed
in between), bit for bit and metrics dict for metrics dict; and ``reproduce/compare_metrics.py``,
the helper that checks two full smoke runs by hand, on what it must ignore and what it must not.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lib.config as params
from lib.store import repo_root
from lib.provenance import run_info, write_metrics

COMPARE = repo_root() / "reproduce" / "compare_metrics.py"


def _compare_module():
    spec = importlib.util.spec_from_file_location("compare_metrics", COMPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compare_cli(a: Path, b: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(COMPARE), str(a), str(b), *extra], capture_output=True, text=True,
                          timeout=60)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- the data stage at smoke size -----------------------------------------------------------------

BUILD = """
import sys
import lib.config as params
from lib.data.build import build_caption_dataset
from lib.store import data_dir
d = params.load("smoke")["data"]
build_caption_dataset(
    data_dir() / "fashion-mnist", sys.argv[1], seed=params.load("smoke")["seed"],
    captions_per_image=d["captions_per_image"], val_size=d["val_size"],
    heldout_per_category=d["heldout_per_category"], heldout_test_fraction=d["heldout_test_fraction"],
    max_per_split={"train": d["max_train"], "val": d["max_val"], "test": d["max_test"]},
)
"""


@pytest.fixture(scope="module")
def two_smoke_builds(tmp_path_factory):
    """The 00_data notebook's build call at smoke size, run twice in fresh processes whose string
    hashing differs (set/dict-of-str iteration order must not leak into outputs)."""
    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path_factory.mktemp(f"build{hash_seed}") / "captions"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", BUILD, str(out)], cwd=repo_root(), env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(out)
    return outs


def test_smoke_data_build_is_byte_identical(two_smoke_builds):
    a, b = two_smoke_builds
    digest_a, digest_b = _tree_digest(a), _tree_digest(b)
    smoke = params.load("smoke")["data"]
    assert len(digest_a) > 100  # the npz splits, captions/meta JSON and every Fashion-IQ file
    assert json.loads((a / "meta.json").read_text())["counts"] == {
        "train": smoke["max_train"], "val": smoke["max_val"], "test": smoke["max_test"]}
    assert sorted(digest_a) == sorted(digest_b)
    differ = [name for name in digest_a if digest_a[name] != digest_b[name]]
    assert not differ, f"{len(differ)} files differ between two identical builds, e.g. {differ[:5]}"


def test_data_metrics_of_two_builds_compare_equal(two_smoke_builds, tmp_path):
    """The data stage's metrics.json of both builds, provenance included (run_info's timestamp and
    git revision aside), through the comparison helper."""
    from lib.data.caption_dataset import CaptionDataset
    from lib.io import sha256_file

    for i, out in enumerate(two_smoke_builds):
        ds = CaptionDataset(out, "train")
        metrics = {"counts": ds.meta["counts"], "fashioniq_triplets": ds.meta["fashioniq_triplets"],
                   "distinct_captions_train": len({c for caps in ds.captions for c in caps}),
                   "category_hist": np.bincount(ds.arrays["category"], minlength=10).tolist()}
        prov = run_info("smoke", 0, recipe=ds.meta["recipe"],
                        files_sha256={f"{s}.npz": sha256_file(out / f"{s}.npz") for s in ("train", "val", "test")})
        write_metrics(tmp_path / f"run{i}" / "00_data" / "metrics.json", metrics, prov)
    proc = _compare_cli(tmp_path / "run0", tmp_path / "run1")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- tiny trainings twice -------------------------------------------------------------------------

def _disturb_ambient_rng() -> None:
    """Leave the global RNGs somewhere else: a run must depend on its seed only."""
    torch.manual_seed(12345)
    torch.rand(7)
    np.random.seed(999)


def _arrays(n: int = 24) -> dict:
    rng = np.random.default_rng(0)
    return {"images": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "category": rng.integers(0, 10, n),
            "colour": rng.integers(0, 10, n), "pattern": rng.integers(0, 4, n)}


def _checkpoint(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Every tensor bit-identical (model, buffers, optimizer) and the same metadata (arch, step,
    loss history). Not the file bytes: see test_checkpoint_files_are_byte_identical."""
    (ta, ma), (tb, mb) = _checkpoint(a), _checkpoint(b)
    assert sorted(ta) == sorted(tb) and ma == mb
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} of {len(ta)} tensors differ, e.g. {differ[:5]}"


def _twice(train, tmp_path: Path) -> tuple[Path, Path, list, list]:
    ckpts, results = [], []
    for i in range(2):
        _disturb_ambient_rng()
        ckpt = tmp_path / f"run{i}" / "model.safetensors"
        results.append(train(ckpt))
        ckpts.append(ckpt)
    return ckpts[0], ckpts[1], results[0], results[1]


def test_classifier_trained_twice_is_bit_identical(tmp_path):
    from lib.judges.classifier import evaluate_classifier, train_classifier

    torch.set_num_threads(1)
    arrays = _arrays()

    def train(ckpt):
        model, history = train_classifier(arrays, ckpt, steps=12, batch_size=8, seed=3, width=4, progress=False)
        return history, evaluate_classifier(model, arrays)

    a, b, (hist_a, eval_a), (hist_b, eval_b) = _twice(train, tmp_path)
    assert_same_checkpoint(a, b)
    assert hist_a == hist_b and eval_a == eval_b
    # ... and through metrics.json + the helper, with per-run provenance in between
    for i, (hist, ev) in enumerate(((hist_a, eval_a), (hist_b, eval_b))):
        write_metrics(tmp_path / f"m{i}.json", {**ev, "final_loss": hist[-1]["loss"], "train_seconds": 1.0 + i},
                      run_info("smoke", 3))
    assert _compare_cli(tmp_path / "m0.json", tmp_path / "m1.json").returncode == 0


def test_contrastive_judge_trained_twice_is_bit_identical(tmp_path):
    from lib.judges.contrastive import TEXT_DIM, train_judge

    torch.set_num_threads(1)
    arrays = _arrays()
    rng = np.random.default_rng(1)
    ids, table = rng.integers(0, 30, (24, 3)), torch.from_numpy(rng.standard_normal((30, TEXT_DIM)).astype(np.float32))

    def train(ckpt):
        return train_judge(arrays, ids, table, ckpt, steps=12, batch_size=8, seed=3, width=4, embed_dim=8,
                           progress=False)[1]

    a, b, hist_a, hist_b = _twice(train, tmp_path)
    assert_same_checkpoint(a, b)
    assert hist_a == hist_b


def test_tokenizer_trained_twice_is_bit_identical(tmp_path):
    from lib.models.tokenizer import Tokenizer, train_tokenizer

    torch.set_num_threads(1)
    images = torch.from_numpy(_arrays()["images"][:, :16, :16]).permute(0, 3, 1, 2).float() / 127.5 - 1
    cfg = {"image_size": 16, "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "z_dim": 8, "quantizer": "vq",
           "quantizer_kwargs": {"codebook_size": 64, "kmeans_init": True, "restart_dead": True, "dead_after_steps": 2}}

    def train(ckpt):
        torch.manual_seed(3)  # the stage seeds before building the model
        return train_tokenizer(Tokenizer(cfg), images, ckpt, steps=12, batch_size=8, seed=3, perceptual_weight=0.0,
                               gan_start=6, disc_ndf=8, progress=False)

    a, b, hist_a, hist_b = _twice(train, tmp_path)
    assert_same_checkpoint(a, b)
    assert hist_a == hist_b


def test_different_seeds_differ(tmp_path):
    """The equalities above are not vacuous: another seed gives other weights."""
    from lib.judges.classifier import train_classifier

    torch.set_num_threads(1)
    for seed in (3, 4):
        train_classifier(_arrays(), tmp_path / f"s{seed}.safetensors", steps=4, batch_size=8, seed=seed, width=4,
                         progress=False)
    with pytest.raises(AssertionError, match="tensors differ|assert"):
        assert_same_checkpoint(tmp_path / "s3.safetensors", tmp_path / "s4.safetensors")


def test_checkpoint_files_are_byte_identical(tmp_path):
    from lib.io import save_checkpoint

    meta = {"arch": {"name": "toy"}, "step": 3, "seed": 0, "total_steps": 3, "history": [], "optimizer": {}}
    digests = set()
    for i in range(4):
        save_checkpoint(tmp_path / f"c{i}.safetensors", {"w": torch.arange(4.0)}, meta)
        digests.add(hashlib.sha256((tmp_path / f"c{i}.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1


# -- reproduce/compare_metrics.py -----------------------------------------------------------------

METRICS = {
    "metrics": {"fid": 12.5, "accuracy": {"category": 0.9, "colour": 0.8}, "rows": [{"name": "vq", "psnr": 21.0}],
                "train_seconds": 81.2, "images_per_s": 400.0},
    "provenance": {"seed": 0, "profile": "smoke", "git_revision": "abc-dirty", "created": "2026-01-01T00:00:00+00:00",
                   "peak_rss_mb": 812.3, "timings": {"eval_s": 3.0, "elapsed": 9.0}},
}


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def test_compare_ignores_timings_memory_timestamps_and_revision(tmp_path):
    other = json.loads(json.dumps(METRICS))
    other["metrics"].update(train_seconds=95.0, images_per_s=350.0)
    other["provenance"].update(git_revision="def", created="2026-02-02T00:00:00+00:00", peak_rss_mb=900.0,
                               timings={"eval_s": 4.0, "elapsed": 11.0})
    a, b = _write(tmp_path / "a" / "x" / "metrics.json", METRICS), _write(tmp_path / "b" / "x" / "metrics.json", other)
    assert _compare_module().compare(a, b) == []
    proc = _compare_cli(tmp_path / "a", tmp_path / "b")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("change, expected", [
    (lambda m: m["metrics"].update(fid=12.500001), "metrics.fid: 12.5 != 12.500001"),
    (lambda m: m["metrics"]["accuracy"].pop("colour"), "metrics.accuracy.colour: only in A"),
    (lambda m: m["metrics"]["rows"][0].update(psnr=20.0), "metrics.rows[0].psnr: 21.0 != 20.0"),
    (lambda m: m["metrics"]["rows"].append({}), "metrics.rows: list of 1 != list of 2"),
    (lambda m: m["provenance"].update(seed=1), "provenance.seed: 0 != 1"),
    (lambda m: m["metrics"].update(fid="12.5"), 'metrics.fid: 12.5 != "12.5"'),
])
def test_compare_reports_every_real_difference(tmp_path, change, expected):
    other = json.loads(json.dumps(METRICS))
    change(other)
    a, b = _write(tmp_path / "a.json", METRICS), _write(tmp_path / "b.json", other)
    proc = _compare_cli(a, b)
    assert proc.returncode == 1 and expected in proc.stdout, proc.stdout + proc.stderr


def test_compare_trees_and_tolerance(tmp_path):
    _write(tmp_path / "a" / "01" / "metrics.json", METRICS)
    _write(tmp_path / "b" / "01" / "metrics.json", METRICS)
    _write(tmp_path / "a" / "02" / "metrics.json", METRICS)
    proc = _compare_cli(tmp_path / "a", tmp_path / "b")
    assert proc.returncode == 1 and "02/metrics.json: only in A" in proc.stdout
    near = json.loads(json.dumps(METRICS))
    near["metrics"]["fid"] = 12.5 * (1 + 1e-9)
    a, b = _write(tmp_path / "n" / "a.json", METRICS), _write(tmp_path / "n" / "b.json", near)
    assert _compare_cli(a, b).returncode == 1
    assert _compare_cli(a, b, "--rtol", "1e-6").returncode == 0
    assert _compare_cli(a, b, "--ignore", "fid").returncode == 0
    (tmp_path / "n" / "bad.json").write_text("{")
    assert _compare_cli(a, tmp_path / "n" / "bad.json").returncode == 2
