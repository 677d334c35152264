"""Tests of issue 4: access profiles, the strategies (tile_uniform, popularity_balanced,
cache_aware and the baselines), the numpy router / cost estimator, and their agreement with the
PIM backend on the emulator (results equal torch EmbeddingBag; per-DPU lookup counts equal the
packer's).

References: torch.nn.functional.embedding_bag for results; plain Python loops over lookups (fine in
tests) for routing, water-filling and per-DPU counters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from updlrm.partition import (
    MIB,
    PlanDoesNotFitError,
    PlanError,
    TableSpec,
    Topology,
    make_plan,
    shard_arrays,
    strategy_names,
    validate_plan,
)
from updlrm.partition.cost import CostEstimator, SimpleLatency, expected_load
from updlrm.partition.lab import compare, format_reports, zipf_workload
from updlrm.partition.profile import as_trace, profile_trace
from updlrm.partition.routing import Router, water_fill
from updlrm.partition.types import Plan, RowGroup, Shard

TABLES = [TableSpec("big", 2000, 16), TableSpec("three", 3, 8), TableSpec("mid", 300, 3), TableSpec("wide", 64, 600)]
ALL = ["table_wise", "row_uniform", "column_wise", "tile_uniform", "popularity_balanced", "cache_aware"]


@pytest.fixture(scope="module")
def workload():
    return zipf_workload(TABLES, alpha=1.1, pooling=6, batch_size=64, profile_batches=6, eval_batches=2, seed=3)


def coverage_reference(plan):
    for t, spec in enumerate(plan.tables):
        cnt = np.zeros((spec.rows, spec.dim), dtype=np.int32)
        for s in plan.shards:
            g = plan.groups[s.group]
            if s.table == t and g.kind == "base":
                cnt[g.global_rows(), s.col_lo:s.col_hi] += 1
        assert (cnt == 1).all()
        for gi, g in enumerate(plan.groups):  # every replica of every group covers [0, dim) once
            if g.table != t:
                continue
            reps = {}
            for s in plan.shards:
                if s.group == gi:
                    reps.setdefault(s.replica, []).append((s.col_lo, s.col_hi))
            for sl in reps.values():
                c = np.zeros(spec.dim, dtype=int)
                for lo, hi in sl:
                    c[lo:hi] += 1
                assert (c == 1).all()


def test_registry_lists_every_strategy():
    assert set(ALL) <= set(strategy_names())


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("nr_dpus", [1, 5, 64, 300])
def test_every_strategy_validates(workload, strategy, nr_dpus):
    plan = make_plan(TABLES, Topology(nr_dpus=nr_dpus), strategy, profile=workload.profile)
    validate_plan(plan, TABLES)
    coverage_reference(plan)
    assert plan.strategy == strategy


def test_profile_counts_match_bincount(workload):
    tr = workload.profile_trace
    for t, spec in enumerate(TABLES):
        a, b = tr.table_slice(t)
        ref = np.bincount(tr.indices[a:b], minlength=spec.rows)
        assert np.array_equal(workload.profile.counts[t], ref)
    c = workload.profile.counts[1]
    assert workload.profile.hot_coverage(1, 1) == pytest.approx(c.max() / c.sum())
    assert workload.profile.hot_coverage(1, 3) == pytest.approx(1.0)


def test_profile_rejects_bad_trace():
    idx = np.array([0, 5], dtype=np.int64)
    off = np.array([0, 1, 2], dtype=np.int64)
    with pytest.raises(PlanError, match=r"table 1 'b' lookup 0 is row 5, outside \[0, 3\)"):
        profile_trace((idx, off, 1), [TableSpec("a", 4, 2), TableSpec("b", 3, 2)])
    with pytest.raises(PlanError, match=r"has 2 tables but the model has 1"):
        profile_trace((idx, off, 1), [TableSpec("a", 4, 2)])


def test_coaccess_counts():
    # 3 bags of one table: {0,1}, {0,1,2}, {2}
    idx = np.array([0, 1, 0, 1, 2, 2], dtype=np.int64)
    off = np.array([0, 2, 5, 6], dtype=np.int64)
    p = profile_trace((idx, off, 3), [TableSpec("a", 5, 2)], coaccess_top=3)
    hot, co = p.coaccess[0]
    assert hot.tolist() == [0, 1, 2]
    assert co.tolist() == [[2, 2, 1], [2, 2, 1], [1, 1, 2]]


def test_water_fill_equals_greedy():
    rng = np.random.default_rng(0)
    for _ in range(200):
        r = int(rng.integers(1, 9))
        loads = rng.integers(0, 20, size=r)
        count = int(rng.integers(0, 60))
        ref = loads.copy()
        for _ in range(count):
            ref[int(np.argmin(ref))] += 1
        got = water_fill(loads, count)
        assert got.sum() == count and np.array_equal(loads + got, ref)


def _plan_maps(plan):
    """Python dicts of a plan: (group, replica) -> DPUs of its column slices (by col_lo),
    group -> replica count, (table, row) -> the group a lookup of it goes to (cache first)."""
    slots = {}
    for s in sorted(plan.shards, key=lambda s: s.col_lo):
        slots.setdefault((s.group, s.replica), []).append(s.dpu)
    reps = {}
    for (g, r) in slots:
        reps[g] = max(reps.get(g, 0), r + 1)
    where = {}
    for gi, g in enumerate(plan.groups):
        for row in g.global_rows().tolist():
            key = (g.table, row)
            if g.kind == "cache" or key not in where:
                where[key] = gi
    return slots, reps, where


def route_reference(plan, indices, offsets, B, order="base_first"):
    """Per-DPU entries with a Python loop, transcribing the packer's rule (host/python/packer.cpp).
    Per phase (the whole batch for order="base_first", each table for "table"): every
    single-replica lookup is counted first; then each cached lookup, in lookup order, goes to the
    replica whose busiest column-slice DPU has the fewest entries (strictly fewer than every
    lower-numbered replica); every column slice of the chosen replica is one entry."""
    n = plan.topology.nr_dpus
    loads = np.zeros(n, dtype=np.int64)
    slots, reps, where = _plan_maps(plan)
    T = len(plan.tables)
    phases = [range(T)] if order == "base_first" else [[t] for t in range(T)]
    for tables in phases:
        cached = []
        for t in tables:
            for i in range(int(offsets[t * B]), int(offsets[(t + 1) * B])):
                g = where[(t, int(indices[i]))]
                if reps[g] == 1:
                    for d in slots[(g, 0)]:
                        loads[d] += 1
                else:
                    cached.append(g)
        for g in cached:
            best, best_load = 0, None
            for r in range(reps[g]):
                lr = max(loads[d] for d in slots[(g, r)])
                if best_load is None or lr < best_load:
                    best, best_load = r, lr
            for d in slots[(g, best)]:
                loads[d] += 1
    return loads


def bag_fill_reference(plan, indices, offsets, B):
    """Per-DPU entries and partial sums of the packer's "bag fill" rule, with Python loops: base
    lookups counted first; then per cache group (increasing id) its units - the lookups of one bag
    in that group, in bag order - take replicas by the water-filled quotas (items handed one by one
    to the least-loaded replica, lowest index on ties) and the unit midpoints."""
    n = plan.topology.nr_dpus
    loads = np.zeros(n, dtype=np.int64)
    sums = np.zeros(n, dtype=np.int64)
    slots, reps, where = _plan_maps(plan)
    units = {}  # cache group -> [[bag, lookups]] in bag order
    for k in range(len(plan.tables) * B):
        t = k // B
        in_bag = {}
        for i in range(int(offsets[k]), int(offsets[k + 1])):
            g = where[(t, int(indices[i]))]
            in_bag[g] = in_bag.get(g, 0) + 1
        for g, c in in_bag.items():
            if reps[g] == 1:
                for d in slots[(g, 0)]:
                    loads[d] += c
                    sums[d] += 1
            else:
                units.setdefault(g, []).append(c)
    for g in sorted(units):
        R = reps[g]
        bins = [max(loads[d] for d in slots[(g, r)]) for r in range(R)]
        level = list(bins)
        total = sum(units[g])
        for _ in range(total):
            j = min(range(R), key=lambda r: (level[r], r))
            level[j] += 1
        quota = np.cumsum([level[r] - bins[r] for r in range(R)])
        got = [0] * R
        p = 0
        for c in units[g]:
            j = int(np.searchsorted(quota, p + c // 2, side="right"))
            got[j] += c
            p += c
            for d in slots[(g, j)]:
                sums[d] += 1
        for r in range(R):
            for d in slots[(g, r)]:
                loads[d] += got[r]
    return loads, sums


@pytest.mark.parametrize("strategy", ALL)
def test_bag_fill_router_matches_python_reference(workload, strategy):
    plan = make_plan(TABLES, Topology(nr_dpus=24), strategy, profile=workload.profile)
    idx, off, B = next(workload.eval_trace.batches(64))
    routed = Router(plan, "bag_fill").route(idx, off, B)
    loads, sums = bag_fill_reference(plan, idx, off, B)
    assert np.array_equal(routed.lookups_per_dpu, loads)
    bags = CostEstimator(SimpleLatency(), order="bag_fill").dpu_load(plan, routed, B).bags
    assert np.array_equal(bags, sums)


def test_bag_fill_router_matches_reference_on_sliced_and_overlapping_replicas():
    plan = sliced_replica_plan()
    rng = np.random.default_rng(5)
    B = 40
    hot_a = rng.choice(np.array([0, 1, 2, 55, 56, 9, 70]), size=B * 6, p=[.25, .15, .1, .2, .1, .1, .1])
    hot_b = np.where(rng.random(B * 6) < 0.6, 0, rng.integers(0, 60, size=B * 6))
    idx = np.concatenate([hot_a, hot_b]).astype(np.int64)
    off = np.arange(2 * B + 1, dtype=np.int64) * 6
    routed = Router(plan, "bag_fill").route(idx, off, B)
    loads, sums = bag_fill_reference(plan, idx, off, B)
    assert np.array_equal(routed.lookups_per_dpu, loads), (routed.lookups_per_dpu.tolist(), loads.tolist())
    bags = CostEstimator(SimpleLatency()).dpu_load(plan, routed, B).bags
    assert np.array_equal(bags, sums)


@pytest.mark.parametrize("order", ["table", "base_first"])
@pytest.mark.parametrize("strategy", ALL)
def test_router_matches_python_reference(workload, strategy, order):
    plan = make_plan(TABLES, Topology(nr_dpus=24), strategy, profile=workload.profile)
    idx, off, B = next(workload.eval_trace.batches(64))
    routed = Router(plan, order).route(idx, off, B)
    ref = route_reference(plan, idx, off, B, order)
    assert np.array_equal(routed.lookups_per_dpu, ref)


def test_estimator_counters_match_python_reference(workload):
    plan = make_plan(TABLES, Topology(nr_dpus=16), "tile_uniform", profile=workload.profile, col_slices=2)
    idx, off, B = next(workload.eval_trace.batches(64))
    est = CostEstimator(SimpleLatency())
    c = est.batch_cost(plan, idx, off, B)
    routed = est.router(plan).route(idx, off, B)
    n = 16
    bags = [set() for _ in range(n)]
    rbytes = np.zeros(n, dtype=np.int64)
    out = np.zeros(n, dtype=np.int64)
    for sh, d, bag in zip(routed.shard.tolist(), routed.dpu.tolist(), routed.bag.tolist()):
        s = plan.shards[sh]
        rb = -(-(s.col_hi - s.col_lo) * 4 // 8) * 8
        rbytes[d] += rb
        if (bag, sh) not in bags[d]:
            bags[d].add((bag, sh))
            out[d] += rb
    nb = np.array([len(b) for b in bags])
    assert np.array_equal(c.load.bags, nb)
    assert np.array_equal(c.load.mram_read_bytes, rbytes)
    assert np.array_equal(c.load.output_bytes, out)
    lk = c.load.lookups
    assert np.array_equal(c.load.request_bytes, -(-nb * 16 // 8) * 8 + -(-lk * 4 // 8) * 8)
    assert c.imbalance == pytest.approx(lk.max() / lk.mean())
    # transfer time grows with the padded (largest DPU) length, not the useful bytes
    lat = SimpleLatency()
    assert c.phases_us["dpu_to_cpu"] == pytest.approx((lat.from_dpu_fixed_s + out.max() * n / lat.from_dpu_bytes_per_s) * 1e6)


def sliced_replica_plan():
    """Hand-made plan exercising every replica-choice path of the Router: a cache group whose
    replicas share a DPU (chosen lookup by lookup), one whose 2-slice replicas sit on distinct
    DPUs (water-filled on the busiest slice), single-slice replicas, and a 2-slice base range."""
    tables = [TableSpec("a", 100, 16), TableSpec("b", 60, 16)]
    groups = [RowGroup(0, 0, 50), RowGroup(0, 50, 100), RowGroup(1, 0, 60),
              RowGroup(0, rows=np.array([0, 1, 2]), kind="cache"), RowGroup(0, rows=np.array([55, 56]), kind="cache"),
              RowGroup(1, rows=np.array([0]), kind="cache")]
    # (table, group, replica, dpu, col_lo, col_hi)
    sh = [(0, 0, 0, 0, 0, 16), (0, 1, 0, 4, 0, 8), (0, 1, 0, 5, 8, 16), (1, 2, 0, 2, 0, 16),
          (0, 3, 0, 0, 0, 8), (0, 3, 0, 1, 8, 16), (0, 3, 1, 1, 0, 8), (0, 3, 1, 2, 8, 16),
          (0, 3, 2, 3, 0, 8), (0, 3, 2, 4, 8, 16),
          (0, 4, 0, 2, 0, 8), (0, 4, 0, 3, 8, 16), (0, 4, 1, 4, 0, 8), (0, 4, 1, 5, 8, 16),
          (1, 5, 0, 0, 0, 16), (1, 5, 1, 3, 0, 16), (1, 5, 2, 5, 0, 16)]
    shards = [Shard(*x) for x in sh]
    return Plan(tables, Topology(nr_dpus=6), groups, shards)


@pytest.mark.parametrize("order", ["base_first", "table"])
def test_router_matches_reference_on_sliced_and_overlapping_replicas(order):
    plan = sliced_replica_plan()
    rng = np.random.default_rng(5)
    B = 40
    hot_a = rng.choice(np.array([0, 1, 2, 55, 56, 9, 70]), size=B * 6, p=[.25, .15, .1, .2, .1, .1, .1])
    hot_b = np.where(rng.random(B * 6) < 0.6, 0, rng.integers(0, 60, size=B * 6))
    idx = np.concatenate([hot_a, hot_b]).astype(np.int64)
    off = np.arange(2 * B + 1, dtype=np.int64) * 6
    routed = Router(plan, order).route(idx, off, B)
    ref = route_reference(plan, idx, off, B, order)
    assert np.array_equal(routed.lookups_per_dpu, ref), (routed.lookups_per_dpu.tolist(), ref.tolist())
    assert routed.lookups_per_dpu.sum() == len(routed.dpu)


def test_one_hot_row_spreads_over_replicas():
    tables = [TableSpec("hot", 1000, 16), TableSpec("other", 5000, 16)]
    rng = np.random.default_rng(1)

    def trace(samples, seed):
        r = np.random.default_rng(seed)
        t0 = np.full(samples * 10, 7, dtype=np.int64)  # table 0: every lookup is row 7
        t1 = r.integers(0, 5000, size=samples * 10)
        return (np.concatenate([t0, t1]), np.arange(2 * samples + 1, dtype=np.int64) * 10, samples)

    a, b = trace(256, 1), trace(128, 2)
    prof = profile_trace(a, tables, source="A")
    plan = make_plan(tables, Topology(nr_dpus=32), "cache_aware", profile=prof)
    caches = [gi for gi, g in enumerate(plan.groups) if g.kind == "cache" and 7 in g.global_rows().tolist()]
    assert len(caches) == 1
    rep_dpus = [s.dpu for s in plan.shards if s.group == caches[0]]
    assert len(rep_dpus) >= 8 and len(set(rep_dpus)) == len(rep_dpus)
    routed = Router(plan).route(b[0], b[1], b[2])  # the packer's rule: one replica per (bag, group)
    hot = routed.cached  # lookups of row 7 (the only cached traffic here)
    assert hot[: 128 * 10].all() and hot.sum() == 1280
    per_dpu = np.bincount(routed.dpu[: 1280], minlength=32)
    # row 7's lookups land only on its replicas, every replica serving some
    assert set(np.flatnonzero(per_dpu)) <= set(rep_dpus) and per_dpu[rep_dpus].sum() == 1280
    assert per_dpu[rep_dpus].min() > 0
    # each bag's 10 lookups of row 7 meet on one replica: one partial sum per bag
    assert np.unique(routed.bag[:1280] * 32 + routed.dpu[:1280]).size == 128
    # other tables' (base) lookups are counted first, so the replicas' *total* loads end level,
    # within the rounding of whole units to quotas (at most two units of 10 lookups)
    totals = routed.lookups_per_dpu
    assert totals[rep_dpus].max() - totals[rep_dpus].min() <= 2 * 10
    # one replica per lookup (the earlier packer): level within one lookup, but a partial sum
    # for every replica a bag touches
    lf = Router(plan, "base_first").route(b[0], b[1], b[2])
    assert lf.lookups_per_dpu[rep_dpus].max() - lf.lookups_per_dpu[rep_dpus].min() <= 1
    assert np.unique(lf.bag[:1280] * 32 + lf.dpu[:1280]).size > 3 * 128
    # the old table-by-table packer (table 0 comes first) dealt row 7's lookups evenly instead
    old = np.bincount(Router(plan, "table").route(b[0], b[1], b[2]).dpu[: 1280], minlength=32)
    assert old[rep_dpus].sum() == 1280 and old[rep_dpus].max() - old[rep_dpus].min() <= 1
    # without the cache (popularity_balanced), one DPU takes all of row 7
    pb = make_plan(tables, Topology(nr_dpus=32), "popularity_balanced", profile=prof)
    r2 = Router(pb).route(b[0], b[1], b[2])
    assert np.bincount(r2.dpu[:1280], minlength=32).max() == 1280


def test_cache_aware_balances_skewed_trace(workload):
    est = CostEstimator(SimpleLatency())
    rows = compare(TABLES, Topology(nr_dpus=64), workload, 64, ["row_uniform", "popularity_balanced", "cache_aware"], est)
    by = {r["strategy"]: r for r in rows}
    assert by["cache_aware"]["imbalance"] < by["popularity_balanced"]["imbalance"]
    assert by["cache_aware"]["imbalance"] < by["row_uniform"]["imbalance"]
    assert by["cache_aware"]["replica_hit_rate"] > 0.3
    assert by["row_uniform"]["replica_hit_rate"] == 0


def test_report_names_profile_and_eval_traces(workload):
    plan = make_plan(TABLES, Topology(nr_dpus=8), "popularity_balanced", profile=workload.profile)
    rep = CostEstimator(SimpleLatency()).evaluate(plan, workload.eval_trace, 64, profile=workload.profile)
    assert rep.profile_source.startswith("trace A") and rep.eval_source.startswith("trace B")
    assert rep.profile_fingerprint != rep.eval_fingerprint
    a = workload.profile_trace
    b = workload.eval_trace
    assert not (a.indices.shape == b.indices.shape and np.array_equal(a.indices, b.indices))
    with pytest.raises(PlanError, match=r"is the trace the profile was made from"):
        CostEstimator(SimpleLatency()).evaluate(plan, workload.profile_trace, 64, profile=workload.profile)
    text = format_reports(compare(TABLES, Topology(nr_dpus=8), workload, 64, ["row_uniform"], CostEstimator(SimpleLatency())))
    assert "profiled on: trace A" in text and "evaluated on: trace B" in text
    assert "imbalance*" in text and "imb worst batch" in text
    nb = CostEstimator(SimpleLatency()).evaluate(make_plan(TABLES, Topology(nr_dpus=8), "row_uniform"), b, 64).batches
    assert f"* mean over {nb} batch" in text


def test_profile_needed_and_shortfall_errors(workload):
    with pytest.raises(PlanError, match=r"'cache_aware' needs an access profile"):
        make_plan(TABLES, Topology(nr_dpus=8), "cache_aware")
    big = [TableSpec("huge", 3_000_000, 64)]  # 768,000,000 B on 8 DPUs
    from updlrm.partition.profile import AccessProfile

    prof = AccessProfile([np.ones(3_000_000, dtype=np.int64)], 1, "flat", "0")
    for s in ("popularity_balanced", "cache_aware", "tile_uniform"):
        with pytest.raises(PlanDoesNotFitError, match=r"B short") as ei:
            make_plan(big, Topology(nr_dpus=8), s, profile=prof)
        need = 3_000_000 * 256
        have = 8 * (Topology(8).mram_heap_bytes - 8 * MIB)
        assert ei.value.shortfall_bytes == need - have


def test_cache_aware_tuning_picks_estimators_best(workload):
    from updlrm.partition.caching import TUNE_GRID

    plan = make_plan(TABLES, Topology(nr_dpus=32), "cache_aware", profile=workload.profile, tune=True,
                     tune_batch_size=64)
    tried = plan.meta["tuning"]
    assert [(c["hot_threshold"], c["min_cached_share"]) for c in tried] == list(TUNE_GRID)
    best = min((c for c in tried if "latency_us" in c), key=lambda c: c["latency_us"])
    assert (plan.meta["hot_threshold"], plan.meta["min_cached_share"]) == (best["hot_threshold"], best["min_cached_share"])
    validate_plan(plan, TABLES)
    # the tuning batches come from the profile, not from any trace: same profile -> same plan
    again = make_plan(TABLES, Topology(nr_dpus=32), "cache_aware", profile=workload.profile, tune=True,
                      tune_batch_size=64)
    assert [vars(s) for s in again.shards] == [vars(s) for s in plan.shards]


def test_profile_sample_batch_follows_counts(workload):
    prof = workload.profile
    idx, off, B = prof.sample_batch(4096, seed=1)
    assert B == 4096 and len(off) == len(TABLES) * B + 1
    for t, spec in enumerate(TABLES):
        ids = idx[off[t * B]:off[(t + 1) * B]]
        assert ids.min() >= 0 and ids.max() < spec.rows
        assert set(np.unique(ids).tolist()) <= set(np.flatnonzero(prof.counts[t]).tolist())
        p = prof.counts[t] / prof.counts[t].sum()
        hot = int(np.argmax(p))
        assert abs((ids == hot).mean() - p[hot]) < 0.05


def test_tile_uniform_choice_is_estimators_best(workload):
    topo = Topology(nr_dpus=32)
    est = CostEstimator(SimpleLatency())
    plan = make_plan(TABLES, topo, "tile_uniform", profile=workload.profile, latency=SimpleLatency())
    cands = [c for c in plan.meta["candidates"] if c["fits"]]
    assert plan.meta["col_slices"] == min(cands, key=lambda c: c["latency_us"])["col_slices"]
    assert len(cands) >= 3  # 1, 2, 4, ... column slices tried
    a = shard_arrays(plan)
    widths = a["col_hi"] - a["col_lo"]
    assert (widths[a["table"] == 0] == 16 // min(plan.meta["col_slices"], 8)).all()  # dim 16: at most 8 slices of 2


def test_expected_load_matches_mean_of_traces(workload):
    """The analytic estimate for base-only plans equals the routed count on the profiling trace."""
    plan = make_plan(TABLES, Topology(nr_dpus=16), "popularity_balanced", profile=workload.profile)
    e = expected_load(plan, workload.profile, 64)
    total = np.zeros(16)
    nb = 0
    r = Router(plan)
    for idx, off, B in workload.profile_trace.batches(64):
        total += r.route(idx, off, B).lookups_per_dpu
        nb += 1
    assert np.abs(e.lookups - total / nb).max() <= 1.0


def test_user_strategy_in_one_small_file(workload):
    from updlrm.partition import Placement, RowGroup, Shard, Strategy, register_strategy

    @register_strategy
    class EveryTableOnDpuZero(Strategy):
        name = "test_all_on_zero"

        def place(self, tables, topology, budget, profile=None):
            groups = [RowGroup(t, 0, s.rows) for t, s in enumerate(tables)]
            return Placement(groups, [Shard(t, t, 0, 0, 0, s.dim) for t, s in enumerate(tables)])

    rows = compare(TABLES, Topology(nr_dpus=4), workload, 64, ["row_uniform", "test_all_on_zero"], CostEstimator(SimpleLatency()))
    assert rows[1]["imbalance"] == pytest.approx(4.0)


# -- end to end on the emulator ------------------------------------------------------------------

def _pim():
    try:
        from updlrm.pim import PimEmbedding

        return PimEmbedding
    except Exception as exc:  # native module not built
        pytest.skip(f"PIM backend unavailable: {exc}")


@pytest.mark.parametrize("strategy", ALL)
def test_emulator_results_equal_embedding_bag(workload, strategy):
    PimEmbedding = _pim()
    plan = make_plan(TABLES, Topology(nr_dpus=16), strategy, profile=workload.profile)
    rng = np.random.default_rng(5)
    ws = [rng.standard_normal((t.rows, t.dim)).astype(np.float32) for t in TABLES]
    idx, off, B = next(workload.eval_trace.batches(64))
    with PimEmbedding(ws, plan) as pim:
        out = pim.lookup_list(idx, off, B)
        pim_counters = {k: np.asarray(v) for k, v in pim.last_stats.counters.items()}
        counts = pim_counters["lookups"]
    for t in range(len(TABLES)):
        i = torch.from_numpy(idx[off[t * B]:off[(t + 1) * B]])
        o = torch.from_numpy(off[t * B:(t + 1) * B] - off[t * B])
        ref = torch.nn.functional.embedding_bag(i, torch.from_numpy(ws[t]), o, mode="sum").numpy()
        np.testing.assert_allclose(out[t], ref, rtol=1e-5, atol=1e-4)
    routed = Router(plan).route(idx, off, B)
    if strategy == "cache_aware":  # the packer interleaves within a table: same total, close balance
        assert counts.sum() == routed.lookups_per_dpu.sum()
        assert abs(int(counts.max()) - int(routed.lookups_per_dpu.max())) <= 0.1 * routed.lookups_per_dpu.max()
    else:
        assert np.array_equal(counts, routed.lookups_per_dpu)


def test_emulator_replica_choice_never_changes_results():
    """A hot row on many replicas: the packer spreads its lookups over them (per-DPU counts) and
    the pooled sums still equal torch's."""
    PimEmbedding = _pim()
    tables = [TableSpec("hot", 500, 8), TableSpec("other", 2000, 8)]

    def trace(samples, seed):
        r = np.random.default_rng(seed)
        t0 = np.where(r.random(samples * 10) < 0.9, 7, r.integers(0, 500, size=samples * 10))
        t1 = r.integers(0, 2000, size=samples * 10)
        return (np.concatenate([t0, t1]).astype(np.int64), np.arange(2 * samples + 1, dtype=np.int64) * 10, samples)

    prof = profile_trace(trace(256, 1), tables, source="A")
    plan = make_plan(tables, Topology(nr_dpus=16), "cache_aware", profile=prof)
    reps = sorted(s.dpu for s in plan.shards if plan.groups[s.group].kind == "cache"
                  and 7 in plan.groups[s.group].global_rows().tolist())
    assert len(reps) >= 4
    rng = np.random.default_rng(2)
    ws = [rng.standard_normal((t.rows, t.dim)).astype(np.float32) for t in tables]
    idx, off, B = trace(64, 9)
    with PimEmbedding(ws, plan) as pim:
        out = pim.lookup_list(idx, off, B)
        pim_counters = {k: np.asarray(v) for k, v in pim.last_stats.counters.items()}
        counts = pim_counters["lookups"]
    for t in range(2):
        i = torch.from_numpy(idx[off[t * B]:off[(t + 1) * B]])
        o = torch.from_numpy(off[t * B:(t + 1) * B] - off[t * B])
        ref = torch.nn.functional.embedding_bag(i, torch.from_numpy(ws[t]), o, mode="sum").numpy()
        np.testing.assert_allclose(out[t], ref, rtol=1e-5, atol=1e-4)
    # the packer's per-DPU entries are exactly the Router's (same deterministic rule)
    routed = Router(plan).route(idx, off, B)
    assert np.array_equal(counts, routed.lookups_per_dpu), (counts.tolist(), routed.lookups_per_dpu.tolist())
    # ... and so are the estimator's partial sums (bags) and request / result bytes per DPU: which
    # lookup of a bag went to which replica matches too, not only the counts
    est = CostEstimator()
    load = est.dpu_load(plan, est.router(plan).route(idx, off, B), B)
    for key, mine in (("bags", load.bags), ("output_bytes", load.output_bytes), ("request_bytes", load.request_bytes)):
        assert np.array_equal(pim_counters[key], mine), (key, pim_counters[key].tolist(), mine.tolist())
    # row 7's lookups: spread over its replicas so that those DPUs end level (water-filled on top of
    # their base load: busiest and least busy replica DPU within one entry), each serving some
    hot = np.zeros(len(idx), dtype=bool)
    hot[: 64 * 10] = idx[: 64 * 10] == 7
    hot_lookups = int(hot.sum())
    assert routed.dpu.size == idx.size  # one column slice per replica: entries are lookups, in order
    per_dpu = np.bincount(routed.dpu[hot], minlength=16)
    assert per_dpu.sum() == hot_lookups and set(np.flatnonzero(per_dpu).tolist()) <= set(reps)
    assert per_dpu[reps].min() > 0, per_dpu[reps]
    # level within the rounding of whole units (a bag's lookups of row 7, <= 10) to quotas
    assert counts[reps].max() - counts[reps].min() <= 2 * 10, counts[reps]
    assert counts.max() < hot_lookups / 2  # no DPU took a large part of the hot row's lookups


