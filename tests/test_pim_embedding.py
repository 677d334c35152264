"""PIM lookups (emulated DPUs) against torch.nn.EmbeddingBag(mode="sum").

Covers dims 1..600 (a 2,400-byte row, wider than one 2,048-byte DMA), repeated ids, empty bags, a
bag of thousands of ids, 1 / 16 / 24 tasklets, 1 to 256 DPUs, the table_wise / row_uniform /
column_wise strategies, hand-made plans with row-set groups and a replicated cache group, both
element types (fp32 within 1e-5 relative, int32 within the stated fixed-point bound), and batches
cut into several launches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from updlrm.partition import Plan, RowGroup, Shard, TableSpec, Topology, assign_offsets, make_plan, validate_plan
from updlrm.pim import PimEmbedding, PIMEmbeddingBag

# ---- helpers ---------------------------------------------------------------------------------


def make_weights(rng, rows, dims):
    return [rng.uniform(-1, 1, size=(r, d)).astype(np.float32) for r, d in zip(rows, dims)]


def make_batch(rng, rows, batch_size, max_len=6, big_bag=0, zipf=False):
    """Table-major indices/offsets; lengths 0..max_len (so empty bags), optional one huge bag."""
    T = len(rows)
    lens = rng.integers(0, max_len + 1, size=T * batch_size)
    if big_bag:
        lens[batch_size // 2] = big_bag  # table 0, one sample
    parts = []
    for k in range(T * batch_size):
        r = rows[k // batch_size]
        if zipf:
            ids = (rng.zipf(1.3, size=lens[k]) - 1) % r
        else:
            ids = rng.integers(0, r, size=lens[k])
        parts.append(ids)
    idx = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return idx, offs


def reference(weights, idx, offs, batch_size, dtype=torch.float32, absolute=False):
    """Per table [B, D_t] from torch EmbeddingBag(sum) (abs weights when absolute)."""
    out = []
    T = len(weights)
    for t in range(T):
        a, e = offs[t * batch_size], offs[(t + 1) * batch_size]
        w = torch.from_numpy(weights[t]).to(dtype)
        if absolute:
            w = w.abs()
        bag = torch.nn.EmbeddingBag.from_pretrained(w, mode="sum")
        o = bag(torch.from_numpy(idx[a:e]), torch.from_numpy(offs[t * batch_size : (t + 1) * batch_size] - a))
        out.append(o.numpy())
    return out


def assert_fp32_close(got, weights, idx, offs, batch_size):
    ref = reference(weights, idx, offs, batch_size, torch.float64)
    mag = reference(weights, idx, offs, batch_size, torch.float64, absolute=True)
    for t, (g, r, m) in enumerate(zip(got, ref, mag)):
        err = np.abs(g.astype(np.float64) - r)
        tol = 1e-5 * m + 1e-30
        assert np.all(err <= tol), f"table {t}: max err {err.max()} (rel {np.max(err / (m + 1e-30))})"


def assert_int32_within_bound(pim, got, weights, idx, offs, batch_size):
    ref = reference(weights, idx, offs, batch_size, torch.float64)
    lens = np.diff(offs).reshape(len(weights), batch_size)
    bound = pim.fixed_point_bound(lens)  # [T, B]
    assert bound.shape == lens.shape
    for t, (g, r) in enumerate(zip(got, ref)):
        err = np.abs(g.astype(np.float64) - r).max(axis=1)
        assert np.all(err <= bound[t]), f"table {t}: err {err.max()} > bound {bound[t][np.argmax(err - bound[t])]}"


def plan_for(rows, dims, nr_dpus, strategy, nr_tasklets=16, **kw):
    tables = [TableSpec(f"t{t}", r, d) for t, (r, d) in enumerate(zip(rows, dims))]
    return make_plan(tables, Topology(nr_dpus=nr_dpus, nr_tasklets=nr_tasklets), strategy, **kw)


# ---- strategies x dims x dtypes -------------------------------------------------------------

DIMS = [1, 3, 16, 64, 600]
ROWS = [97, 40, 300, 128, 33]


@pytest.mark.parametrize("strategy", ["row_uniform", "table_wise", "column_wise"])
@pytest.mark.parametrize("dtype", ["fp32", "int32"])
def test_all_dims_against_embedding_bag(strategy, dtype):
    rng = np.random.default_rng(1)
    B = 24
    weights = make_weights(rng, ROWS, DIMS)
    plan = plan_for(ROWS, DIMS, 8, strategy)
    with PimEmbedding(weights, plan, dtype=dtype) as pim:
        idx, offs = make_batch(rng, ROWS, B)
        got = pim.lookup_list(idx, offs, B)
        assert [g.shape for g in got] == [(B, d) for d in DIMS]
        if dtype == "fp32":
            assert_fp32_close(got, weights, idx, offs, B)
        else:
            assert_int32_within_bound(pim, got, weights, idx, offs, B)
        # a second batch on the same DPUs (kernel state reset per launch)
        idx, offs = make_batch(rng, ROWS, B, max_len=3)
        got = pim.lookup_list(idx, offs, B)
        if dtype == "fp32":
            assert_fp32_close(got, weights, idx, offs, B)
        else:
            assert_int32_within_bound(pim, got, weights, idx, offs, B)


@pytest.mark.parametrize("nr_dpus", [1, 3, 64, 256])
def test_dpu_counts(nr_dpus):
    rng = np.random.default_rng(nr_dpus)
    rows, dims = [1000, 517, 64, 3000], [16, 16, 16, 16]
    weights = make_weights(rng, rows, dims)
    plan = plan_for(rows, dims, nr_dpus, "row_uniform")
    with PimEmbedding(weights, plan) as pim:
        B = 32
        idx, offs = make_batch(rng, rows, B, max_len=20, zipf=True)
        out = pim.lookup(idx, offs, B)
        assert out.shape == (B, 4, 16) and out.dtype == np.float32
        assert_fp32_close([out[:, t] for t in range(4)], weights, idx, offs, B)
        c = pim.last_stats.counters
        assert int(c["lookups"].sum()) == idx.size  # row_uniform: one entry per lookup
        assert c["lookups"].shape == (nr_dpus,)
        assert c["lookups_per_tasklet"].sum() == idx.size


@pytest.mark.parametrize("nr_dpus", [1, 256])
@pytest.mark.parametrize("strategy", ["table_wise", "row_uniform", "column_wise"])
@pytest.mark.parametrize("dtype", ["fp32", "int32"])
def test_dpu_counts_every_strategy_both_dtypes(nr_dpus, strategy, dtype):
    """1 and 256 DPUs x every basic strategy x both element types against torch EmbeddingBag.
    At 256 DPUs table_wise leaves most DPUs empty, row_uniform and column_wise use them all
    (column_wise cuts the dims 8/16/64/600 into slices as narrow as 2 columns)."""
    rng = np.random.default_rng(nr_dpus + len(strategy))
    rows, dims = [1000, 517, 64, 3000], [16, 8, 64, 600]
    weights = make_weights(rng, rows, dims)
    plan = plan_for(rows, dims, nr_dpus, strategy)
    B = 16
    idx, offs = make_batch(rng, rows, B, max_len=12, zipf=True)
    with PimEmbedding(weights, plan, dtype=dtype) as pim:
        got = pim.lookup_list(idx, offs, B)
        assert [g.shape for g in got] == [(B, d) for d in dims]
        if dtype == "fp32":
            assert_fp32_close(got, weights, idx, offs, B)
        else:
            assert_int32_within_bound(pim, got, weights, idx, offs, B)
        # every lookup reads one entry per column slice of its table (no replicas in these plans)
        T = len(rows)
        shards = np.bincount([s.table for s in plan.shards], minlength=T)
        groups = np.bincount([g.table for g in plan.groups], minlength=T)
        per_table = np.diff(offs[:: B])
        c = pim.last_stats.counters
        assert c["lookups"].shape == (nr_dpus,)
        assert int(c["lookups"].sum()) == int((per_table * shards // groups).sum())
        busy = int(np.count_nonzero(c["lookups"]))
        if nr_dpus == 256 and strategy != "table_wise":
            assert busy > 64, f"{strategy} used only {busy} of 256 DPUs"


def test_repeated_ids_empty_bags_and_a_huge_bag_both_dtypes():
    rng = np.random.default_rng(7)
    rows, dims = [50, 2000], [8, 600]
    weights = make_weights(rng, rows, dims)
    B = 16
    idx, offs = make_batch(rng, rows, B, max_len=4, big_bag=5000)
    # force repeats and empties explicitly
    lens = np.diff(offs)
    assert (lens == 0).any() and lens.max() == 5000
    idx[offs[3] : offs[4]] = 7
    for dtype in ("fp32", "int32"):
        plan = plan_for(rows, dims, 5, "row_uniform")
        with PimEmbedding(weights, plan, dtype=dtype, max_bag_lookups=8192) as pim:
            got = pim.lookup_list(idx, offs, B)
            if dtype == "fp32":
                assert_fp32_close(got, weights, idx, offs, B)
            else:
                assert_int32_within_bound(pim, got, weights, idx, offs, B)
            for t in range(2):  # empty bags are exact zeros
                empty = lens[t * B : (t + 1) * B] == 0
                assert np.all(got[t][empty] == 0)


@pytest.mark.parametrize("nr_tasklets", [1, 16, 24])
def test_tasklet_counts(nr_tasklets):
    rng = np.random.default_rng(nr_tasklets)
    rows, dims = [300, 80], [600, 5]
    weights = make_weights(rng, rows, dims)
    plan = plan_for(rows, dims, 2, "row_uniform", nr_tasklets=nr_tasklets)
    with PimEmbedding(weights, plan) as pim:
        B = 40
        idx, offs = make_batch(rng, rows, B, max_len=12)
        got = pim.lookup_list(idx, offs, B)
        assert_fp32_close(got, weights, idx, offs, B)
        per_tasklet = pim.last_stats.counters["lookups_per_tasklet"]
        assert per_tasklet[:, nr_tasklets:].sum() == 0
        if nr_tasklets > 1:
            # shared by lookups: no tasklet gets more than its share plus one bag
            share = per_tasklet.sum(axis=1) / nr_tasklets
            assert np.all(per_tasklet[:, :nr_tasklets].max(axis=1) <= share + 12 + 1)


# ---- hand-made plans: row sets and a replicated cache group ------------------------------------


def handmade_plan(nr_tasklets=16):
    """Table 0 (100 x 8): even rows on DPU 0, odd rows on DPU 1 (row sets), hot rows 0..9 cached
    three times (DPU 2 whole; DPU 3 columns 0..3 + DPU 0 columns 4..7; DPU 1 whole).
    Table 1 (60 x 3): rows [0, 30) on DPU 2, [30, 60) split in columns over DPUs 3 and 1."""
    tables = [TableSpec("a", 100, 8), TableSpec("b", 60, 3)]
    groups = [
        RowGroup(table=0, rows=np.arange(0, 100, 2)),
        RowGroup(table=0, rows=np.arange(1, 100, 2)),
        RowGroup(table=0, rows=np.arange(10), kind="cache"),
        RowGroup(table=1, row_lo=0, row_hi=30),
        RowGroup(table=1, row_lo=30, row_hi=60),
    ]
    shards = [
        Shard(table=0, group=0, replica=0, dpu=0, col_lo=0, col_hi=8),
        Shard(table=0, group=1, replica=0, dpu=1, col_lo=0, col_hi=8),
        Shard(table=0, group=2, replica=0, dpu=2, col_lo=0, col_hi=8),
        Shard(table=0, group=2, replica=1, dpu=3, col_lo=0, col_hi=4),
        Shard(table=0, group=2, replica=1, dpu=0, col_lo=4, col_hi=8),
        Shard(table=0, group=2, replica=2, dpu=1, col_lo=0, col_hi=8),
        Shard(table=1, group=3, replica=0, dpu=2, col_lo=0, col_hi=3),
        Shard(table=1, group=4, replica=0, dpu=3, col_lo=0, col_hi=1),
        Shard(table=1, group=4, replica=0, dpu=1, col_lo=1, col_hi=3),
    ]
    plan = Plan(tables=tables, topology=Topology(nr_dpus=4, nr_tasklets=nr_tasklets), groups=groups, shards=shards)
    assign_offsets(plan)
    validate_plan(plan, tables)
    return plan


@pytest.mark.parametrize("dtype", ["fp32", "int32"])
def test_row_sets_and_replicated_cache(dtype):
    rng = np.random.default_rng(3)
    plan = handmade_plan()
    weights = make_weights(rng, [100, 60], [8, 3])
    B = 64
    with PimEmbedding(weights, plan, dtype=dtype) as pim:
        idx, offs = make_batch(rng, [100, 60], B, max_len=10, zipf=True)
        got = pim.lookup_list(idx, offs, B)
        if dtype == "fp32":
            assert_fp32_close(got, weights, idx, offs, B)
        else:
            assert_int32_within_bound(pim, got, weights, idx, offs, B)


def test_cache_replicas_share_the_load():
    """Only cached rows: the packer spreads them over the three replicas by DPU load."""
    rng = np.random.default_rng(4)
    plan = handmade_plan()
    weights = make_weights(rng, [100, 60], [8, 3])
    B = 50
    lens = np.zeros(2 * B, dtype=np.int64)
    lens[:B] = 6  # table 0 only
    offs = np.concatenate([[0], np.cumsum(lens)])
    idx = rng.integers(0, 10, size=int(lens.sum())).astype(np.int64)
    with PimEmbedding(weights, plan) as pim:
        got = pim.lookup_list(idx, offs, B)
        assert_fp32_close(got, weights, idx, offs, B)
        lk = pim.last_stats.counters["lookups"]  # row-slice reads per DPU
        # replica 0: DPU 2; replica 1: DPUs 3 and 0; replica 2: DPU 1 -> 300 lookups over 3 replicas
        assert lk.sum() == 300 + lk[0]  # replica 1 costs one entry on DPU 3 and one on DPU 0
        assert lk[0] == lk[3]
        # a bag's lookups of one group meet on one replica, so replicas end level within one
        # bag's lookups (6), and every bag is one partial sum (per column slice of its replica)
        assert max(lk[1], lk[2], lk[3]) - min(lk[1], lk[2], lk[3]) <= 6
        bags = pim.last_stats.counters["bags"]
        assert bags[1] + bags[2] + bags[3] == B


# ---- several launches --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "int32"])
def test_batch_cut_into_launches_gives_the_same_result(dtype):
    rng = np.random.default_rng(11)
    rows, dims = [500, 200], [16, 24]
    weights = make_weights(rng, rows, dims)
    B = 64
    idx, offs = make_batch(rng, rows, B, max_len=15, big_bag=900)
    plan = plan_for(rows, dims, 4, "row_uniform")
    small = plan.replace(request_bytes=1024, output_bytes=512)
    with PimEmbedding(weights, plan, dtype=dtype) as big_pim, PimEmbedding(weights, small, dtype=dtype) as small_pim:
        one = big_pim.lookup_list(idx, offs, B)
        assert big_pim.last_stats.counters["nr_launches"] == 1
        many = small_pim.lookup_list(idx, offs, B)
        c = small_pim.last_stats.counters
        assert c["nr_launches"] > 3
        assert len(c["launches"]) == c["nr_launches"]
        for a, b in zip(one, many):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        if dtype == "fp32":
            assert_fp32_close(many, weights, idx, offs, B)
        else:
            assert_int32_within_bound(small_pim, many, weights, idx, offs, B)
        # every launch respected the capacities
        assert np.all(np.asarray(c["request_bytes"]) > 0)
        for launch in c["launches"]:
            assert launch["lookups"].sum() > 0


# ---- the torch module --------------------------------------------------------------------------


def test_pim_embedding_bag_module_matches_torch():
    rng = np.random.default_rng(5)
    ws = [torch.from_numpy(w) for w in make_weights(rng, [120, 45], [16, 7])]
    mod = PIMEmbeddingBag(ws, nr_dpus=6, strategy="row_uniform")
    B = 10
    indices, offsets = [], []
    for t, w in enumerate(ws):
        lens = rng.integers(0, 5, size=B)
        offsets.append(torch.from_numpy(np.concatenate([[0], np.cumsum(lens)[:-1]])))
        indices.append(torch.from_numpy(rng.integers(0, w.shape[0], size=int(lens.sum()))))
    got = mod(indices, offsets)
    for t, w in enumerate(ws):
        ref = torch.nn.EmbeddingBag.from_pretrained(w, mode="sum")(indices[t], offsets[t])
        torch.testing.assert_close(got[t], ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="table 1: index 45 at position"):
        bad = [indices[0], torch.cat([indices[1], torch.tensor([45])])]
        mod(bad, offsets)
    mod.close()


def test_stats_phases_and_sources():
    rng = np.random.default_rng(6)
    weights = make_weights(rng, [100], [16])
    with PimEmbedding(weights, plan_for([100], [16], 4, "row_uniform")) as pim:
        idx, offs = make_batch(rng, [100], 8)
        pim.lookup(idx, offs, 8)
        st = pim.last_stats
        assert [p.name for p in st.phases] == ["pack", "cpu_to_dpu", "kernel", "dpu_to_cpu", "merge"]
        src = {p.name: p.source for p in st.phases}
        assert src["pack"] == src["merge"] == "measured"
        assert src["kernel"] == src["cpu_to_dpu"] == src["dpu_to_cpu"] == "emulator-wall"
        c = st.counters
        assert c["dma_read_ops"].shape == (4, 24)
        # every lookup reads one 64-byte row slice: DMA bytes cover at least that
        assert c["dma_read_bytes"].sum() >= 64 * idx.size
        assert c["dma_write_bytes"].sum() == 64 * c["bags"].sum()
        assert np.all(c["pushed_bytes"] >= 32)


@pytest.mark.parametrize("dtype", ["fp32", "int32"])
def test_replicated_cache_plan_cut_into_launches(dtype):
    rng = np.random.default_rng(12)
    plan = handmade_plan(nr_tasklets=1).replace(request_bytes=256, output_bytes=128)
    weights = make_weights(rng, [100, 60], [8, 3])
    B = 40
    idx, offs = make_batch(rng, [100, 60], B, max_len=30, zipf=True)
    with PimEmbedding(weights, plan, dtype=dtype) as pim:
        got = pim.lookup_list(idx, offs, B)
        assert pim.last_stats.counters["nr_launches"] > 5
        if dtype == "fp32":
            assert_fp32_close(got, weights, idx, offs, B)
        else:
            assert_int32_within_bound(pim, got, weights, idx, offs, B)


@pytest.mark.parametrize("dtype", ["fp32", "int32"])
def test_every_registered_strategy(dtype):
    """Every strategy the partitioner registers (incl. popularity/cache-aware ones, fed an access
    profile of a Zipf trace) gives plans the PIM backend serves exactly like EmbeddingBag."""
    from updlrm.partition import strategy_names
    from updlrm.partition.profile import TraceArrays, profile_trace

    rng = np.random.default_rng(21)
    rows, dims = [400, 90, 1200], [16, 16, 16]
    tables = [TableSpec(f"t{t}", r, d) for t, (r, d) in enumerate(zip(rows, dims))]
    weights = make_weights(rng, rows, dims)
    B = 48
    trace_idx, trace_offs = make_batch(rng, rows, 256, max_len=12, zipf=True)
    profile = profile_trace(TraceArrays(trace_idx, trace_offs, 256), tables)
    idx, offs = make_batch(rng, rows, B, max_len=12, zipf=True)
    names = strategy_names()
    assert {"table_wise", "row_uniform", "column_wise"} <= set(names)
    for name in names:
        plan = make_plan(tables, Topology(nr_dpus=8), name, profile)
        with PimEmbedding(weights, plan, dtype=dtype) as pim:
            got = pim.lookup_list(idx, offs, B)
            if dtype == "fp32":
                assert_fp32_close(got, weights, idx, offs, B)
            else:
                assert_int32_within_bound(pim, got, weights, idx, offs, B)
