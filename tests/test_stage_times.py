"""reproduce/stage_times.py: per-stage wall times of a dvc repro, from DVC's own log lines."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from lib.io import AtelierInputError
from lib.store import repo_root

SPEC = importlib.util.spec_from_file_location("stage_times", repo_root() / "reproduce" / "stage_times.py")
ST = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ST)


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_stage_seconds_run_from_one_dvc_event_to_the_next():
    clock = FakeClock()
    sc = ST.StageClock("default", ["dvc", "repro"], started=990.0, clock=clock)
    events = [(0, "Stage 'data' didn't change, skipping"), (2, "Running stage 'tokenizer@vq':"),
              (3, "> python -m lib.stages.tokenizer stage ..."), (62, "Running stage 'tokens@vq':"),
              (70, "Stage 'generator@muse' is cached - skipping run, checking out outputs")]
    for t, line in events:
        clock.t = 1000.0 + t
        sc.feed(line)
    clock.t = 1075.0
    doc = sc.finish(0)
    got = [(s["stage"], s["status"], s["offset_seconds"], s["seconds"]) for s in doc["stages"]]
    assert got == [("data", "skipped", 0.0, 2.0), ("tokenizer@vq", "ran", 2.0, 60.0), ("tokens@vq", "ran", 62.0, 8.0),
                   ("generator@muse", "checked out", 70.0, 5.0)]
    assert doc["setup_seconds"] == 10.0 and doc["repro_seconds"] == 75.0 and doc["total_seconds"] == 85.0
    assert doc["stages_ran"] == 2 and doc["stage_seconds_ran"] == 68.0 and doc["returncode"] == 0


def test_a_failed_run_marks_its_last_stage_and_is_written_as_it_goes(tmp_path):
    out = tmp_path / "t" / "default.json"
    code = ST.run([sys.executable, "-c", "print(\"Running stage 'a':\"); print('x'); "
                                         "print(\"Running stage 'b':\"); raise SystemExit(3)"], "default", out)
    doc = json.loads(out.read_text())
    assert code == 3 and doc["returncode"] == 3
    assert [(s["stage"], s["status"]) for s in doc["stages"]] == [("a", "ran"), ("b", "failed")]
    assert all(s["seconds"] is not None and s["seconds"] >= 0 for s in doc["stages"])


def _notebook_with_error(path, evalue):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "source": "# data"},
        {"cell_type": "code", "outputs": [{"output_type": "stream", "text": "ok"}]},
        {"cell_type": "code", "outputs": [{"output_type": "error", "ename": "AtelierInputError", "evalue": evalue,
                                           "traceback": ["\x1b[0;31m---\x1b[0m"] * 65}]}]}))


def test_a_failed_notebook_stage_ends_with_the_librarys_one_line_reason(tmp_path, monkeypatch, capsys):
    """Issue 18: papermill's 65-line traceback used to be the last thing a failed notebook stage printed."""
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "artifacts" / "executed" / "01_judges.ipynb"
    _notebook_with_error(old, "an error of an earlier run")
    os.utime(old, (1.0, 1.0))  # written before this run: not this failure's reason
    fake_dvc = ("import json, pathlib, sys; print(\"Running stage 'data':\", flush=True); "
                "sys.path.insert(0, %r); import test_stage_times as t; "
                "t._notebook_with_error(pathlib.Path('artifacts/executed/00_data.ipynb'), "
                "'data/fashion-mnist/train-images-idx3-ubyte.gz: bad magic 2049,\\n expected 2051'); "
                "raise SystemExit(1)") % str(repo_root() / "tests")
    out = tmp_path / "t.json"
    assert ST.run([sys.executable, "-c", fake_dvc], "default", out) == 1
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == ("error: stage 'data' failed in artifacts/executed/00_data.ipynb (code cell 2): AtelierInputError: "
                         "data/fashion-mnist/train-images-idx3-ubyte.gz: bad magic 2049, expected 2051")
    doc = json.loads(out.read_text())
    assert doc["stages"][-1]["error"]["error"].startswith("AtelierInputError: data/fashion-mnist/")
    # a failure with no notebook of its own (a python -m stage prints its own line) names none
    assert ST.run([sys.executable, "-c", "print(\"Running stage 'tokens':\"); raise SystemExit(2)"], "default", out) == 2
    assert "error" not in json.loads(out.read_text())["stages"][-1]
    assert ST.notebook_error(tmp_path / "nowhere", 0.0) is None


def test_smoke_timing_stays_out_of_the_committed_results_and_a_command_is_required(tmp_path):
    assert ST.default_out("smoke").parts[-3:] == ("artifacts", "timing", "smoke.json")
    assert ST.default_out("default").parts[-3:] == ("results", "timing", "default.json")
    with pytest.raises(AtelierInputError, match="no command given"):
        ST.run([], "default", tmp_path / "x.json")


