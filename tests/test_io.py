"""Atomic writes and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from lib.io import AtelierInputError, atomic_path, atomic_write_json, load_checkpoint, read_json, save_checkpoint
from lib.store import repo_root


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{\"a\": 2, partial")
            raise RuntimeError("killed mid-write")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind


def test_checkpoint_round_trip_and_arch_check(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    save_checkpoint(path, tensors, {"arch": {"name": "toy", "dim": 4}, "step": 7})
    loaded, meta = load_checkpoint(path, expect_arch={"name": "toy", "dim": 4})
    assert torch.equal(loaded["w"], tensors["w"]) and meta["step"] == 7
    with pytest.raises(AtelierInputError, match=r"ckpt\.safetensors: checkpoint is for architecture"):
        load_checkpoint(path, expect_arch={"name": "toy", "dim": 8})


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"w": torch.randn(64, 64)}, {"arch": {"name": "toy"}})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(AtelierInputError, match=r"ckpt\.safetensors: truncated or corrupt"):
        load_checkpoint(path)


def test_read_json_errors_name_file(tmp_path):
    with pytest.raises(AtelierInputError, match=r"nothere\.json: file not found"):
        read_json(tmp_path / "nothere.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(AtelierInputError, match=r"bad\.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_metrics_json_names_repository_files_relative_to_the_repo(tmp_path):
    from lib.provenance import portable_paths, write_metrics

    root = repo_root()
    inside = str(root / "artifacts" / "cache" / "fid_stats" / "ref.npz")
    doc = {"a": inside, "nested": [{"ckpt": str(root / "artifacts/generators/muse/model.safetensors")}, 3],
           "outside": "/usr/share/dataset/x.gz", "near_miss": str(root) + "_other/file", "text": "a /work path"}
    out = portable_paths(doc, root)
    assert out["a"] == "artifacts/cache/fid_stats/ref.npz"
    assert out["nested"] == [{"ckpt": "artifacts/generators/muse/model.safetensors"}, 3]
    assert out["outside"] == doc["outside"] and out["near_miss"] == doc["near_miss"] and out["text"] == doc["text"]
    path = write_metrics(tmp_path / "m.json", {"fid": 1.0}, {"reference_cache": inside})
    written = json.loads(path.read_text())
    assert written["provenance"]["reference_cache"] == "artifacts/cache/fid_stats/ref.npz"
    assert written["metrics"] == {"fid": 1.0} and "peak_rss_mb" in written["provenance"]
