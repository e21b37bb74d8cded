"""Where the tokenizer stages' outputs live (``tokenizer@<name>``, ``tokenizer_finetune@<name>``).

Paths only (nothing is created: readers must not leave empty folders in other stages' outputs;
every writer creates the parents atomically)."""

from __future__ import annotations

from pathlib import Path

from lib.store import out_root

STAGE = "02_tokenizers"
CHECKPOINT = "tokenizer.safetensors"
SKIPPED_MARKER = "skipped.json"


def checkpoint_path(name: str) -> Path:
    return out_root() / "artifacts" / "tokenizers" / name / CHECKPOINT


def metrics_path(name: str) -> Path:
    return out_root() / "results" / STAGE / name / "metrics.json"


def loss_path(name: str) -> Path:
    return out_root() / "results" / STAGE / name / "loss.json"
