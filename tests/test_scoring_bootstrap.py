"""lib/evaluation/judge_panel.py JudgePanel.score(bootstrap=True): replicates of FID, CLIP-score and joint accuracy
stored beside the values, from the same features as the point FID (judges and Inception stubbed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lib.evaluation.judge_panel as JP
from lib.evaluation import uncertainty as U
from lib.io import AtelierInputError
from lib.metrics.image_quality import ReferenceStats
from lib.evaluation.judge_panel import JudgePanel, region_psnr


def _panel(monkeypatch, params):
    rng = np.random.default_rng(0)
    ref = ReferenceStats(features=rng.normal(0, 1, (40, 6)).astype(np.float32), mu=np.zeros(6), key={})
    seen = {}

    def features(images, **_):
        seen["feats"] = torch.from_numpy(rng.normal(0.5, 1, (len(images), 6)).astype(np.float32))
        return seen["feats"]

    def fid_kid(feats, reference, **_):
        assert feats is seen["feats"] and reference is ref  # the point FID uses the same features
        return {"fid": 1.0, "kid_mean": 0.0, "kid_std": 0.0}

    monkeypatch.setattr(JP, "inception_features", features)  # where the panel looks them up
    monkeypatch.setattr(JP, "fid_kid", fid_kid)
    panel = JudgePanel.__new__(JudgePanel)
    panel.params, panel.device, panel.progress = params, "cpu", False
    panel.reference = lambda _: ref
    n = 30
    panel.predict = lambda images: {f"probs_{a}": torch.eye(10)[torch.arange(n) % 10] for a in ("category", "colour", "pattern")}
    panel.clip_scores = lambda images, text: torch.linspace(0, 1, n)
    return panel, ref, seen, n


def test_bootstrap_replicates_sit_beside_the_values(monkeypatch):
    panel, ref, seen, n = _panel(monkeypatch, {"uncertainty": {"bootstrap_resamples": 25, "seed": 3, "level": 0.95}})
    images = torch.zeros(n, 3, 8, 8)
    targets = {a: (np.arange(n) % 10) if a != "pattern" else np.zeros(n, int) for a in ("category", "colour", "pattern")}
    out = panel.score(images, test_images_u8=np.zeros((40, 8, 8, 3), np.uint8), targets=targets,
                      pooled_text=torch.zeros(n, 4), bootstrap=True)
    assert set(out["bootstrap"]) == {"FID", "CLIP-score", "acc_joint"}
    assert all(len(v) == 25 for v in out["bootstrap"].values())
    assert out["bootstrap_provenance"]["resamples"] == 25 and out["bootstrap_provenance"]["num_samples"] == n
    expected = U.fid_replicates(seen["feats"].numpy(), ref.features, 25, 3)
    assert np.allclose(out["bootstrap"]["FID"], expected, rtol=1e-5)
    # joint accuracy: right only where the pattern target (0) matches the prediction (i % 10): 3 of 30
    assert out["acc_joint"] == pytest.approx(0.1)
    assert 0.0 <= min(out["bootstrap"]["acc_joint"]) <= 0.1 <= max(out["bootstrap"]["acc_joint"]) <= 0.4
    # without bootstrap nothing extra is computed or stored
    plain = panel.score(images, test_images_u8=np.zeros((40, 8, 8, 3), np.uint8), pooled_text=torch.zeros(n, 4))
    assert "bootstrap" not in plain


def test_bootstrap_without_an_uncertainty_section_names_it(monkeypatch):
    panel, *_ = _panel(monkeypatch, {})
    with pytest.raises(AtelierInputError, match="'uncertainty' section"):
        panel.score(torch.zeros(30, 3, 8, 8), fid=False, bootstrap=True)


def test_region_psnr_counts_only_the_kept_cells():
    source = torch.zeros(2, 3, 8, 8)
    edited = source.clone()
    edited[:, :, :4] = 1.0                      # the top half changed by 1.0 in [-1, 1]: 0.5 in [0, 1]
    bottom = torch.zeros(4, 4, dtype=torch.bool)
    bottom[2:] = True                           # token cells of 2x2 pixels: the bottom half
    assert region_psnr(edited, source, bottom) == pytest.approx(100.0)       # untouched: the 100 dB cap
    top = ~bottom
    assert region_psnr(edited, source, top) == pytest.approx(10 * np.log10(1 / 0.25))  # MSE 0.25 -> 6.02 dB
    # per image: a [N, H, W] region; an empty one is refused
    with pytest.raises(AtelierInputError, match="empty region"):
        region_psnr(edited, source, torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(AtelierInputError, match="region must be"):
        region_psnr(edited, source, torch.ones(3, 4, 4, dtype=torch.bool))