RS_SPEC = importlib.util.spec_from_file_location("readme_speed", repo_root() / "reproduce" / "readme_speed.py")
RS = importlib.util.module_from_spec(RS_SPEC)
RS_SPEC.loader.exec_module(RS)


def test_readme_timing_block_sums_stage_groups_and_says_when_a_run_was_killed():
    clock = FakeClock()
    sc = ST.StageClock("default", ["dvc", "repro"], started=940.0, clock=clock)
    for t, line in [(0, "Stage 'data' didn't change, skipping"), (1, "Running stage 'tokenizer@vq':"),
                    (121, "Running stage 'tokenizer@rq':"), (301, "Running stage 'generator@muse':")]:
        clock.t = 1000.0 + t
        sc.feed(line)
    partial = RS.render_timing(sc.doc, "ab" * 32)
    # killed before its end was recorded: the completed stages' 2 + 3 min, never "0 min"
    assert "**5 min** in all, **killed** during `generator@muse`" in partial, partial
    assert "sha256 `abababababababab`" in partial
    clock.t = 1000.0 + 541
    block = RS.render_timing(sc.finish(0), "cd" * 32)
    # tokenizer: 120 s + 180 s = 5.0 min of 9.0 min run; generator 4.0 min; total with set-up 10 min
    assert "| tokenizer | 2 | 5.0 | 56% |" in block and "| generator | 1 | 4.0 | 44% |" in block
    assert "**10 min** in all, finished with exit code 0; 3 stages ran, 1 was up to date" in block
    assert block.index("`generator@muse` 4.0 min") < block.index("`tokenizer@rq` 3.0 min")
    killed = RS.render_timing(dict(sc.doc, returncode=-15), "ef" * 32)
    assert "**stopped by signal 15** during `generator@muse`" in killed and "exit code" not in killed


def test_readme_timing_block_matches_the_committed_json():
    path = repo_root() / RS.TIMING_JSON_PATH
    if not path.is_file():
        pytest.skip(f"{path}: no default run timed yet (reproduce/run writes it)")
    doc, sha = RS.load(path)
    block = RS.current_block((repo_root() / "README.md").read_text(), RS.TIMING_BEGIN, RS.TIMING_END)
    if f"sha256 `{sha[:16]}`" not in block:
        pytest.skip("the timing JSON changed since the README was rendered: run reproduce/readme_speed.py")
    assert block == RS.render_timing(doc, sha), "README run-time block differs from its JSON"


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL", "SIGKILL of reproduce/run", "SIGKILL of dvc"])
def test_stopping_or_killing_the_wrapper_takes_the_stage_processes_with_it(tmp_path, how):
    """The way a user meets it: the wrapper runs a 'dvc' whose stage spawns a long-lived child;
    stop the wrapper (SIGTERM), kill it outright (SIGKILL), kill the shell script above it that
    passed ``--watch-pid $$`` (as reproduce/run does), or kill 'dvc' itself: no stage process
    survives, and the wrapper does not hang."""
    import os
    import signal
    import subprocess
    import time

    pid_file = tmp_path / "grandchild.pid"
    dvc_pid_file = tmp_path / "dvc.pid"
    fake_dvc = (f"import os, subprocess, sys, time; print(\"Running stage 'a':\", flush=True); "
                f"open({str(dvc_pid_file)!r}, 'w').write(str(os.getpid())); "
                f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
                f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    wrapper_cmd = [sys.executable, str(repo_root() / "reproduce" / "stage_times.py"), "--profile",
                   "default", "--out", str(tmp_path / "t.json")]
    if how == "SIGKILL of reproduce/run":
        script = tmp_path / "run.sh"
        script.write_text("#!/usr/bin/env bash\n" + " ".join(f"'{a}'" for a in wrapper_cmd)
                          + " --watch-pid $$ -- \"$@\"\necho after\n")
        wrapper = subprocess.Popen(["bash", str(script), sys.executable, "-c", fake_dvc], stdout=subprocess.DEVNULL)
    else:
        wrapper = subprocess.Popen(wrapper_cmd + ["--", sys.executable, "-c", fake_dvc], stdout=subprocess.DEVNULL)
    deadline = time.time() + 30
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.time() < deadline, "the fake stage never started"
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild)
    if how == "SIGKILL of dvc":
        os.kill(int(dvc_pid_file.read_text()), signal.SIGKILL)
    else:
        os.kill(wrapper.pid, getattr(signal, how.split()[0]))
    wrapper.wait(timeout=30)
    deadline = time.time() + 20
    while _alive(grandchild) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(grandchild), f"the stage's child outlived the wrapper ({how})"
    if how in ("SIGTERM", "SIGKILL of dvc"):  # a stopped (not killed) run still writes what it timed
        doc = json.loads((tmp_path / "t.json").read_text())
        assert doc["returncode"] != 0 and doc["stages"][0]["stage"] == "a"
