"""Where the super-resolution stage's outputs live (Muse Sec. 2.4): the 64x64 tokenizer, the transformer of
each low-res form, metrics and loss curves."""

from __future__ import annotations

from pathlib import Path

from lib.store import out_root

STAGE = "03_generators/super_res"
EVAL_STAGE = "03c_super_resolution"


def artifacts_root() -> Path:
    return out_root() / "artifacts" / "super_res"


def tokenizer_path() -> Path:
    return artifacts_root() / "tokenizer.safetensors"


def model_path(form: str | None = None) -> Path:
    """The configured form's checkpoint; ``form``: the other form's, trained for the comparison
    (``super_res.compare_forms``)."""
    return artifacts_root() / ("model.safetensors" if form is None else f"model_{form}.safetensors")


def metrics_path() -> Path:
    return out_root() / "results" / STAGE / "metrics.json"


def loss_path() -> Path:
    return out_root() / "results" / STAGE / "loss.json"
