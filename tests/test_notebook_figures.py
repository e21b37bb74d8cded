"""Executed notebooks embed their figures (issue 20): the environment reproduce/common.sh gives
papermill's kernels must not force a non-interactive matplotlib backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat

from lib.store import repo_root


def test_a_notebook_run_in_the_stage_environment_embeds_its_png(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\nplt.show()")]
    src, out = tmp_path / "plot.ipynb", tmp_path / "plot.out.ipynb"
    nbformat.write(nb, src)
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "MPLBACKEND": "Agg", "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    # the stages' environment is what sourcing common.sh leaves (even over a user's MPLBACKEND=Agg)
    script = (f'source "{repo_root() / "reproduce" / "common.sh"}" && '
              f'papermill -k python3 --no-progress-bar "{src}" "{out}"')
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    outputs = json.loads(out.read_text())["cells"][0]["outputs"]
    assert any("image/png" in o.get("data", {}) for o in outputs), outputs


def test_a_notebook_progress_bar_shows_as_text_without_the_ipywidgets_warning(tmp_path):
    """Issue 20: every executed notebook showed a red 'TqdmWarning: IProgress not found'; the stage
    environment drops it and keeps tqdm's text bar (what papermill --log-output prints)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='counting'):\n    pass")]
    src, out = tmp_path / "bar.ipynb", tmp_path / "bar.out.ipynb"
    nbformat.write(nb, src)
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    env.pop("PYTHONWARNINGS", None)
    script = (f'source "{repo_root() / "reproduce" / "common.sh"}" && '
              f'papermill -k python3 --no-progress-bar "{src}" "{out}"')
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = "".join("".join(o.get("text", "")) for o in json.loads(out.read_text())["cells"][0]["outputs"])
    assert "counting: 100%" in text and "3/3" in text, text
    assert "IProgress" not in text and "TqdmWarning" not in text, text
