"""vchain.stats against scipy and against the textbook definitions written out here."""

import numpy as np
import pytest
import scipy.stats

from vchain import stats
from vchain.errors import ConfigurationError

RNG = np.random.default_rng(7)
PEOPLE = RNG.integers(1, 6, 40).astype(float)
JUDGE = np.clip(PEOPLE + RNG.integers(-1, 2, 40), 1, 5)


def kappa_by_the_book(a, b, k=5):
    """Cohen's quadratic-weighted kappa from the confusion matrix and the marginals (1..k)."""
    observed = np.zeros((k, k))
    for x, y in zip(a.astype(int), b.astype(int), strict=True):
        observed[x - 1, y - 1] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    weights = np.subtract.outer(np.arange(k), np.arange(k)) ** 2 / (k - 1) ** 2
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def test_correlations_and_kappa_match_scipy_and_the_definition():
    assert stats.point(stats.pearson, PEOPLE, JUDGE) == pytest.approx(scipy.stats.pearsonr(PEOPLE, JUDGE)[0])
    assert stats.point(stats.spearman, PEOPLE, JUDGE) == pytest.approx(scipy.stats.spearmanr(PEOPLE, JUDGE)[0])
    assert stats.point(stats.quadratic_kappa, PEOPLE, JUDGE) == pytest.approx(kappa_by_the_book(PEOPLE, JUDGE))
    assert stats.point(stats.quadratic_kappa, PEOPLE, PEOPLE) == pytest.approx(1.0)
    ties = np.array([1, 1, 2, 2, 2, 5.0])
    assert stats.ranks(ties)[0].tolist() == scipy.stats.rankdata(ties).tolist()


def test_undefined_statistics_are_none_never_nan():
    constant = np.full(6, 3.0)
    for statistic in (stats.pearson, stats.spearman):
        assert stats.point(statistic, constant, JUDGE[:6]) is None
    assert stats.point(stats.quadratic_kappa, constant, constant) is None
    assert stats.point(stats.mean, np.array([])) is None


def test_bootstrap_intervals_match_scipy_and_skip_undefined_resamples():
    for statistic, reference in (
        (stats.pearson, lambda x, y: np.corrcoef(x, y)[0, 1]),
        (stats.quadratic_kappa, kappa_by_the_book),
    ):
        low, high = stats.bootstrap_interval(statistic, PEOPLE, JUDGE, resamples=3000, seed=1)
        theirs = scipy.stats.bootstrap(
            (PEOPLE, JUDGE),
            reference,
            paired=True,
            vectorized=False,
            n_resamples=3000,
            method="percentile",
            rng=np.random.default_rng(2),
        ).confidence_interval
        assert low == pytest.approx(theirs.low, abs=0.05) and high == pytest.approx(theirs.high, abs=0.05)
    # Three values of which two are equal: a resample drawing only equal values has no correlation, and
    # is skipped (5 of 27 draws); the others give r = 1 or -1.
    low, high = stats.bootstrap_interval(stats.pearson, [1, 1, 2], [1, 1, 3], resamples=2000)
    assert (low, high) == (1.0, 1.0)
    assert stats.bootstrap_interval(stats.pearson, [3, 3, 3], [1, 2, 3]) is None


def test_fewer_than_two_values_have_no_interval_and_constant_values_a_point_one():
    assert stats.bootstrap_interval(stats.mean, [4.0]) is None
    assert stats.bootstrap_interval(stats.mean, [0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert stats.spread([3.0]) is None and stats.spread([1.0, 3.0]) == pytest.approx(np.std([1, 3], ddof=1))
    with pytest.raises(ConfigurationError, match="1-D arrays of one length"):
        stats.bootstrap_interval(stats.pearson, [1, 2], [1, 2, 3])
