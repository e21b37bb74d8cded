"""Bootstrap intervals over evaluation samples (issue 17: "evaluation-dependent claims: bootstrap
intervals over samples (FID/KID on resampled sets, recall over queries)").

A metric computed on N samples (generated images, timed runs, queries) varies with which N were
drawn. The nonparametric bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993,
ch. 13: percentile intervals) estimates that spread: draw N of the N samples with replacement,
recompute the metric, repeat B times; the 2.5 and 97.5 percentiles of the B replicates bound a 95%
interval. Evaluation stages store the replicates beside the point value (``row["bootstrap"][metric]``)
and :mod:`lib.evaluation.claims` takes the interval of a *difference* from the replicate-wise differences.

Pairing. Replicate ``b`` of every metric over ``n`` samples uses the same index array
:func:`resample_indices` ``(n, B, seed)[b]``, whatever the row. Two rows whose sample ``i`` shares
its prompt (every text-to-image row uses the first ``n`` test captions in order) are therefore
resampled *paired*, as a paired bootstrap of the difference should be; the FID reference features
get their own index stream, shared by every row, so both sides of a comparison see the same
resampled reference. Samples that are not aligned by position (timed runs of different methods)
pass a ``stream`` name, which gives them independent index arrays.

What it does not cover: the variation between training seeds. An interval from here is the
evaluation's noise for *fixed weights*; a claim comparing two separately trained models needs seeds
as well (lib.evaluation.claims says which a claim needs).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

import numpy as np

from lib.io import AtelierInputError
from lib.metrics.domain import frechet_distance

METHOD = ("nonparametric percentile bootstrap over evaluation samples (Efron & Tibshirani 1993, ch. 13): "
          "B resamples with replacement; replicate b uses the same index array for every row of the same "
          "sample count (paired by position, e.g. the same prompt), FID's reference features an index stream "
          "of their own shared by all rows; the interval of a difference is the percentile interval of the "
          "replicate-wise differences")


def _stream_key(stream: str | int) -> int:
    if isinstance(stream, int):
        return stream
    return int.from_bytes(hashlib.sha256(str(stream).encode()).digest()[:4], "little")


def resample_indices(n: int, resamples: int, seed: int, stream: str | int = 0) -> np.ndarray:
    """``[resamples, n]`` indices drawn with replacement from ``range(n)``.

    Determined by ``(seed, n, stream)`` only, so every metric over ``n`` samples of the same stream
    gets the same arrays (the pairing described in the module docstring).
    """
    if int(n) < 1:
        raise AtelierInputError(f"bootstrap: need at least one sample, got n={n}")
    if int(resamples) < 1:
        raise AtelierInputError(f"bootstrap: resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng([int(seed), int(n), _stream_key(stream)])
    return rng.integers(0, int(n), size=(int(resamples), int(n)))


def replicates(values: Sequence[float] | np.ndarray, resamples: int, seed: int,
               statistic: Callable[[np.ndarray], float] = np.mean, stream: str | int = 0) -> list[float]:
    """Bootstrap replicates of ``statistic`` (default the mean) of per-sample ``values`` ``[n]`` or
    ``[n, ...]`` (resampled along the first axis)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0 or len(arr) == 0:
        raise AtelierInputError(f"bootstrap: values must be a non-empty sequence, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise AtelierInputError("bootstrap: values contain NaN or infinity")
    idx = resample_indices(len(arr), resamples, seed, stream)
    return [float(statistic(arr[i])) for i in idx]


def fid_replicates(gen_feats: Any, ref_feats: Any, resamples: int, seed: int) -> list[float]:
    """FID of resampled generated features against resampled reference features, ``resamples`` times.

    Generated rows use stream 0 (paired across rows of equal count), the reference its own stream
    ``"fid-reference"`` (the same resampled reference for every row). A resampled set holds
    duplicates, which biases FID upwards a little (fewer distinct samples); rows with equal sample
    counts share that bias, so their *difference* is what the replicates are for, not the level.
    """
    gen = np.asarray(gen_feats, dtype=np.float32)
    ref = np.asarray(ref_feats, dtype=np.float32)
    if gen.ndim != 2 or ref.ndim != 2 or gen.shape[1] != ref.shape[1]:
        raise AtelierInputError(f"fid_replicates: features of shape {gen.shape} and {ref.shape} do not match")
    gi = resample_indices(len(gen), resamples, seed, 0)
    ri = resample_indices(len(ref), resamples, seed, "fid-reference")
    return [float(frechet_distance(gen[g], ref[r])) for g, r in zip(gi, ri)]


def percentile_interval(reps: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of bootstrap replicates."""
    arr = np.asarray(reps, dtype=np.float64)
    if arr.ndim != 1 or len(arr) < 2:
        raise AtelierInputError(f"percentile_interval: need at least two replicates, got {arr.shape}")
    if not 0.0 < float(level) < 1.0:
        raise AtelierInputError(f"percentile_interval: level must lie in (0, 1), got {level}")
    lo, hi = np.quantile(arr, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def difference_interval(claimed: Sequence[float], baseline: Sequence[float],
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``claimed - baseline`` from replicates of the same resamples
    (replicate ``b`` of both sides used index array ``b``)."""
    a, b = np.asarray(claimed, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise AtelierInputError(f"difference_interval: {len(a)} and {len(b)} replicates; the two sides must "
                                "come from the same resamples")
    return percentile_interval(a - b, level)


def compact(reps: Sequence[float], digits: int = 6) -> list[float]:
    """Replicates rounded to ``digits`` significant digits (what the metrics JSON stores)."""
    return [float(f"{r:.{digits}g}") for r in reps]
