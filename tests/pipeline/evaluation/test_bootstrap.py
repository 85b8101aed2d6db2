"""Bootstrap intervals: seeded, shrinking with more cases, resampling subjects as units."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.bootstrap import bootstrap_means, mean_ci, resample_weights


def test_same_seed_same_interval_and_it_contains_the_mean():
    x = np.random.default_rng(1).normal(0.8, 0.1, 30)
    a, b = mean_ci(x, seed=3), mean_ci(x, seed=3)
    assert a == b and a[0] < x.mean() < a[1]
    assert mean_ci(x, seed=4) != a


def test_intervals_shrink_with_more_cases():
    rng = np.random.default_rng(0)
    widths = []
    for n in (10, 40, 160):
        lo, hi = mean_ci(rng.normal(0.8, 0.1, n), resamples=2000, seed=0)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4, rel=0.35)  # ~ 1 / sqrt(n)


def test_two_scans_of_a_subject_are_always_drawn_together():
    subjects = ["p1", "p1", "p2", "p3", "p3", "p4"]
    w = resample_weights(subjects, resamples=500, seed=0)
    assert w.shape == (500, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all()
    assert (w.sum(1) > 0).all()
    assert not (w[:, 0] == w[:, 2]).all()  # other subjects are drawn independently
    per_subject = w[:, [0, 2, 3, 5]]
    assert (per_subject.sum(1) == 4).all()  # as many subjects drawn as there are


def test_subject_grouping_widens_the_interval_of_correlated_scans():
    rng = np.random.default_rng(0)
    patient = rng.normal(0.75, 0.12, 20)
    x = np.repeat(patient, 2) + rng.normal(0, 0.01, 40)  # two near-identical scans per patient
    subjects = np.repeat([f"s{i}" for i in range(20)], 2)
    lo_c, hi_c = mean_ci(x, None, seed=0)
    lo_s, hi_s = mean_ci(x, subjects, seed=0)
    assert (hi_s - lo_s) > 1.2 * (hi_c - lo_c)  # ~ sqrt(2) wider: 20 patients, not 40 cases


def test_nan_values_are_left_out_and_columns_are_independent():
    x = np.array([[1.0, np.nan], [2.0, 4.0], [3.0, 6.0]])
    w = resample_weights(["a", "b", "c"], resamples=50, seed=0)
    means = bootstrap_means(x, w)
    assert means.shape == (50, 2)
    lo, hi = mean_ci([np.nan, 2.0, 4.0])
    assert 2.0 <= lo <= hi <= 4.0
    assert all(np.isnan(mean_ci([np.nan, np.nan])))
