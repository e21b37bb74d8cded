"""Issue 18.1: training resumes under `dvc repro` (persisted checkpoint folders), and a kept folder of
other code, settings or inputs is emptied before the stage runs (lib/stages/persist.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lib.stages import persist
from lib.store import repo_root

DVC_YAML = """
stages:
  train:
    foreach: ${models}
    do:
      cmd: python -m lib.stages train --profile ${profile} --name ${key}
      deps: [lib/code.py, "artifacts/data/${item.data}"]
      params: [lr, "models.${key}", "profiles.${profile}.steps"]
      outs:
        - "artifacts/ckpt/${key}": {persist: true}
        - results/${key}.json: {cache: false}
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "code.py").write_text("x = 1\n")
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text(yaml.safe_dump({"lr": 0.1, "models": {"a": {"data": "d1"}},
                                                      "profiles": {"smoke": {"steps": 5}}}))
    out = tmp_path / "out"
    (out / "artifacts" / "data" / "d1").mkdir(parents=True)
    (out / "artifacts" / "data" / "d1" / "x.bin").write_bytes(b"abc")
    monkeypatch.setenv("ATELIER_OUT", str(out))
    return root, out


def _fp(root):
    return persist.fingerprint(persist.resolved_stage("train", "a", "smoke", root), root)["sha256"]


def test_stage_resolves_foreach_and_profile(tiny):
    root, _ = tiny
    spec = persist.resolved_stage("train", "a", "smoke", root)
    assert spec["cmd"] == "python -m lib.stages train --profile smoke --name a"
    assert spec["deps"] == ["lib/code.py", "artifacts/data/d1"]
    assert spec["params"] == ["lr", "models.a", "profiles.smoke.steps"]
    assert spec["persist"] == ["artifacts/ckpt/a"]


@pytest.mark.parametrize("change", ["param", "code", "data", "none"])
def test_fingerprint_follows_params_code_and_data(tiny, change):
    root, out = tiny
    before = _fp(root)
    if change == "param":
        p = yaml.safe_load((root / "params.yaml").read_text())
        p["profiles"]["smoke"]["steps"] = 6
        (root / "params.yaml").write_text(yaml.safe_dump(p))
    elif change == "code":
        (root / "lib" / "code.py").write_text("x = 2\n")
    elif change == "data":
        (out / "artifacts" / "data" / "d1" / "x.bin").write_bytes(b"abd")
    assert (_fp(root) != before) == (change != "none")


def test_prepare_keeps_an_interrupted_run_and_empties_a_stale_one(tiny):
    root, out = tiny
    ckpt = out / "artifacts" / "ckpt" / "a"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"old run, no marker")
    said = persist.prepare("train", "a", "smoke", root)
    assert "emptied (no stage marker)" in said[0] and not (ckpt / "model.safetensors").exists()
    (ckpt / "model.safetensors").write_bytes(b"step-50 checkpoint of this run")   # the run, killed
    assert "kept" in persist.prepare("train", "a", "smoke", root)[0]
    assert (ckpt / "model.safetensors").read_bytes() == b"step-50 checkpoint of this run"
    (root / "lib" / "code.py").write_text("x = 3\n")                               # then the code changed
    said = persist.prepare("train", "a", "smoke", root)
    assert "made by other code, settings or inputs" in said[0] and not (ckpt / "model.safetensors").exists()
    marker = json.loads((ckpt / persist.MARKER).read_text())
    assert marker["sha256"] == _fp(root) and marker["deps"]["lib/code.py"] != "missing"


def test_real_training_stages_persist_their_checkpoints_and_resolve():
    stages = yaml.safe_load((repo_root() / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((repo_root() / "params.yaml").read_text())
    training = {"judges": None, "tokenizer": "tokenizers.configs", "tokenizer_finetune": "tokenizers.finetunes",
                "generator": "generation.models", "super_res": None, "unifashion_phase1": None,
                "unifashion_captioner": None, "unifashion_generator": None, "unifashion_phase2": None}
    for stage, foreach in training.items():
        names = [None] if foreach is None else list(persist._lookup(params, foreach))
        for name in names:
            spec = persist.resolved_stage(stage, name, "smoke")
            assert len(spec["persist"]) == 1 and spec["persist"][0].startswith("artifacts/"), (stage, name)
            assert "${" not in json.dumps(spec["deps"] + spec["params"]), (stage, name)
    outs = {s: json.dumps(st.get("do", st).get("outs", [])) for s, st in stages.items()}
    assert all('"persist"' not in outs[s] for s in stages if s not in training)


def test_dvc_keeps_a_persisted_folder_of_a_failed_stage(tmp_path):
    """What the mechanism relies on: `dvc repro` does not delete a persist output before re-running."""
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    repo = tmp_path / "r"
    repo.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run = lambda *a: subprocess.run(a, cwd=repo, env=env, capture_output=True, text=True)  # noqa: E731
    assert run("git", "init", "-q").returncode == 0 and run(dvc, "init", "-q").returncode == 0
    (repo / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: mkdir -p out && echo x >> out/ckpt && test $(wc -l < out/ckpt) -ge 2\n"
        "    outs:\n      - out: {persist: true}\n")
    assert run(dvc, "repro", "-q").returncode != 0          # first run "killed" after its checkpoint
    assert (repo / "out" / "ckpt").read_text() == "x\n"
    assert run(dvc, "repro", "-q").returncode == 0          # the second run finds it and completes
    assert (repo / "out" / "ckpt").read_text() == "x\nx\n"


@pytest.mark.parametrize("profile", ["smoke", "default", "gpu"])
def test_every_real_stage_resolves_in_every_profile(profile):
    """prepare() resolves each stage `python -m lib.stages` runs before running it: none may fail."""
    stages = yaml.safe_load((repo_root() / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((repo_root() / "params.yaml").read_text())
    for stage, st in stages.items():
        if "python -m lib.stages " not in json.dumps(st):
            continue
        if "foreach" in st:
            items = st["foreach"]
            items = persist._lookup(params, items.strip("${} ")) if isinstance(items, str) else items
            names = list(items)
        else:
            names = [None]
        for name in names:
            spec = persist.resolved_stage(stage, name, profile)
            assert "${" not in json.dumps({k: v for k, v in spec.items() if k != "_values"}), (stage, name)
