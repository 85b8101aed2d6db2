"""Percentile bootstrap intervals over cases, resampling subjects (all scans of a patient together).

Two scans of one patient are not independent: resampling them one by one makes intervals too
narrow. Each resample draws subjects with replacement and takes every case (and every class row)
of each drawn subject; the statistic is the mean over the drawn rows. The resamples are one
``(resamples, rows)`` weight matrix, so 2,000 resamples of hundreds of cases and several metrics
are one matrix product (milliseconds), and the same seed gives the same intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["IMPLEMENTATION", "resample_weights", "bootstrap_means", "mean_ci"]

IMPLEMENTATION = "percentile bootstrap of the mean, subjects resampled with replacement (numpy default_rng)"


def resample_weights(subjects: Sequence, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """How often each row is drawn in each resample when subjects are drawn with replacement.

    Args:
        subjects: the subject of each row (rows of one subject are always drawn together).
        resamples: number of resamples.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``(resamples, rows)`` integer counts; rows of one subject have equal counts in every resample.
    """
    _, group = np.unique(np.asarray([str(s) for s in subjects]), return_inverse=True)
    n_groups = int(group.max()) + 1 if group.size else 0
    if n_groups == 0:
        return np.zeros((int(resamples), 0), dtype=np.int64)
    rng = np.random.default_rng(int(seed))
    draws = rng.integers(0, n_groups, size=(int(resamples), n_groups))
    offsets = (np.arange(int(resamples)) * n_groups)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=int(resamples) * n_groups)
    return counts.reshape(int(resamples), n_groups)[:, group]


def bootstrap_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The mean of each column in each resample (NaN values are left out of their column).

    Args:
        values: ``(rows,)`` or ``(rows, columns)``.
        weights: ``(resamples, rows)`` from :func:`resample_weights`.

    Returns:
        ``(resamples,)`` or ``(resamples, columns)``; NaN where a resample drew no finite value.
    """
    x = np.asarray(values, dtype=float)
    flat = x.ndim == 1
    x = x[:, None] if flat else x
    ok = np.isfinite(x)
    w = np.asarray(weights, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (w @ np.where(ok, x, 0.0)) / (w @ ok.astype(float))
    return means[:, 0] if flat else means


def mean_ci(
    values: Sequence[float] | np.ndarray,
    subjects: Sequence | None = None,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """The ``level`` percentile bootstrap interval of the mean of ``values``.

    Args:
        values: one value per row (NaN rows are left out).
        subjects: the subject of each row; None: each row is its own subject.
        resamples: number of resamples (2,000 by default, ``eval.bootstrap_resamples``).
        seed: the seed (``eval.bootstrap_seed``).
        level: the coverage (``eval.ci_level``).

    Returns:
        ``(low, high)``; ``(nan, nan)`` without finite values. With one subject both equal the mean.
    """
    x = np.asarray(values, dtype=float)
    keep = np.isfinite(x)
    if not keep.any():
        return float("nan"), float("nan")
    subj = np.arange(x.size) if subjects is None else np.asarray([str(s) for s in subjects])
    w = resample_weights(subj[keep], resamples, seed)
    means = bootstrap_means(x[keep], w)
    alpha = (1.0 - float(level)) / 2.0
    low, high = np.nanquantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)
