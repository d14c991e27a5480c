"""The statistics of evaluation: bootstrap intervals, correlations and weighted kappa, in numpy.

Every statistic here takes arrays of shape `(R, n)` (R resamples of n values, or one row) and returns R
values, NaN where the statistic is undefined on that row (a constant sample has no correlation), so that a
bootstrap computes all its resamples at once and skips the undefined ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vchain.errors import ConfigurationError

Statistic = Callable[..., np.ndarray]
SCALE = (1, 5)  # the fixed score scale that kappa's quadratic weights span
# Rows of resamples ranked at once: bounds the (rows, n, n) comparison arrays of `ranks` to ~100 MB.
_RANK_BATCH_ELEMENTS = 10_000_000


def mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's r of each row pair; NaN where either row is constant."""
    dx = x - x.mean(axis=-1, keepdims=True)
    dy = y - y.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((dx * dx).sum(axis=-1) * (dy * dy).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (dx * dy).sum(axis=-1) / denominator
    return np.where(denominator > 1e-12, np.clip(r, -1.0, 1.0), np.nan)


def ranks(x: np.ndarray) -> np.ndarray:
    """Each row's ranks from 1, ties given their average rank."""
    x = np.atleast_2d(x)
    rows = max(1, _RANK_BATCH_ELEMENTS // max(1, x.shape[-1] ** 2))
    out = np.empty(x.shape, dtype=float)
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        below = (block[:, :, None] > block[:, None, :]).sum(axis=-1)
        equal = (block[:, :, None] == block[:, None, :]).sum(axis=-1)
        out[start : start + rows] = below + (equal + 1) / 2
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho (Pearson's r of the ranks) of each row pair; NaN where either row is constant."""
    return pearson(ranks(x), ranks(y))


def quadratic_kappa(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cohen's kappa with quadratic weights over the fixed 1-5 scale, for each row pair.

    With weights `(i - j)^2 / (K - 1)^2` the observed disagreement is the mean squared difference and the
    chance one the mean over all cross pairs; the scale's width cancels. NaN where both raters gave one
    and the same score throughout (no disagreement is possible by chance).
    """
    observed = ((x - y) ** 2).mean(axis=-1)
    chance = x.var(axis=-1) + y.var(axis=-1) + (x.mean(axis=-1) - y.mean(axis=-1)) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = 1 - observed / chance
    return np.where(chance > 1e-12, kappa, np.nan)


def bootstrap_interval(
    statistic: Statistic, *samples, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """The percentile-bootstrap interval of `statistic` over paired `samples` (resampled together).

    None when there are fewer than two values, or when the statistic is undefined on every resample;
    resamples on which it is undefined are skipped. Repeatable for a seed.
    """
    arrays = [np.asarray(s, dtype=float) for s in samples]
    if not arrays or any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays):
        raise ConfigurationError(f"samples must be 1-D arrays of one length, got shapes {[a.shape for a in arrays]}")
    n = arrays[0].size
    if n < 2:
        return None
    indices = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    values = statistic(*(a[indices] for a in arrays))
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def point(statistic: Statistic, *samples) -> float | None:
    """`statistic` on the samples as they are; None when undefined or there are no values."""
    arrays = [np.asarray(s, dtype=float)[None, :] for s in samples]
    if arrays[0].size == 0:
        return None
    value = float(statistic(*arrays)[0])
    return value if np.isfinite(value) else None


def spread(values) -> float | None:
    """The sample standard deviation (ddof 1); None with fewer than two values."""
    data = np.asarray(values, dtype=float)
    return float(data.std(ddof=1)) if data.size >= 2 else None
