"""Where the generator stages' outputs live (``generator@<name>``, ``text_features``)."""

from __future__ import annotations

from pathlib import Path

from lib.store import out_root

STAGE = "03_generators"
CHECKPOINT = "model.safetensors"


def checkpoint_path(name: str) -> Path:
    return out_root() / "artifacts" / "generators" / name / CHECKPOINT


def metrics_path(name: str) -> Path:
    return out_root() / "results" / STAGE / name / "metrics.json"


def loss_path(name: str) -> Path:
    return out_root() / "results" / STAGE / name / "loss.json"


def text_table_path() -> Path:
    return out_root() / "artifacts" / "text" / "minilm_tokens.safetensors"


def class_table_path() -> Path:
    return out_root() / "artifacts" / "text" / "minilm_class_tokens.safetensors"


CLASS_TEMPLATE = "a {}"
