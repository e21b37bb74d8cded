"""The environment: one lock, a conda mirror that agrees with it, imports that work on CPU."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from lib.paths import repo_root

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
