"""reproduce/stage_times.py: per-stage wall times of a dvc repro, from DVC's own log lines."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from lib.io import AtelierInputError
from lib.paths import repo_root

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
              (3, "> python -m lib.tokenizers stage ..."), (62, "Running stage 'tokens@vq':"),
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


def test_smoke_timing_stays_out_of_the_committed_results_and_a_command_is_required(tmp_path):
    assert ST.default_out("smoke").parts[-3:] == ("artifacts", "timing", "smoke.json")
    assert ST.default_out("default").parts[-3:] == ("results", "timing", "default.json")
    with pytest.raises(AtelierInputError, match="no command given"):
        ST.run([], "default", tmp_path / "x.json")
