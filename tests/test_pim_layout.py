"""The PIM backend's plan flattening and row mapping, against plain NumPy references."""

from __future__ import annotations

import numpy as np
import pytest

from updlrm.partition import Plan, RowGroup, Shard, TableSpec, Topology
from updlrm.pim import native
from updlrm.pim.layout import fixed_point_scales, plan_layout, quantize


def _range_plan(bounds_per_table, rows_per_table, cache_rows=None):
    tables = [TableSpec(f"t{t}", r, 4) for t, r in enumerate(rows_per_table)]
    groups, shards = [], []
    for t, bounds in enumerate(bounds_per_table):
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            shards.append(Shard(table=t, group=len(groups), replica=0, dpu=len(groups) % 3, col_lo=0, col_hi=4, mram_offset=0))
            groups.append(RowGroup(table=t, row_lo=int(lo), row_hi=int(hi)))
    for t, rows in (cache_rows or {}).items():
        shards.append(Shard(table=t, group=len(groups), replica=0, dpu=0, col_lo=0, col_hi=4, mram_offset=0))
        groups.append(RowGroup(table=t, rows=np.asarray(rows, dtype=np.int64), kind="cache"))
    return Plan(tables=tables, topology=Topology(nr_dpus=3), groups=groups, shards=shards)


def _reference(plan, idx, offs, B):
    """Naive: for each lookup, scan the groups (cache first)."""
    T = len(plan.tables)
    grp = np.empty(idx.size, dtype=np.int64)
    loc = np.empty(idx.size, dtype=np.int64)
    for t in range(T):
        a, e = offs[t * B], offs[(t + 1) * B]
        for i in range(a, e):
            r = idx[i]
            hit = None
            for gi, g in enumerate(plan.groups):
                if g.table == t and g.kind == "cache" and r in set(g.global_rows().tolist()):
                    hit = (gi, int(np.flatnonzero(g.global_rows() == r)[0]))
            if hit is None:
                for gi, g in enumerate(plan.groups):
                    if g.table == t and g.kind == "base" and g.row_lo <= r < g.row_hi:
                        hit = (gi, r - g.row_lo)
            grp[i], loc[i] = hit
    return grp, loc


def _native_rows(plan, idx, offs, B):
    """(group, local row) of every lookup as the native PlanIndex maps them, and its description."""
    mod = native.native_module("emulator")
    hp = mod.HostPacker(plan_layout(plan).native_spec("fp32", np.zeros(0)), plan.topology.nr_dpus)
    assert hp.pack(idx, offs, B).error is None
    grp, loc = hp.map_rows(idx, offs, B)
    return grp, loc, hp.describe()


@pytest.mark.parametrize("case", ["uneven", "one_row_ranges", "single", "big_table", "huge_table"])
def test_plan_index_matches_a_naive_scan(case):
    rng = np.random.default_rng(0)
    if case == "uneven":
        bounds, rows = [[0, 7, 8, 30, 100], [0, 50, 51]], [100, 51]
    elif case == "one_row_ranges":
        bounds, rows = [[0, 1, 2, 3, 10], [0, 3, 6, 9, 12]], [10, 12]
    elif case == "single":
        bounds, rows = [[0, 40], [0, 5]], [40, 5]
    elif case == "big_table":  # above the dense-map size: bucketed ranges, one as small as 3 rows
        bounds, rows = [[0, 100_000, 100_003, 300_000], [0, 2, 9]], [300_000, 9]
    else:  # 3M rows with a 1-row range: too many buckets, searchsorted path
        bounds, rows = [[0, 1, 1_500_000, 3_000_000], [0, 9]], [3_000_000, 9]
    plan = _range_plan(bounds, rows, cache_rows={0: [0, rows[0] - 1, rows[0] // 2]})
    B = 6
    lens = rng.integers(0, 8, size=2 * B)
    offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    idx = np.concatenate([rng.integers(0, rows[k // B], size=lens[k]) for k in range(2 * B)]).astype(np.int64)
    idx[0] = 0  # a cached row
    grp, loc, desc = _native_rows(plan, idx, offs, B)
    ref_g, ref_l = _reference(plan, idx, offs, B)
    np.testing.assert_array_equal(grp, ref_g)
    np.testing.assert_array_equal(loc, ref_l)
    # ranges are mapped by their bounds (never a per-row map), cached rows by the hot-row table
    assert "dense" not in desc and "3 hot rows" in desc
    if case == "single":
        assert desc.startswith("2 single-group tables")


def test_plan_index_row_set_base_groups_use_a_dense_map():
    tables = [TableSpec("a", 20, 4)]
    evens, odds = np.arange(0, 20, 2), np.arange(1, 20, 2)
    groups = [RowGroup(table=0, rows=evens), RowGroup(table=0, rows=odds),
              RowGroup(table=0, rows=np.array([3, 4]), kind="cache")]
    shards = [Shard(table=0, group=g, replica=0, dpu=g, col_lo=0, col_hi=4, mram_offset=0) for g in range(3)]
    plan = Plan(tables=tables, topology=Topology(nr_dpus=3), groups=groups, shards=shards)
    idx = np.array([0, 3, 4, 5, 19, 18], dtype=np.int64)
    offs = np.array([0, 2, 6], dtype=np.int64)
    grp, loc, desc = _native_rows(plan, idx, offs, 2)
    assert grp.tolist() == [0, 2, 2, 1, 1, 0] and loc.tolist() == [0, 0, 1, 2, 9, 9]
    assert "dense per-row maps" in desc and "tables 0" in desc


def test_plan_layout_replicas_and_offsets():
    plan = _range_plan([[0, 5, 10]], [10])
    # a second replica of group 1, cut in two column slices on DPUs 2 and 0
    plan.shards.append(Shard(table=0, group=1, replica=1, dpu=2, col_lo=2, col_hi=4, mram_offset=64))
    plan.shards.append(Shard(table=0, group=1, replica=1, dpu=0, col_lo=0, col_hi=2, mram_offset=64))
    lay = plan_layout(plan)
    np.testing.assert_array_equal(lay.group_rep_ptr, [0, 1, 3])
    # replica 2 (group 1, replica 1) lists its slices by col_lo: shard 3 (col 0) then shard 2 (col 2)
    np.testing.assert_array_equal(lay.rep_shards[lay.rep_shard_ptr[2] : lay.rep_shard_ptr[3]], [3, 2])
    np.testing.assert_array_equal(lay.nr_shards_on_dpu, [2, 1, 1])
    np.testing.assert_array_equal(lay.shard_local, [0, 0, 0, 1])
    assert lay.request_offset == 64 + 5 * 8  # end of the fullest DPU's shards
    assert lay.output_offset == lay.request_offset + plan.request_bytes


def test_fixed_point_scale_and_quantize_limits():
    w = [np.array([[0.5, -2.0]], dtype=np.float32), np.zeros((2, 2), dtype=np.float32)]
    s = fixed_point_scales(w, 16)
    limit = (2**31 - 1) // 16
    assert s[0] == pytest.approx(limit / 2.0)
    assert s[1] == limit
    q = quantize(w[0], s[0], limit)
    assert q.dtype == np.int32 and q[0, 1] == -limit and int(q[0, 0]) == round(limit / 4)