@pytest.mark.parametrize("strategy", ALL)
def test_engine_pim_equals_cpu_for_every_strategy(strategy):
    """The engine runs every strategy's plan unchanged: pooled embeddings and probabilities of the
    pim backend (emulator) equal the cpu backend's (torch EmbeddingBag) within the fp32 bound."""
    _pim()
    import updlrm
    from updlrm.data.synthetic import TableWorkload, synthetic_trace

    cfg = updlrm.configs.get("tiny")
    model = updlrm.DLRM(cfg)
    tables = list(cfg.tables)
    wl = [TableWorkload(rows=t.rows, alpha=1.2, pooling_factor=8) for t in tables]
    full = as_trace(synthetic_trace(wl, 256 + 64, seed=4), "tiny zipf")
    prof = profile_trace(full.slice_samples(0, 256, "A"), tables)
    evalt = full.slice_samples(256, 320, "B")
    plan = make_plan(tables, Topology(nr_dpus=12), strategy, profile=prof)
    from updlrm.batch import Batch

    rng = np.random.default_rng(0)
    batch = Batch(torch.from_numpy(rng.random((64, cfg.n_dense), dtype=np.float32)), torch.from_numpy(evalt.indices),
                  torch.from_numpy(evalt.offsets))
    cpu = updlrm.Engine(model, backend="cpu")
    pim = updlrm.Engine(model, backend="pim", strategy=plan)
    try:
        np.testing.assert_allclose(pim.embed(batch).numpy(), cpu.embed(batch).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pim.predict(batch).numpy(), cpu.predict(batch).numpy(), rtol=1e-4, atol=1e-6)
        assert pim.plan is plan
    finally:
        pim.close()
        cpu.close()
