"""Distribution and classifier metrics on features from ANY extractor.

The Inception network is a poor judge of 28x28 greyscale clothes or of fashion attributes, so the
project also reports the same formulas on domain features (a Fashion-MNIST classifier, an
EfficientNet, a CLIP-like encoder...). Everything here takes plain ``[N, D]`` feature arrays
(torch or numpy) or class probabilities and does not care where they came from; the Inception
path in :mod:`lib.metrics.image_quality` uses the same functions on cached Inception features.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy import linalg
from tqdm.auto import tqdm

from lib.io import AtelierInputError


def _as_2d_float64(x: Any, name: str) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise AtelierInputError(f"{name}: expected a 2-D [N, D] feature array with N >= 2, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise AtelierInputError(f"{name}: features contain NaN or inf")
    return arr


# --------------------------------------------------------------------------------------------
# Feature extraction with an arbitrary callable
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def features_from(extractor: Callable[[torch.Tensor], torch.Tensor], data: torch.Tensor | Iterable[torch.Tensor], *,
                  batch_size: int = 256, device: str | None = None, progress: bool = False,
                  desc: str = "features") -> torch.Tensor:
    """Apply ``extractor`` batch-wise (no grad) and return ``[N, D]`` float32 features on CPU.

    ``data`` is a tensor (split into ``batch_size`` chunks) or an iterable of batches.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    batches = (data[i:i + batch_size] for i in range(0, data.shape[0], batch_size)) if torch.is_tensor(data) else data
    total = data.shape[0] if torch.is_tensor(data) else None
    out = []
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in batches:
            feats = extractor(batch.to(device))
            out.append(feats.reshape(feats.shape[0], -1).float().cpu())
            bar.update(batch.shape[0])
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# Frechet distance (FID formula)
# --------------------------------------------------------------------------------------------
def gaussian_stats(feats: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``np.cov``, ddof=1) of ``[N, D]`` features, in float64."""
    arr = _as_2d_float64(feats, "feats")
    return arr.mean(axis=0), np.cov(arr, rowvar=False)


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                                eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau, 1982).

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``, the FID formula of
    Heusel et al. (2017) as in their TTUR code and pytorch-fid: the matrix square root comes from
    ``scipy.linalg.sqrtm``; if it is not finite (singular product), ``eps * I`` is added to both
    covariances first; a small imaginary part from numerical error is dropped (``.real``), as
    torch-fidelity does implicitly. With fewer samples than dimensions the covariances are singular
    and the value is biased upwards: compare FIDs only at equal sample counts.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise AtelierInputError(
            f"frechet distance: shape mismatch mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # sqrtm warns about singular matrices, which is expected at N < D; handled below.
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_method(n_a: int, n_b: int, dim: int) -> str:
    """Which exact evaluation :func:`frechet_distance` uses for these sizes.

    ``"sample"`` when both sets have at most ``dim`` samples (the covariances are then singular
    and a ``dim x dim`` matrix square root is both slow, ~15-40 s for 2048-d on 2 CPU cores, and
    numerically fragile), ``"sqrtm"`` otherwise.
    """
    return "sample" if max(n_a, n_b) <= dim else "sqrtm"


def frechet_distance(feats_a: Any, feats_b: Any, method: str = "auto") -> float:
    """Frechet distance of Gaussians fitted to two ``[N, D]`` feature sets (FID on any features).

    Same value as :func:`frechet_distance_from_stats` on ``gaussian_stats`` of both sets. With
    ``method="sample"`` (chosen automatically when N <= D, see :func:`frechet_method`) the trace
    term is evaluated exactly in sample space: with ``X = (A - mean) / sqrt(N_a - 1)`` and ``Y``
    likewise, ``sigma_a = X^T X``, ``sigma_b = Y^T Y``, and the non-zero eigenvalues of
    ``sigma_a sigma_b = X^T (X Y^T Y)`` equal those of ``(X Y^T)(X Y^T)^T``, so
    ``Tr((sigma_a sigma_b)^(1/2)) = ||X Y^T||_*`` (nuclear norm: sum of singular values) and
    ``FID = ||mu_a - mu_b||^2 + ||X||_F^2 + ||Y||_F^2 - 2 ||X Y^T||_*``.
    """
    a = _as_2d_float64(feats_a, "feats_a")
    b = _as_2d_float64(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise AtelierInputError(f"frechet_distance: feature dims differ ({a.shape[1]} vs {b.shape[1]})")
    if method == "auto":
        method = frechet_method(len(a), len(b), a.shape[1])
    if method == "sqrtm":
        mu1, s1 = gaussian_stats(a)
        mu2, s2 = gaussian_stats(b)
        return frechet_distance_from_stats(mu1, s1, mu2, s2)
    if method != "sample":
        raise AtelierInputError(f"frechet_distance: method must be 'auto', 'sample' or 'sqrtm', got {method!r}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    x = (a - mu_a) / np.sqrt(len(a) - 1)
    y = (b - mu_b) / np.sqrt(len(b) - 1)
    nuclear = np.linalg.svd(x @ y.T, compute_uv=False).sum()
    diff = mu_a - mu_b
    return float(diff.dot(diff) + (x * x).sum() + (y * y).sum() - 2.0 * nuclear)


# --------------------------------------------------------------------------------------------
# Kernel distance (KID formula)
# --------------------------------------------------------------------------------------------
def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float | None, coef0: float) -> np.ndarray:
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Unbiased MMD^2 estimate (Gretton et al., 2012, Lemma 6) from kernel matrices of m x m."""
    m = k_xx.shape[0]
    sum_xx = k_xx.sum() - np.trace(k_xx)  # within-set terms exclude i == j
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid(feats_a: Any, feats_b: Any, subsets: int = 100, subset_size: int = 1000, *, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = 2020) -> dict[str, float]:
    """Kernel (Inception) Distance of Binkowski et al. (2018, "Demystifying MMD GANs").

    Unbiased MMD^2 with the polynomial kernel ``k(x, y) = (x.y / D + 1)^3``, averaged over
    ``subsets`` random subsets of ``subset_size`` drawn without replacement from each set. The
    subsets are drawn exactly as torch-fidelity does (``np.random.RandomState(seed).choice``, first
    from A then from B, per subset), so both give the same number on the same features. Returns
    ``{"kid_mean", "kid_std", "subsets", "subset_size"}``; values slightly below 0 are valid.
    """
    a = _as_2d_float64(feats_a, "feats_a")
    b = _as_2d_float64(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise AtelierInputError(f"kid: feature dims differ ({a.shape[1]} vs {b.shape[1]})")
    if subset_size < 2 or subset_size > min(len(a), len(b)):
        raise AtelierInputError(
            f"kid: subset_size={subset_size} must be in [2, min(N_a, N_b)] = [2, {min(len(a), len(b))}]"
        )
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        x = a[rng.choice(len(a), subset_size, replace=False)]
        y = b[rng.choice(len(b), subset_size, replace=False)]
        mmds[i] = mmd2_unbiased(_poly_kernel(x, x, degree, gamma, coef0), _poly_kernel(x, y, degree, gamma, coef0),
                                _poly_kernel(y, y, degree, gamma, coef0))
    return {"kid_mean": float(mmds.mean()), "kid_std": float(mmds.std()), "subsets": int(subsets),
            "subset_size": int(subset_size)}


# --------------------------------------------------------------------------------------------
# Improved precision / recall
# --------------------------------------------------------------------------------------------
def _kth_radius(feats: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    # Distance to the k-th nearest neighbour within the set; kthvalue(k + 1) skips the point itself.
    radii = [torch.cdist(block, feats).kthvalue(k + 1, dim=1).values for block in feats.split(chunk)]
    return torch.cat(radii)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([(torch.cdist(block, centres) <= radii[None, :]).any(dim=1) for block in points.split(chunk)])


def precision_recall(gen_feats: Any, real_feats: Any, k: int = 3, chunk: int = 2048) -> dict[str, float]:
    """Improved precision and recall of Kynkaanniemi et al. (2019), k-NN manifold estimate.

    Precision: fraction of generated samples inside some real sample's k-NN ball (realism);
    recall: fraction of real samples inside some generated sample's ball (coverage). Same
    convention and arithmetic (float32 ``torch.cdist``, ``<=``) as torch-fidelity's ``prc``.
    Returns ``{"precision", "recall", "f_score", "k"}``.
    """
    gen = torch.as_tensor(np.asarray(gen_feats) if not torch.is_tensor(gen_feats) else gen_feats).float().cpu()
    real = torch.as_tensor(np.asarray(real_feats) if not torch.is_tensor(real_feats) else real_feats).float().cpu()
    if gen.dim() != 2 or real.dim() != 2 or gen.shape[1] != real.shape[1]:
        raise AtelierInputError(f"precision_recall: expected [N, D] features, got {tuple(gen.shape)} and {tuple(real.shape)}")
    if min(len(gen), len(real)) <= k:
        raise AtelierInputError(f"precision_recall: need more than k={k} samples per set")
    precision = _covered(gen, real, _kth_radius(real, k, chunk), chunk).float().mean().item()
    recall = _covered(real, gen, _kth_radius(gen, k, chunk), chunk).float().mean().item()
    f_score = 2 * precision * recall / max(1e-5, precision + recall)
    return {"precision": precision, "recall": recall, "f_score": f_score, "k": int(k)}


# --------------------------------------------------------------------------------------------
# Classifier score (Inception-Score formula on any classifier)
# --------------------------------------------------------------------------------------------
def _check_probs(probs: Any) -> torch.Tensor:
    p = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    if p.dim() != 2 or p.shape[0] < 1:
        raise AtelierInputError(f"classifier_score: expected probabilities [N, C], got shape {tuple(p.shape)}")
    if (p < -1e-9).any() or not torch.allclose(p.sum(dim=1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-4):
        raise AtelierInputError("classifier_score: rows must be probability vectors (>= 0, summing to 1); apply softmax to logits first")
    return p.clamp_min(0)


def _score(p: torch.Tensor) -> float:
    marginal = p.mean(dim=0, keepdim=True)
    # KL(p(y|x) || p(y)) with 0 log 0 = 0 (xlogy), so one-hot rows are fine.
    kl = (torch.xlogy(p, p) - torch.xlogy(p, marginal.expand_as(p))).sum(dim=1)
    return float(torch.exp(kl.mean()))


def classifier_score(probs: Any) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))``: the Inception Score formula (Salimans et al., 2016).

    On any classifier's probabilities ``[N, C]``. It is ``C`` for a class-balanced set of
    confident (one-hot) predictions and 1 when every sample gets the same prediction.
    """
    return _score(_check_probs(probs))


def classifier_score_splits(probs: Any, splits: int = 10, seed: int | None = 2020) -> dict[str, float]:
    """Classifier score over ``splits`` chunks, mean and std, as IS is usually reported.

    Rows are permuted with ``np.random.RandomState(seed)`` first (``seed=None``: no shuffle) and
    cut at ``i * N // splits``, like torch-fidelity's ``isc`` on softmax(logits).
    """
    p = _check_probs(probs)
    n = p.shape[0]
    if splits < 1 or splits > n:
        raise AtelierInputError(f"classifier_score_splits: splits={splits} must be in [1, N={n}]")
    if seed is not None:
        p = p[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    scores = [_score(p[i * n // splits:(i + 1) * n // splits]) for i in range(splits)]
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "splits": int(splits)}


# --------------------------------------------------------------------------------------------
# Attribute accuracy
# --------------------------------------------------------------------------------------------
def _labels(x: Any, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    if arr.ndim != 1:
        raise AtelierInputError(f"attribute_accuracy: labels of '{name}' must be 1-D, got shape {arr.shape}")
    return arr


def attribute_accuracy(pred_labels: Mapping[str, Sequence | torch.Tensor],
                       target_labels: Mapping[str, Sequence | torch.Tensor],
                       ignore_index: Any | None = None) -> dict[str, Any]:
    """Per-attribute accuracy and joint accuracy (all attributes right) of predicted attributes.

    ``pred_labels`` / ``target_labels``: ``{attribute: labels [N]}`` with the same attributes and
    N. Targets equal to ``ignore_index`` (a missing annotation) are left out of that attribute's
    accuracy; the joint accuracy counts only samples whose every attribute is annotated. Returns
    ``{"per_attribute": {attr: acc}, "mean": mean of per-attribute, "joint": acc,
    "num_samples": N, "num_joint": samples counted in joint}``.
    """
    if set(pred_labels) != set(target_labels):
        raise AtelierInputError(
            f"attribute_accuracy: attributes differ: predicted {sorted(pred_labels)} vs target {sorted(target_labels)}"
        )
    if not pred_labels:
        raise AtelierInputError("attribute_accuracy: no attributes given")
    per, correct_all, valid_all, n = {}, None, None, None
    for name in sorted(target_labels):
        pred, target = _labels(pred_labels[name], name), _labels(target_labels[name], name)
        if len(pred) != len(target) or (n is not None and len(target) != n):
            raise AtelierInputError(f"attribute_accuracy: '{name}' has {len(pred)} predictions for {len(target)} targets (N={n})")
        n = len(target)
        valid = np.ones(n, bool) if ignore_index is None else target != ignore_index
        correct = (pred == target) & valid
        per[name] = float(correct.sum() / valid.sum()) if valid.any() else float("nan")
        correct_all = correct if correct_all is None else correct_all & correct
        valid_all = valid if valid_all is None else valid_all & valid
    num_joint = int(valid_all.sum())
    return {
        "per_attribute": per,
        "mean": float(np.nanmean(list(per.values()))),
        "joint": float(correct_all.sum() / num_joint) if num_joint else float("nan"),
        "num_samples": int(n),
        "num_joint": num_joint,
    }
