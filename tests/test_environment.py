"""The environment: one lock, a conda mirror that agrees with it, imports that work on CPU."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from lib.store import repo_root

ROOT = repo_root()
sys.path.insert(0, str(ROOT / "reproduce"))
import sync_environment  # noqa: E402


def test_environment_yml_pins_agree_with_uv_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {}
    for entry in pip:
        if entry.startswith("-e"):
            continue
        name, version = entry.split("==")
        listed[sync_environment._norm(name)] = version
    assert listed == sync_environment.locked_pins(ROOT)
    assert listed["torch"] == "2.13.0" and listed["torchvision"] == "0.28.0"


def test_pyproject_pins_torch_pair():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"torch==2\.13\.0"', text) and re.search(r'"torchvision==0\.28\.0"', text)


def test_key_libraries_import_without_patching():
    # a fresh interpreter: nothing this test session imported can mask a broken install
    code = "import torch, torchvision, torch_fidelity, open_clip, timm, torchmetrics; print(torch.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("2.13.0")


def test_smoke_harness_runs_a_foreach_notebook_under_nbval_only_for_a_config_the_profile_trains():
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("notebook_order", repo_root() / "reproduce" / "notebook_order.py")
    order = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(order)
    params = yaml.safe_load((repo_root() / "params.yaml").read_text())
    for profile in params["profiles"]:
        steps = order.pipeline_steps(profile)
        nbval = [what for kind, what in steps if kind == "nbval" and "config=" in what]
        assert len(nbval) == 1, nbval  # one tokenizer config is executed as a notebook, the rest as commands
        config = nbval[0].split("config=")[1]
        assert params["profiles"][profile]["tokenizers"]["steps"][config] > 0, (profile, config)
        # every other tokenizer still runs (as its stage command), trained or 'skipped'
        names = set(params["tokenizers"]["configs"]) | set(params["tokenizers"]["finetunes"])
        listed = [n for k, w in steps if k == "cmd" and "--config " in w for n in w.split("--config ")[1].split()]
        listed += [w.split("--name ")[1].split()[0] for k, w in steps
                   if k == "cmd" and ("-m lib.stages tokenizer " in w or "-m lib.stages tokenizer_finetune " in w)]
        assert sorted(listed + [config]) == sorted(names)  # each exactly once
        # the names a profile does not train are written by `skip` lines, and only those
        counts = params["profiles"][profile]
        for section, module, flag in (("tokenizers", "lib.stages.tokenizer", "--config "), ("generation", "lib.stages.generator", "--name ")):
            skipped = [n for k, w in steps if k == "cmd" and f"-m {module} skip " in w for n in w.split(flag)[1].split()]
            assert sorted(skipped) == sorted(n for n, c in counts[section]["steps"].items() if c == 0), (profile, section)
