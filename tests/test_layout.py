"""Issue 16: the dependency rule of lib/ can be read off its folders, and a test keeps it true.

    stages -> evaluation -> pipelines -> {models, generation, sampling, retrieval, judges, metrics,
    training} -> {quantizers, data, text} -> {config, store, io, images, provenance, figures}

A module imports only its own layer or a lower one; nothing imports ``lib.stages`` but itself;
``lib.config`` imports neither torch nor anything above it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from lib.store import repo_root

SPEC = importlib.util.spec_from_file_location("dvc_deps", repo_root() / "reproduce" / "dvc_deps.py")
DD = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(DD)

LAYERS = [
    ("base", ["lib/__init__.py", "lib/config", "lib/store", "lib/io.py", "lib/images.py", "lib/provenance.py",
              "lib/figures.py"]),
    ("foundations", ["lib/quantizers", "lib/data", "lib/text"]),
    ("models", ["lib/models", "lib/generation", "lib/sampling", "lib/retrieval", "lib/judges", "lib/metrics",
                "lib/training.py"]),
    ("pipelines", ["lib/pipelines"]),
    ("evaluation", ["lib/evaluation"]),
    ("stages", ["lib/stages"]),
]


def layer_of(path: str) -> int:
    for i, (_, members) in enumerate(LAYERS):
        if any(path == m or path.startswith(m + "/") for m in members):
            return i
    raise AssertionError(f"{path}: in no layer of tests/test_layout.py (add its folder to one)")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            if layer_of(dst) > layer_of(src):
                bad.append(f"{src} ({LAYERS[layer_of(src)][0]}) imports {dst} ({LAYERS[layer_of(dst)][0]})")
    return bad


def test_every_module_belongs_to_a_layer():
    for path in DD.module_graph():
        layer_of(path)


def test_no_module_imports_a_higher_layer():
    bad = upward_imports(DD.module_graph())
    assert not bad, "imports against the layer rule:\n" + "\n".join(bad)


def test_the_rule_check_is_not_vacuous(tmp_path):
    graph = {"lib/io.py": {"lib/stages/generator.py"}, "lib/stages/generator.py": {"lib/io.py"}}
    assert upward_imports(graph) == ["lib/io.py (base) imports lib/stages/generator.py (stages)"]


def test_no_import_cycle_in_lib():
    assert DD.import_cycles(DD.module_graph()) == []


@pytest.mark.parametrize("module", ["lib.config", "lib.store"])
def test_config_and_store_import_no_torch(module):
    code = (f"import sys, {module}\n"
            "import lib.config as C\nC.load('default')\n"
            "heavy = [m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root())
