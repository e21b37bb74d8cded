"""Generate-and-score: one row of a generation table (M6-Fashion Tables 2-4, Muse Table 1 / Fig. 8,
MoVQ Tables 2-3), the same way for every notebook.

A row samples ``n`` images with a trained generator and a sampler (:func:`lib.pipelines.sampling.generate`),
scores them with the judge panel (:meth:`lib.evaluation.judge_panel.JudgePanel.score`) and names the
metrics as every table prints them (``IS`` is the domain classifier's Inception-Score formula; the
tables' stand-ins line says so).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from lib.evaluation.judge_panel import JudgePanel
from lib.pipelines.sampling import generate

#: JudgePanel.score keys -> table columns
COLUMNS = {"fid": "FID", "kid": "KID", "classifier_score": "IS", "clip_score": "CLIP-score", "precision": "Precision",
           "recall": "Recall", "acc_category": "acc_category", "acc_colour": "acc_colour", "acc_pattern": "acc_pattern",
           "acc_joint": "acc_joint"}
#: what a row carries beside its columns (kept in the metrics JSON, dropped from printed tables)
EXTRAS = ("bootstrap", "bootstrap_provenance", "fid_provenance")


def score_row(scores: Mapping[str, Any], **row: Any) -> dict[str, Any]:
    """``row`` (labels: method, model, sampler, ...) followed by the panel's ``scores`` under the tables'
    column names, and the extras (bootstrap replicates, FID provenance) where the panel computed them."""
    out = dict(row)
    out.update({col: scores[key] for key, col in COLUMNS.items() if key in scores})
    out["num_samples"] = scores["num_samples"]
    out.update({k: scores[k] for k in EXTRAS if k in scores})
    return out


def generate_and_score(panel: JudgePanel, model, decoder, cond, n: int, sampler: str,
                       settings: Mapping[str, Any], *, seed: int, guidance: Any = 0.0,
                       test_images: np.ndarray | None = None, targets: Mapping[str, Any] | None = None,
                       pooled_text: torch.Tensor | None = None, fid: bool = True, prc: bool = False,
                       bootstrap: bool = False, row: Mapping[str, Any] | None = None
                       ) -> tuple[dict[str, Any], torch.Tensor]:
    """Sample ``n`` images of ``cond`` with ``sampler`` and score them: ``(row, images)``.

    The returned row is ``row`` (its labels) and :func:`score_row` of the scores, plus ``seconds_per_image`` (sampling and decoding at the
    sampler's batch size on this machine); ``images`` float ``[n, 3, H, W]`` in [-1, 1].
    ``test_images`` (uint8, the real test split) is the FID reference when ``fid``.
    """
    out = generate(model, decoder, cond, n, sampler, settings, guidance=guidance, seed=seed)
    scores = panel.score(out["images"], test_images_u8=test_images if fid else None, targets=targets,
                         pooled_text=pooled_text, fid=fid, prc=prc, bootstrap=bootstrap)
    record = score_row(scores, **(row or {}))
    record["seconds_per_image"] = out["seconds_per_image"]
    return record, out["images"]


def table_view(rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows without their extras: what a printed table shows."""
    return [{k: v for k, v in r.items() if k not in EXTRAS} for r in rows]
