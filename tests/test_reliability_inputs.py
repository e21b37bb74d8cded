"""Issue 18 item 4: bad inputs met from the outside (a CLI in a copied checkout), one line naming
the file and key."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lib.config as params
from lib.io import AtelierInputError
from lib.store import repo_root


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of what ``python -m lib.config`` reads: lib/, dvc.yaml and params.yaml."""
    root = tmp_path / "checkout"
    shutil.copytree(repo_root() / "lib", root / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(repo_root() / name, root / name)
    return root


def _check(root: Path, profile: str = "default") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lib.config", "--check", profile], cwd=root,
                          capture_output=True, text=True, timeout=120)


def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) >= 1, old
    path.write_text(text.replace(old, new, 1))


def test_unchanged_copy_validates(checkout):
    proc = _check(checkout)
    assert proc.returncode == 0, proc.stderr
    assert "image_size: 32" in proc.stdout


def test_key_written_twice_is_refused_naming_file_key_and_lines(checkout):
    path = checkout / "params.yaml"
    _replace_once(path, "  lr: 0.0004\n", "  lr: 0.0004\n  lr: 0.9\n")
    lines = path.read_text().splitlines()
    first = lines.index("  lr: 0.0004") + 1
    proc = _check(checkout)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr  # one line, no traceback
    assert "params.yaml" in err[0] and "'lr' written twice" in err[0]
    assert f"lines {first} and {first + 1}" in err[0]


def test_same_key_in_two_mappings_is_not_a_duplicate(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(repo_root() / "params.yaml", path)
    raw = params.read(path)
    assert "lr" in raw["tokenizers"] and "lr" in raw["generation"]  # the loader keys per mapping


@pytest.mark.parametrize("size, message", [
    (30, r"tokenizers\.image_size: must equal the side of the rendered images \(32\), got 30"),
    (64, r"tokenizers\.image_size: must equal the side of the rendered images \(32\), got 64"),
])
def test_image_size_the_data_do_not_have_is_refused(checkout, size, message):
    _replace_once(checkout / "params.yaml", "  image_size: 32\n", f"  image_size: {size}\n")
    proc = _check(checkout)
    assert proc.returncode != 0
    assert re.search(message, proc.stderr), proc.stderr
    with pytest.raises(AtelierInputError, match=message):
        params.load("default", checkout / "params.yaml")


def test_image_size_not_divisible_by_the_downsampling_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    text = (repo_root() / "params.yaml").read_text()
    path.write_text(text.replace("  ch_mult: [1, 2, 2]", "  ch_mult: [1, 2, 2, 2, 2, 2, 2]", 1))
    with pytest.raises(AtelierInputError, match=r"divisible by the downsampling factor 64"):
        params.load("default", path)

