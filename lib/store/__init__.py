"""Where things live.

Notebooks and stage scripts never hard-code absolute paths: the repository root is found by
walking up to ``dvc.yaml``, and every output goes below :func:`out_root`, which is the repository
itself for ``dvc repro`` and a temporary folder (``ATELIER_OUT``) for test runs, so that nbval and
pytest never touch DVC outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_OUT = "ATELIER_OUT"
ENV_DATA = "ATELIER_DATA"


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: this file) holding ``dvc.yaml``."""
    here = Path(start or __file__).resolve()
    for folder in [here, *here.parents]:
        if (folder / "dvc.yaml").is_file() and (folder / "lib").is_dir():
            return folder
    raise FileNotFoundError(f"no dvc.yaml found at or above {here}: is this an Atelier checkout?")


def out_root() -> Path:
    """Root of everything a stage writes: ``$ATELIER_OUT`` if set, else the repository root."""
    env = os.environ.get(ENV_OUT)
    return Path(env).resolve() if env else repo_root()


def results_dir(stage: str) -> Path:
    """Small, git-tracked outputs of a stage (metrics JSON, tables, loss curves)."""
    path = out_root() / "results" / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifacts_dir(stage: str) -> Path:
    """Large outputs of a stage kept in the DVC cache (datasets, checkpoints, sample grids)."""
    path = out_root() / "artifacts" / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Raw real data tracked by ``data.dvc`` (``$ATELIER_DATA`` overrides, for tests)."""
    env = os.environ.get(ENV_DATA)
    return Path(env).resolve() if env else repo_root() / "data"


def caption_root() -> Path:
    """The data stage's caption dataset (images, captions, attribute labels, triplets): the one
    input every later stage reads."""
    return out_root() / "artifacts" / "data" / "captions"
