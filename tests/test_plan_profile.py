"""reproduce/plan_profile.py: a profile's predicted wall time from a timed run (fixed + per-step)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from lib.io import AtelierInputError
from lib.store import repo_root

SPEC = importlib.util.spec_from_file_location("plan_profile", repo_root() / "reproduce" / "plan_profile.py")
PP = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(PP)


def _write(root, rel, doc):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_training_stages_split_into_fixed_and_per_step_cost_and_scale(tmp_path):
    _write(tmp_path, "results/02_tokenizers/vq/metrics.json",
           {"metrics": {"steps": 250, "skipped": False}, "provenance": {"training": {"seconds": 50.0}}})
    _write(tmp_path, "results/06_unifashion/phase2/metrics.json",
           {"metrics": {"full": {"seconds": 30.0, "steps": 200}, "base": {"seconds": 20.0, "steps": 100}}})
    timing = {"stages": [{"stage": "data", "status": "skipped", "seconds": 0.5},
                         {"stage": "tokenizer@vq", "status": "ran", "seconds": 90.0},
                         {"stage": "unifashion_phase2", "status": "ran", "seconds": 60.0},
                         {"stage": "report", "status": "ran", "seconds": 12.0}]}
    costs = PP.stage_costs(timing, tmp_path)
    assert set(costs) == {"tokenizer@vq", "unifashion_phase2", "report"}  # skipped stages cost nothing
    assert costs["tokenizer@vq"]["fixed_seconds"] == 40.0
    assert costs["tokenizer@vq"]["loops"][0]["seconds_per_step"] == 0.2
    assert costs["unifashion_phase2"]["fixed_seconds"] == 10.0 and len(costs["unifashion_phase2"]["loops"]) == 2
    plan = PP.predict(costs, lambda key, n: 4 * n)
    assert plan["stages"]["tokenizer@vq"]["predicted_seconds"] == 40.0 + 0.2 * 1000
    assert math.isclose(plan["stages"]["unifashion_phase2"]["predicted_seconds"], 10.0 + 4 * 50.0)
    assert plan["stages"]["report"]["predicted_seconds"] == 12.0
    assert plan["measured_repro_seconds"] == 162.0
    assert math.isclose(plan["predicted_repro_seconds"], 240.0 + 210.0 + 12.0)


def test_a_candidate_profile_must_define_every_steps_key():
    with pytest.raises(AtelierInputError, match="no generation.steps.muse"):
        PP._profile_steps({"generation": {"steps": {"ar": 3}}}, "generation.steps.muse")
    assert PP._profile_steps({"generation": {"steps": {"muse": 7}}}, "generation.steps.muse") == 7
