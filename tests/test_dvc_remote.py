"""Sharing trained models through a DVC remote (issue 20, item 4; reproduce/dvc_remote.py).

A toy DVC project stands in for the pipeline: its one stage counts how often its command runs, so
"a second clone pulls and dvc repro re-runs nothing" is checked directly, not inferred from output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "reproduce"))
import dvc_remote  # noqa: E402

STAGE = """stages:
  train:
    cmd: python -c "import pathlib; p = pathlib.Path('{runs}'); p.write_text(p.read_text() + 'x') if p.exists() else p.write_text('x'); pathlib.Path('model').mkdir(exist_ok=True); pathlib.Path('model/weights.bin').write_bytes(bytes(range(256)) * 64)"
    deps:
      - train.py
    outs:
      - model
"""


def _run(cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} in {cwd}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _dvc(cwd: Path, *args: str) -> str:
    return _run(cwd, sys.executable, "-m", "dvc", *args)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    repo, runs = tmp_path / "first", tmp_path / "stage_runs.txt"
    repo.mkdir()
    _run(repo, "git", "init", "-q")
    _run(repo, "git", "config", "user.email", "t@example.org")
    _run(repo, "git", "config", "user.name", "t")
    _dvc(repo, "init", "-q")
    (repo / "dvc.yaml").write_text(STAGE.format(runs=runs.as_posix()))
    (repo / "train.py").write_text("# stands in for the training code\n")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", "toy pipeline")
    return repo, runs


def test_push_from_one_clone_then_pull_in_another_reruns_nothing(project, tmp_path):
    first, runs = project
    remote = tmp_path / "team" / "atelier-dvc"
    assert dvc_remote.default_remote(first) is None
    assert dvc_remote.set_remote(str(remote), first) == str(remote.resolve())
    assert dvc_remote.default_remote(first) == (dvc_remote.NAME, str(remote.resolve()))
    assert not _run(first, "git", "status", "--porcelain").strip(), "the remote must not be a tracked change"
    _dvc(first, "repro")
    assert runs.read_text() == "x"
    assert "pushed" in dvc_remote.push(first)
    _run(first, "git", "add", "dvc.lock")
    _run(first, "git", "commit", "-q", "-m", "trained")

    second = tmp_path / "second"
    _run(tmp_path, "git", "clone", "-q", str(first), str(second))
    assert not (second / "model").exists()
    dvc_remote.set_remote(str(remote), second)
    assert "pulled" in dvc_remote.pull(second)
    assert (second / "model" / "weights.bin").read_bytes() == (first / "model" / "weights.bin").read_bytes()
    out = _dvc(second, "repro")
    assert runs.read_text() == "x", f"dvc repro in the second clone re-ran the stage:\n{out}"
    assert "didn't change" in out or "up to date" in out.lower()
    assert "Data and pipelines are up to date" in _dvc(second, "status")


def test_without_a_remote_nothing_changes_and_bad_locations_are_refused_with_the_reason(project, tmp_path):
    first, _ = project
    assert "no DVC remote configured" in dvc_remote.pull(first)
    assert "no DVC remote configured" in dvc_remote.push(first)
    assert not (first / ".dvc" / "config.local").exists()
    with pytest.raises(dvc_remote.RemoteError, match="inside the checkout"):
        dvc_remote.set_remote(str(first / "remote"), first)
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    with pytest.raises(dvc_remote.RemoteError, match="not a directory"):
        dvc_remote.set_remote(str(a_file), first)
    with pytest.raises(dvc_remote.RemoteError, match="empty location"):
        dvc_remote.set_remote(" ", first)
    assert dvc_remote.default_remote(first) is None


def test_a_profile_copy_gets_the_same_remote(project, tmp_path):
    first, _ = project
    copy = tmp_path / "copy"
    _run(tmp_path, "git", "clone", "-q", str(first), str(copy))
    assert dvc_remote.copy_remote(first, copy) is None and dvc_remote.default_remote(copy) is None
    dvc_remote.set_remote("s3://bucket/atelier", first)  # a URL is kept as written (its plugin pushes)
    assert dvc_remote.copy_remote(first, copy) == (dvc_remote.NAME, "s3://bucket/atelier")
    assert dvc_remote.default_remote(copy) == (dvc_remote.NAME, "s3://bucket/atelier")


def test_run_script_asks_for_the_remote_location():
    proc = subprocess.run(["bash", str(ROOT / "reproduce" / "run"), "--remote"], capture_output=True, text=True)
    assert proc.returncode != 0 and "--remote needs a directory or a URL" in proc.stderr
