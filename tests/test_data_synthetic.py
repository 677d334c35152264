"""Synthetic traces: requested Zipf skew (fitted exponent within 0.05), exact head probabilities,
seeded reproducibility, scattered hot rows, pooling distributions, co-access groups, drift."""

from __future__ import annotations

import numpy as np
import pytest

from updlrm.data import CoAccess, Drift, TableWorkload, fit_zipf_alpha, synthetic_trace
from updlrm.data.stats import access_counts
from updlrm.data.synthetic import zipf_ranks


def test_fit_recovers_numpy_zipf_exponent():
    # Cross-check of the estimator on a trusted generator: numpy's Zipf truncated to 1..N is the
    # bounded Zipf law; counts indexed by true rank.
    rng = np.random.default_rng(0)
    draws = rng.zipf(1.3, size=2_000_000)
    n = 5000
    counts = np.bincount(draws[draws <= n] - 1, minlength=n)
    assert abs(fit_zipf_alpha(counts) - 1.3) < 0.01


@pytest.mark.parametrize("alpha", [0.8, 1.05, 1.2])
def test_zipf_trace_reproduces_the_requested_skew(alpha):
    rows = 20_000
    tr = synthetic_trace(TableWorkload(rows=rows, alpha=alpha, pooling_factor=50), samples=20_000, seed=11)
    counts = access_counts(tr, 0)
    assert counts.sum() == 1_000_000
    fitted = fit_zipf_alpha(counts, top=1000)  # ranks estimated from the counts, as on a real trace
    assert abs(fitted - alpha) < 0.05, fitted
    # The hottest ranks' shares match k^-alpha / H exactly (within sampling noise, 5 sigma).
    p = np.arange(1, rows + 1, dtype=np.float64) ** -alpha
    p /= p.sum()
    top = np.sort(counts)[::-1][:5] / counts.sum()
    sigma = np.sqrt(p[:5] * (1 - p[:5]) / counts.sum())
    assert np.all(np.abs(top - p[:5]) < 5 * sigma + 1e-4)


def test_big_table_tail_sampler_keeps_the_law():
    rows = 50_000_000  # beyond the exact head (2^20 ranks) and the stored permutation (2^24)
    rng = np.random.default_rng(3)
    ranks = zipf_ranks(rows, 1.0, 2_000_000, rng)
    assert ranks.min() >= 0 and ranks.max() < rows
    # Mass beyond the exact head: sum_{k > 2^20} k^-1 / H_rows, compared with the sample share.
    head = 1 << 20
    k = np.arange(1, rows + 1, dtype=np.float64)
    expected = (1 / k[head:]).sum() / (1 / k).sum()
    share = np.mean(ranks >= head)
    assert abs(share - expected) < 0.005
    tr = synthetic_trace(TableWorkload(rows=rows, alpha=1.0, pooling_factor=4), samples=1000, seed=1)
    assert tr.indices.max() < rows and tr.table_rows == [rows]


def test_same_seed_same_trace_other_seed_differs():
    w = [TableWorkload(rows=5000, alpha=1.1, pooling="uniform", pooling_min=1, pooling_max=30,
                       coaccess=CoAccess(8, 3, 0.4), drift=Drift(100, 50))] * 3
    a = synthetic_trace(w, 500, seed=42)
    b = synthetic_trace(w, 500, seed=42)
    c = synthetic_trace(w, 500, seed=43)
    assert a == b
    assert not np.array_equal(a.indices, c.indices) or not np.array_equal(a.offsets, c.offsets)
    # Adding a table does not change the existing ones (one child seed per table).
    d = synthetic_trace(w + [TableWorkload(rows=10)], 500, seed=42)
    assert d.select([0, 1, 2]) == a


def test_hot_rows_are_scattered_by_the_permutation():
    tr = synthetic_trace(TableWorkload(rows=100_000, alpha=1.2, pooling_factor=20), 5000, seed=0)
    hottest = np.argsort(access_counts(tr, 0))[::-1][:20]
    assert hottest.max() > 1000  # not rows 0..19
    # And the two tables with the same law get different permutations.
    tr2 = synthetic_trace(TableWorkload(rows=100_000, alpha=1.2, pooling_factor=20), 5000, seed=0, nr_tables=2)
    h0 = np.argsort(access_counts(tr2, 0))[::-1][:20]
    h1 = np.argsort(access_counts(tr2, 1))[::-1][:20]
    assert len(set(h0) & set(h1)) < 5


def test_pooling_distributions():
    n = 20_000
    fixed = synthetic_trace(TableWorkload(rows=100, pooling="fixed", pooling_factor=7), n, seed=1)
    assert np.all(fixed.lengths() == 7)
    uni = synthetic_trace(TableWorkload(rows=100, pooling="uniform", pooling_min=2, pooling_max=6), n, seed=1)
    lens = uni.lengths()[0]
    assert lens.min() == 2 and lens.max() == 6
    np.testing.assert_allclose(np.bincount(lens, minlength=7)[2:] / n, 0.2, atol=0.015)
    profile = (0.1, 0.0, 0.6, 0.3)
    prof = synthetic_trace(TableWorkload(rows=100, pooling="profile", pooling_profile=profile), n, seed=1)
    freq = np.bincount(prof.lengths()[0], minlength=4) / n
    np.testing.assert_allclose(freq, profile, atol=0.015)
    with pytest.raises(ValueError, match="pooling must be"):
        TableWorkload(rows=10, pooling="poisson")
    with pytest.raises(ValueError, match="rows must be >= 1"):
        TableWorkload(rows=0)


def test_coaccess_groups_appear_together():
    n, groups, size, prob = 4000, 4, 3, 0.5
    w = TableWorkload(rows=1_000_000, alpha=0.5, pooling_factor=6, coaccess=CoAccess(groups, size, prob))
    tr = synthetic_trace(w, n, seed=9)
    idx, off = tr.table(0)
    bags = idx.reshape(n, 6)
    # Groups are the first `size` ids of the bags that carry one; find them by their frequency.
    firsts, counts = np.unique(bags[:, :size], axis=0, return_counts=True)
    top = np.sort(counts)[::-1][:groups]
    # Each group starts ~prob * n / groups bags; 1M rows at alpha 0.5 make chance repeats rare.
    np.testing.assert_allclose(top, prob * n / groups, rtol=0.15)
    assert np.sort(counts)[::-1][groups] < 5


def test_drift_moves_the_hot_set():
    rows, period, shift = 50_000, 2000, 200
    w = TableWorkload(rows=rows, alpha=1.2, pooling_factor=20, drift=Drift(period, shift))
    tr = synthetic_trace(w, 3 * period, seed=4)
    epochs = list(tr.batches(period))
    hot = [set(np.argsort(access_counts(e, 0))[::-1][:20]) for e in epochs]
    # shift (200) > 20 hottest ranks: the top-20 hot set is replaced from one epoch to the next.
    assert len(hot[0] & hot[1]) <= 2 and len(hot[1] & hot[2]) <= 2
    still = synthetic_trace(TableWorkload(rows=rows, alpha=1.2, pooling_factor=20), 3 * period, seed=4)
    hot_s = [set(np.argsort(access_counts(e, 0))[::-1][:20]) for e in still.batches(period)]
    assert len(hot_s[0] & hot_s[1]) >= 15
