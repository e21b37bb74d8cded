"""Issue 8, guarantee (1): training of every model kind resumes after SIGKILL mid-epoch, from its last
checkpoint, and ends with exactly the weights (and optimizer state and loss history) of an
uninterrupted run with the same seed, on CPU with one thread.

Every run is a real process (forked by the server in tests/_kill_resume_worker.py, which imports
torch once); the kill is a real SIGKILL, so nothing in the killed process gets to clean up or flush.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.store import repo_root
from tests._kill_resume_worker import KINDS

STEPS = 20
CKPT_EVERY = 5
# 20 steps of 3-batch epochs: the last checkpoint before the kill (step 10) and the kill (after
# step 13) both fall mid-epoch; the tokenizer's discriminator switches on at step 6.
PAUSE_AT = 13
TIMEOUT_S = 60


class ForkServer:
    """Client of ``python -m tests._kill_resume_worker serve``."""

    def __init__(self, log: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.log = log
        self._stderr = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests._kill_resume_worker", "serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     cwd=repo_root(), env=env, text=True, bufsize=1)
        assert self._read(timeout=120) == {"ready": True}, self._tail()

    def _tail(self) -> str:
        self._stderr.flush()
        return self.log.read_text()[-3000:]

    def _read(self, timeout: float = TIMEOUT_S) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"fork server silent for {timeout} s; its log:\n{self._tail()}")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"fork server died; its log:\n{self._tail()}")
        return json.loads(line)

    def _ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(self, kind: str, ckpt: Path, progress: Path, pause_at: int | None = None) -> int:
        return self._ask(op="run", kind=kind, ckpt=str(ckpt), steps=STEPS, ckpt_every=CKPT_EVERY,
                         pause_at=pause_at, progress=str(progress))["pid"]

    def wait(self, pid: int) -> dict:
        return self._ask(op="wait", pid=pid)

    def run(self, kind: str, ckpt: Path, progress: Path) -> None:
        """Train to completion (from scratch or from ``ckpt``); fail with the child's log otherwise."""
        ended = self.wait(self.start(kind, ckpt, progress))
        assert ended == {"exit": 0}, f"{kind}: run ended with {ended}; log:\n{self._tail()}"

    def close(self) -> None:
        try:
            self._ask(op="quit")
        finally:
            self.proc.kill()
            self.proc.wait()
            self._stderr.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.set_num_threads(1)
    srv = ForkServer(tmp_path_factory.mktemp("fork_server") / "server.log")
    yield srv
    srv.close()


def _lines(progress: Path) -> list[str]:
    return progress.read_text().split() if progress.exists() else []


def _steps(progress: Path) -> list[int]:
    text = progress.read_text() if progress.exists() else ""
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith("step ")]


def _wait_for(predicate, what: str, timeout: float = TIMEOUT_S) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, {k: json.loads(v) for k, v in fh.metadata().items()}


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Model weights, buffers, optimizer state and history bit-identical (torch.equal)."""
    ta, ma = _checkpoint(a)
    tb, mb = _checkpoint(b)
    assert sorted(ta) == sorted(tb)
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} of {len(ta)} tensors differ after resume, e.g. {differ[:5]}"
    assert ma == mb  # step, arch, optimizer hyper-parameters, the whole loss history


@pytest.fixture(scope="module")
def references(server, tmp_path_factory):
    """Uninterrupted runs, one per kind (computed lazily, shared by the tests below)."""
    root = tmp_path_factory.mktemp("reference")
    done: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in done:
            ckpt = root / f"{kind}.safetensors"
            server.run(kind, ckpt, root / f"{kind}.progress")
            assert _steps(root / f"{kind}.progress") == list(range(1, STEPS + 1))
            done[kind] = ckpt
        return done[kind]

    return get


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(kind, server, references, tmp_path):
    ckpt, progress = tmp_path / "ckpt.safetensors", tmp_path / "progress.txt"
    pid = server.start(kind, ckpt, progress, pause_at=PAUSE_AT)
    _wait_for(lambda: "paused" in _lines(progress), f"{kind} to reach step {PAUSE_AT}")
    os.kill(pid, signal.SIGKILL)
    assert server.wait(pid) == {"signal": signal.SIGKILL}

    # The kill left the checkpoint of step 10 and lost steps 11-13 (they were only in memory).
    _, meta = _checkpoint(ckpt)
    last = PAUSE_AT // CKPT_EVERY * CKPT_EVERY
    assert meta["step"] == last and len(meta["history"]) == last

    server.run(kind, ckpt, progress)
    assert _steps(progress) == list(range(1, PAUSE_AT + 1)) + list(range(last + 1, STEPS + 1)), \
        "the restarted run must continue from the checkpoint's step, not start over"
    assert_same_checkpoint(ckpt, references(kind))


@pytest.mark.parametrize("kind", ["domain_classifier", "tokenizer_vq"])
def test_repeated_sigkill_at_arbitrary_moments(kind, server, references, tmp_path):
    """Kills land wherever the process happens to be -- inside a step, inside a checkpoint write
    -- three times in one run; the run still ends with the uninterrupted run's weights."""
    ckpt, progress = tmp_path / "ckpt.safetensors", tmp_path / "progress.txt"
    thresholds = sorted(np.random.default_rng(len(kind)).choice(np.arange(3, STEPS - 2), size=3, replace=False))
    for threshold in thresholds:
        progress.unlink(missing_ok=True)
        pid = server.start(kind, ckpt, progress)
        _wait_for(lambda: (_steps(progress) or [0])[-1] >= threshold or "done" in _lines(progress),
                  f"{kind} to pass step {threshold}")
        os.kill(pid, signal.SIGKILL)
        server.wait(pid)
        if ckpt.exists():  # never a truncated file, whatever the moment
            _, meta = _checkpoint(ckpt)
            assert 0 < meta["step"] <= STEPS
    server.run(kind, ckpt, progress)
    assert_same_checkpoint(ckpt, references(kind))


def test_resume_comparison_detects_a_different_run(server, references, tmp_path):
    """The comparison above is not vacuous: a run with one step fewer before its end differs."""
    ckpt, progress = tmp_path / "ckpt.safetensors", tmp_path / "progress.txt"
    pid = server.start("domain_classifier", ckpt, progress, pause_at=PAUSE_AT)
    _wait_for(lambda: "paused" in _lines(progress), "the classifier to pause")
    os.kill(pid, signal.SIGKILL)
    server.wait(pid)
    with pytest.raises(AssertionError, match="tensors differ"):
        assert_same_checkpoint(ckpt, references("domain_classifier"))
