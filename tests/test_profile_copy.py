"""Profiles other than default run in a copy, so trying one leaves the checkout clean (issue 20)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from lib.store import repo_root

spec = importlib.util.spec_from_file_location("profile_copy", repo_root() / "reproduce" / "profile_copy.py")
profile_copy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile_copy)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def checkout(tmp_path):
    src = tmp_path / "src"
    for rel, text in {"lib/a.py": "a = 1\n", "lib/gone.py": "g = 1\n", "params.yaml": "profile: default\n",
                      "dvc.lock": "committed lock\n", "results/x/metrics.json": "{\"v\": 1}\n",
                      ".gitignore": "/data\n/runs/\n/.venv/\n"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    (src / "data").mkdir()
    (src / "data" / "big.bin").write_text("real data")
    _git(src, "init", "-q")
    _git(src, "add", "-A")
    _git(src, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return src


def test_copy_carries_uncommitted_code_but_not_this_checkouts_results(checkout):
    src = checkout
    (src / "lib" / "a.py").write_text("a = 2\n")           # modified
    (src / "lib" / "new.py").write_text("n = 1\n")         # added, untracked
    (src / "lib" / "gone.py").unlink()                     # deleted
    (src / "results" / "x" / "metrics.json").write_text("{\"v\": 999}\n")  # a default run's output
    (src / "dvc.lock").write_text("default run lock\n")
    before = _git(src, "status", "--porcelain")
    dest = profile_copy.sync(src / "runs" / "smoke", src)
    assert (dest / "lib" / "a.py").read_text() == "a = 2\n" and (dest / "lib" / "new.py").is_file()
    assert not (dest / "lib" / "gone.py").exists()
    assert (dest / "results" / "x" / "metrics.json").read_text() == "{\"v\": 1}\n"  # HEAD's, not the local run's
    assert (dest / "dvc.lock").read_text() == "committed lock\n"
    assert (dest / "data" / "big.bin").read_text() == "real data"  # linked, not copied
    assert "dir = " in (dest / ".dvc" / "config.local").read_text()
    assert _git(dest, "rev-parse", "HEAD") == _git(src, "rev-parse", "HEAD")  # provenance keeps the revision
    assert _git(src, "status", "--porcelain") == before  # nothing here changed


def test_refresh_reverts_what_is_no_longer_changed_and_keeps_the_copys_own_outputs(checkout):
    src = checkout
    (src / "lib" / "a.py").write_text("a = 2\n")
    (src / "lib" / "new.py").write_text("n = 1\n")
    (src / "lib" / "gone.py").unlink()
    dest = profile_copy.sync(src / "runs" / "smoke", src)
    (dest / "results" / "x" / "metrics.json").write_text("{\"v\": \"smoke\"}\n")  # the copy's own run
    _git(src, "checkout", "--", "lib/a.py", "lib/gone.py")
    (src / "lib" / "new.py").unlink()
    profile_copy.sync(dest, src)
    assert (dest / "lib" / "a.py").read_text() == "a = 1\n" and (dest / "lib" / "gone.py").is_file()
    assert not (dest / "lib" / "new.py").exists()
    assert (dest / "results" / "x" / "metrics.json").read_text() == "{\"v\": \"smoke\"}\n"


def test_a_new_commit_starts_the_copy_from_it(checkout):
    src = checkout
    dest = profile_copy.sync(src / "runs" / "smoke", src)
    (src / "lib" / "a.py").write_text("a = 3\n")
    _git(src, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "next")
    profile_copy.sync(dest, src)
    assert (dest / "lib" / "a.py").read_text() == "a = 3\n"
    assert _git(dest, "rev-parse", "HEAD") == _git(src, "rev-parse", "HEAD")


def test_a_copy_inside_the_tracked_tree_or_over_a_foreign_folder_is_refused(checkout, tmp_path):
    with pytest.raises(SystemExit, match="outside the checkout's tracked tree"):
        profile_copy.sync(checkout / "lib" / "smoke", checkout)
    foreign = tmp_path / "elsewhere"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not a profile copy"):
        profile_copy.sync(foreign, checkout)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_reproduce_run_smoke_leaves_the_checkout_clean():
    """The way a user meets it: ``reproduce/run --profile smoke -- --dry data`` (DVC plans the data
    stage without running it) goes through the copy; this checkout's ``git status`` and params.yaml
    are what they were, and the copy's params.yaml says smoke."""
    import os
    import shutil

    root = repo_root()
    if shutil.which("uv") is None or not (root / ".venv" / "bin" / "python").exists():
        pytest.skip("needs the environment reproduce/run builds (uv and .venv)")
    before = _git(root, "status", "--porcelain")
    params_before = (root / "params.yaml").read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "ATELIER_OUT"}
    proc = subprocess.run(["bash", "reproduce/run", "--profile", "smoke", "--", "--dry", "data"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "runs/smoke" in proc.stdout and "Running stage 'data'" in proc.stdout
    assert _git(root, "status", "--porcelain") == before
    assert (root / "params.yaml").read_bytes() == params_before
    assert "profile: smoke" in (root / "runs" / "smoke" / "params.yaml").read_text()
