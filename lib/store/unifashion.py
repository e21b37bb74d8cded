"""Where the UniFashion stages' outputs live: ``artifacts/unifashion/<phase>/...`` (features,
checkpoints) and ``results/06_unifashion/<phase>/{metrics.json,loss.json}``.

Paths only (nothing is created here: writers create parents atomically)."""

from __future__ import annotations

from pathlib import Path

from lib.io import AtelierInputError
from lib.store import out_root

STAGE = "06_unifashion"
PHASES = ("features", "phase1", "captioner", "generator", "phase2")
QFORMER_FILE = "qformer.safetensors"
QFORMER_BASE_FILE = "qformer_base.safetensors"
DECODER_FILE = "decoder.safetensors"
GENERATOR_FILE = "query_generator.safetensors"
TOKENS_FILE = "train_tokens.safetensors"


def artifact_dir(phase: str) -> Path:
    if phase not in PHASES:
        raise AtelierInputError(f"phase must be one of {PHASES}, got {phase!r}")
    return out_root() / "artifacts" / "unifashion" / phase


def metrics_path(phase: str) -> Path:
    return out_root() / "results" / STAGE / phase / "metrics.json"


def loss_path(phase: str, variant: str = "") -> Path:
    return out_root() / "results" / STAGE / phase / f"loss{'_' + variant if variant else ''}.json"


def image_features_path(split: str) -> Path:
    return artifact_dir("features") / f"images_{split}.safetensors"


def modification_table_path() -> Path:
    return artifact_dir("features") / "modification_texts.safetensors"


def selection_path() -> Path:
    return artifact_dir("features") / "selection.json"


def qformer_path(phase: str, base: bool = False) -> Path:
    if phase not in ("phase1", "phase2"):
        raise AtelierInputError(f"Q-Former checkpoints exist for phase1 and phase2, not {phase!r}")
    if base and phase != "phase2":
        raise AtelierInputError("only phase 2 has a 'base' Q-Former (Eq. 10 without the caption decoder)")
    return artifact_dir(phase) / (QFORMER_BASE_FILE if base else QFORMER_FILE)


def decoder_path() -> Path:
    return artifact_dir("captioner") / DECODER_FILE


def generator_path() -> Path:
    return artifact_dir("generator") / GENERATOR_FILE


def train_tokens_path() -> Path:
    return artifact_dir("generator") / TOKENS_FILE
