"""Host threads of the PIM packer/merger: results, counters and errors do not depend on them.

UPDLRM_HOST_THREADS=n forces n pack/merge threads even on small batches (normally small batches
stay on one thread). Each plan kind (table-wise fast path, row ranges with several shards per bag,
a plan cut into several launches, int32) is checked against torch EmbeddingBag with 1, 2 and 3
threads; threaded results must also equal the single-threaded ones bit for bit (the merge keeps
each element's summation order).
"""
from __future__ import annotations

import numpy as np
import pytest

from updlrm.partition import PlanError
from updlrm.pim import PimEmbedding

from test_pim_embedding import (
    assert_fp32_close,
    assert_int32_within_bound,
    make_batch,
    make_weights,
    plan_for,
)

ROWS = [97, 400, 33, 250]
DIMS = [16, 16, 16, 16]


def run_with_threads(monkeypatch, pim, idx, offs, B, threads):
    monkeypatch.setenv("UPDLRM_HOST_THREADS", str(threads))
    out = pim.lookup_list(idx, offs, B)
    counters = {k: np.array(pim.last_stats.counters[k]) for k in ("lookups", "bags", "elements")}
    return [o.copy() for o in out], counters


@pytest.mark.parametrize("strategy", ["table_wise", "row_uniform", "column_wise"])
@pytest.mark.parametrize("dtype", ["fp32", "int32"])
def test_threads_give_the_same_answer(monkeypatch, strategy, dtype):
    rng = np.random.default_rng(7)
    weights = make_weights(rng, ROWS, DIMS)
    B = 61  # not a multiple of the thread counts: uneven sample ranges
    idx, offs = make_batch(rng, ROWS, B, max_len=9, zipf=True)
    with PimEmbedding(weights, plan_for(ROWS, DIMS, 8, strategy), dtype=dtype) as pim:
        base, base_counters = run_with_threads(monkeypatch, pim, idx, offs, B, 1)
        if dtype == "fp32":
            assert_fp32_close(base, weights, idx, offs, B)
        else:
            assert_int32_within_bound(pim, base, weights, idx, offs, B)
        for threads in (2, 3):
            got, counters = run_with_threads(monkeypatch, pim, idx, offs, B, threads)
            for t, (g, b) in enumerate(zip(got, base)):
                assert np.array_equal(g, b), f"{threads} threads, table {t}: differs from 1 thread"
            for k, v in counters.items():
                assert np.array_equal(v, base_counters[k]), f"{threads} threads: counter {k} differs"


def test_threads_with_a_batch_cut_into_launches(monkeypatch):
    rng = np.random.default_rng(3)
    weights = make_weights(rng, ROWS, DIMS)
    B = 40
    idx, offs = make_batch(rng, ROWS, B, max_len=12)
    plan = plan_for(ROWS, DIMS, 4, "table_wise").replace(request_bytes=1024, output_bytes=512)
    with PimEmbedding(weights, plan) as pim:
        for threads in (1, 2):
            got, _ = run_with_threads(monkeypatch, pim, idx, offs, B, threads)
            assert pim.last_stats.counters["nr_launches"] > 1
            assert_fp32_close(got, weights, idx, offs, B)


def test_bad_id_reported_at_the_first_bad_lookup_with_threads(monkeypatch):
    rng = np.random.default_rng(5)
    weights = make_weights(rng, ROWS, DIMS)
    B = 50
    idx, offs = make_batch(rng, ROWS, B, max_len=6)
    from updlrm.errors import InvalidBatchError

    with PimEmbedding(weights, plan_for(ROWS, DIMS, 8, "table_wise")) as pim:
        n = idx.size
        bad_at = [n // 3, n - 2]  # one in each half: the first must be named
        bad = idx.copy()
        bad[bad_at[0]] = -4
        bad[bad_at[1]] = 10**6
        monkeypatch.setenv("UPDLRM_HOST_THREADS", "2")
        with pytest.raises(InvalidBatchError, match=f"position {bad_at[0]}: index -4 is outside 0..") as info:
            pim.lookup_list(bad, offs, B)
        k = int(np.searchsorted(offs, bad_at[0], side="right")) - 1
        assert f"table {k // B}, sample {k % B}" in str(info.value)
        # the runtime still serves the next good batch
        monkeypatch.delenv("UPDLRM_HOST_THREADS")
        got = pim.lookup_list(idx, offs, B)
        assert_fp32_close(got, weights, idx, offs, B)
