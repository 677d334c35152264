"""Replica choice of the PIM packer on a cache_aware plan: base load first, then cached rows.

The packer counts every lookup of a single-replica row group first and only then sends each
lookup of a replicated (cached) group to its least-loaded replica. Checked against the
partitioner's numpy model (Router order="base_first" vs "table") and against torch EmbeddingBag.
"""
from __future__ import annotations

import numpy as np

from updlrm.partition import TableSpec, Topology, make_plan
from updlrm.partition.profile import TraceArrays, profile_trace
from updlrm.partition.routing import Router
from updlrm.pim import PimEmbedding

from test_pim_embedding import assert_fp32_close, make_weights


def zipf_batch(rng, rows, B, pooling, alpha):
    parts = []
    for r in rows:
        ranks = rng.zipf(alpha, size=B * pooling) - 1
        parts.append(rng.permutation(r)[ranks % r])
    idx = np.concatenate(parts).astype(np.int64)
    return idx, np.arange(len(rows) * B + 1, dtype=np.int64) * pooling


def test_cached_rows_go_where_the_base_load_is_lowest():
    rng = np.random.default_rng(11)
    rows = [3000, 800, 5000, 1200, 400, 2500, 6000, 900]
    dims = [8] * len(rows)
    tables = [TableSpec(f"t{t}", r, d) for t, (r, d) in enumerate(zip(rows, dims))]
    B = 256
    prof_idx, prof_offs = zipf_batch(rng, rows, B, 10, 1.05)
    profile = profile_trace(TraceArrays(prof_idx, prof_offs, B), tables)
    plan = make_plan(tables, Topology(nr_dpus=16, nr_tasklets=4), "cache_aware", profile=profile)
    assert any(len({s.replica for s in plan.shards if s.group == g}) > 1 for g in range(len(plan.groups))), \
        "the plan must replicate some groups for this test to mean anything"
    idx, offs = zipf_batch(rng, rows, B, 10, 1.05)
    weights = make_weights(rng, rows, dims)
    with PimEmbedding(weights, plan) as pim:
        got = pim.lookup_list(idx, offs, B)
        loads = np.asarray(pim.last_stats.counters["lookups"], dtype=np.float64)
    assert_fp32_close(got, weights, idx, offs, B)
    assert loads.sum() == idx.size
    base_first = Router(plan, order="base_first").route(idx, offs, B).lookups_per_dpu.astype(np.float64)
    table = Router(plan, order="table").route(idx, offs, B).lookups_per_dpu.astype(np.float64)
    imb = loads.max() / loads.mean()
    # as balanced as the numpy model of the two-pass choice (within a few lookups of its max)
    assert loads.max() <= base_first.max() + 2, (loads.max(), base_first.max())
    assert imb <= table.max() / table.mean() + 1e-9
