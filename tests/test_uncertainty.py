"""lib/evaluation/uncertainty.py: bootstrap replicates, their pairing and the percentile interval."""

from __future__ import annotations

import numpy as np
import pytest

from lib.evaluation import uncertainty as U
from lib.io import AtelierInputError
from lib.metrics.domain import frechet_distance


def test_resample_indices_depend_only_on_seed_count_and_stream():
    a = U.resample_indices(50, 20, seed=3)
    assert a.shape == (20, 50) and a.min() >= 0 and a.max() < 50
    assert (a == U.resample_indices(50, 20, seed=3)).all()  # every row of 50 samples: the same arrays
    assert not (a == U.resample_indices(50, 20, seed=4)).all()
    assert not (a == U.resample_indices(50, 20, seed=3, stream="timing/x")).all()
    # drawn with replacement: a resample repeats some samples
    assert all(len(np.unique(row)) < 50 for row in a)


def test_the_percentile_interval_of_a_mean_covers_it_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    small, large = rng.normal(5.0, 1.0, 40), rng.normal(5.0, 1.0, 1000)
    lo_s, hi_s = U.percentile_interval(U.replicates(small, 400, seed=0))
    lo_l, hi_l = U.percentile_interval(U.replicates(large, 400, seed=0))
    assert lo_s < small.mean() < hi_s and lo_l < 5.0 < hi_l
    # the standard error of a mean shrinks as 1/sqrt(n): 1000/40 samples -> ~5x narrower
    assert 3.0 < (hi_s - lo_s) / (hi_l - lo_l) < 8.0
    assert np.allclose(U.percentile_interval(list(range(101)), 0.9), (5.0, 95.0))


def test_pairing_by_position_finds_a_small_shift_that_unpaired_resampling_cannot():
    rng = np.random.default_rng(1)
    per_prompt = rng.normal(0.0, 1.0, 300)          # large variation between prompts, shared by both rows
    a, b = per_prompt + 0.05, per_prompt            # a small, consistent improvement per prompt
    paired = U.difference_interval(U.replicates(a, 300, seed=0), U.replicates(b, 300, seed=0))
    unpaired = U.difference_interval(U.replicates(a, 300, seed=0, stream="a"),
                                     U.replicates(b, 300, seed=0, stream="b"))
    assert paired[0] > 0                            # paired: the shift is resolved
    assert unpaired[0] < 0 < unpaired[1]            # unpaired: lost in the between-prompt spread


def test_fid_replicates_scatter_around_the_fid_and_separate_a_shifted_set():
    rng = np.random.default_rng(2)
    ref = rng.normal(0, 1, (120, 8))
    same = rng.normal(0, 1, (60, 8))
    shifted = rng.normal(0, 1, (60, 8)) + 0.8
    reps_same = U.fid_replicates(same, ref, 50, seed=0)
    reps_shift = U.fid_replicates(shifted, ref, 50, seed=0)
    assert len(reps_same) == 50 and len(set(reps_same)) > 40
    lo, hi = U.percentile_interval(reps_shift)
    assert lo < frechet_distance(shifted, ref) * 1.5 and hi > frechet_distance(shifted, ref) * 0.7
    assert U.difference_interval(reps_shift, reps_same)[0] > 0


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(AtelierInputError, match="non-empty"):
        U.replicates([], 10, 0)
    with pytest.raises(AtelierInputError, match="NaN"):
        U.replicates([1.0, float("nan")], 10, 0)
    with pytest.raises(AtelierInputError, match="resamples must be >= 1"):
        U.resample_indices(5, 0, 0)
    with pytest.raises(AtelierInputError, match="same resamples"):
        U.difference_interval([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(AtelierInputError, match="level must lie in"):
        U.percentile_interval([1.0, 2.0], 1.5)
    with pytest.raises(AtelierInputError, match="do not match"):
        U.fid_replicates(np.zeros((5, 3)), np.zeros((5, 4)), 3, 0)
