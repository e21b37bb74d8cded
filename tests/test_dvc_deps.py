"""reproduce/dvc_deps.py: each stage's import closure inside lib/ against its dvc.yaml deps.

The check runs on a small fixture package (the closure logic) and on the real dvc.yaml (every
stage's deps cover the code it runs: its module under lib/stages/ or its notebook, and everything
they import inside lib/, function-local imports included).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from lib.store import repo_root

SPEC = importlib.util.spec_from_file_location("dvc_deps", repo_root() / "reproduce" / "dvc_deps.py")
DD = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(DD)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _fixture(root: Path) -> None:
    _write(root, "lib/__init__.py", "")
    _write(root, "lib/a.py", "import os\nfrom lib import b\n\ndef later():\n    from .c import f\n    return f\n")
    _write(root, "lib/b.py", "from .pkg.x import thing\n")
    _write(root, "lib/c.py", "def f():\n    return 1\n")
    _write(root, "lib/pkg/__init__.py", "")
    _write(root, "lib/pkg/x.py", "from . import y\nthing = 1\n")
    _write(root, "lib/pkg/y.py", "")
    _write(root, "lib/unused.py", "")
    nb = {"cells": [{"cell_type": "code", "source": ["%matplotlib inline\n", "from lib.c import f\n"]},
                    {"cell_type": "markdown", "source": ["import lib.unused"]}]}
    _write(root, "notebooks/n.ipynb", json.dumps(nb))
    _write(root, "dvc.yaml", """
stages:
  one:
    cmd: python -m lib.a --profile ${profile}
    deps: [lib/a.py, lib/b.py, lib/pkg, "artifacts/${item}"]
  nb:
    foreach: [p, q]
    do:
      cmd: >-
        papermill notebooks/n.ipynb out/${item}.ipynb
      deps: [notebooks/n.ipynb, lib/c.py, lib/__init__.py]
""")


def test_closure_follows_relative_submodule_and_local_imports_and_package_inits(tmp_path):
    _fixture(tmp_path)
    closure = {p.as_posix() for p in DD.import_closure([Path("lib/a.py")], tmp_path)}
    assert closure == {"lib/a.py", "lib/b.py", "lib/c.py", "lib/__init__.py", "lib/pkg/__init__.py",
                       "lib/pkg/x.py", "lib/pkg/y.py"}
    top = {p.as_posix() for p in DD.import_closure([Path("lib/a.py")], tmp_path, local=False)}
    assert top == closure - {"lib/c.py"}  # lib.c is imported inside a function only
    # the notebook's code cells count, its markdown and magics do not
    assert DD.imported_modules(Path("notebooks/n.ipynb"), tmp_path) == {"lib.c"}


def test_uncovered_names_each_stage_and_file_that_its_deps_miss(tmp_path):
    _fixture(tmp_path)
    gaps = DD.uncovered(tmp_path / "dvc.yaml", tmp_path)
    # lib/pkg covers its files; the ${item} dep names no code; lib/__init__ and lib/c are missing
    assert gaps == {"one": ["lib/__init__.py", "lib/c.py"]}
    assert DD.uncovered(tmp_path / "dvc.yaml", tmp_path, local=False) == {"one": ["lib/__init__.py"]}
    assert DD.stages(tmp_path / "dvc.yaml")["nb"]["cmd"] == "papermill notebooks/n.ipynb out/${item}.ipynb"


def test_import_cycles_are_found_and_own_package_inits_are_not_edges(tmp_path):
    _fixture(tmp_path)
    _write(tmp_path, "lib/c.py", "def f():\n    from lib import a\n    return a\n")  # a -> c (local) -> a
    graph = DD.module_graph(tmp_path)
    assert "lib/pkg/__init__.py" not in graph["lib/pkg/x.py"]  # `from . import y` needs y, not the package
    assert DD.import_cycles(graph) == [["lib/a.py", "lib/c.py"]]
    assert DD.import_cycles(DD.module_graph(tmp_path, local=False)) == []


def test_every_real_stage_depends_on_all_the_code_it_runs():
    gaps = DD.uncovered()
    assert gaps == {}, "\n".join(f"{stage}: {', '.join(files)}" for stage, files in gaps.items())


def test_real_stage_commands_name_their_code():
    """``python -m lib.stages <stage>`` resolves to the stage's own module or notebook, not to all of
    lib/stages/ (the entry point imports only the one it runs)."""
    st = DD.stages()
    entries = {name: {p.as_posix() for p in DD.stage_entries(s["cmd"])} for name, s in st.items()}
    assert "lib/stages/generator.py" in entries["generator"]
    assert "notebooks/03_text_to_image.ipynb" in entries["text_to_image"]
    assert "notebooks/02a_tokenizer.ipynb" in entries["tokenizer"]
    closure = {p.as_posix() for p in DD.import_closure([__import__("pathlib").Path("lib/stages/__main__.py")])}
    assert not any(p.startswith("lib/stages/") and p not in ("lib/stages/__init__.py", "lib/stages/__main__.py",
                                                             "lib/stages/persist.py")
                   for p in closure), closure


def test_dvc_yaml_stays_short():
    """Issue 16: derived deps, one-line commands and folder outputs keep dvc.yaml readable."""
    assert len((repo_root() / "dvc.yaml").read_text().splitlines()) < 600


def test_dvc_yaml_deps_are_the_derived_ones(tmp_path):
    """The committed deps are what ``reproduce/dvc_deps.py --write`` derives (run it after moving code)."""
    copy = tmp_path / "dvc.yaml"
    copy.write_text((repo_root() / "dvc.yaml").read_text())
    assert DD.write_deps(copy, repo_root()) == []
    assert copy.read_text() == (repo_root() / "dvc.yaml").read_text()


def test_a_script_loaded_by_path_counts_as_an_entry(tmp_path):
    """``python reproduce/a.py`` where a.py loads reproduce/b.py with importlib: b.py's lib imports count."""
    (tmp_path / "reproduce").mkdir()
    (tmp_path / "reproduce" / "a.py").write_text('SPEC = ROOT / "reproduce" / "b.py"\n')
    (tmp_path / "reproduce" / "b.py").write_text("import lib.x\n")
    assert DD.stage_entries("python reproduce/a.py", tmp_path) == [Path("reproduce/a.py"), Path("reproduce/b.py")]
