"""Tests of the partitioner foundation: plan validation, capacity errors, save/load, and the
baseline strategies (table_wise, row_uniform, column_wise) on assorted shapes and DPU counts.

Coverage is checked against an independent NumPy reference: every (table, row, column) counted
from the plan's groups and shards must be placed exactly once per replica.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from updlrm.partition import (
    MIB,
    Plan,
    PlanDoesNotFitError,
    PlanError,
    RowGroup,
    Shard,
    TableSpec,
    Topology,
    load_plan,
    make_plan,
    rows_path,
    save_plan,
    shard_arrays,
    validate_plan,
)

KAGGLE_ROWS = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
               5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def kaggle(scale=1.0, dim=16):
    return [TableSpec(f"C{i + 1}", max(1, int(r * scale)), dim) for i, r in enumerate(KAGGLE_ROWS)]


def coverage_reference(plan: Plan) -> None:
    """Independent check: per table, each (row, col) appears in exactly one base-group shard set."""
    for t, spec in enumerate(plan.tables):
        if spec.rows * spec.dim > 5_000_000:
            continue
        cnt = np.zeros((spec.rows, spec.dim), dtype=np.int32)
        for s in plan.shards:
            g = plan.groups[s.group]
            if s.table != t or g.kind != "base" or s.replica != 0:
                continue
            cnt[g.global_rows(), s.col_lo:s.col_hi] += 1
        assert (cnt == 1).all(), f"table {t}: coverage counts {np.unique(cnt)}"


def mram_reference(plan: Plan) -> None:
    """Offsets 8-aligned, shards within budget, no overlap: recomputed with plain Python."""
    topo = plan.topology
    limit = topo.mram_heap_bytes - plan.request_bytes - plan.output_bytes
    by_dpu = {}
    for s in plan.shards:
        g = plan.groups[s.group]
        rb = -(-(s.col_hi - s.col_lo) * 4 // 8) * 8
        by_dpu.setdefault(s.dpu, []).append((s.mram_offset, s.mram_offset + g.nr_rows * rb))
    for d, spans in by_dpu.items():
        assert 0 <= d < topo.nr_dpus
        spans.sort()
        for (a0, a1), (b0, _) in zip(spans, spans[1:]):
            assert a1 <= b0
        assert all(o % 8 == 0 for o, _ in spans)
        assert spans[-1][1] <= limit


SHAPES = {
    "one_table": [TableSpec("t", 1000, 16)],
    "kaggle_scaled": kaggle(1e-3),
    "few_rows": [TableSpec("a", 3, 8), TableSpec("b", 1, 4), TableSpec("c", 50, 2)],
    "odd_dims": [TableSpec("d1", 777, 1), TableSpec("d3", 501, 3), TableSpec("d600", 300, 600)],
}


@pytest.mark.parametrize("strategy", ["table_wise", "row_uniform", "column_wise"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("nr_dpus", [1, 7, 64, 2560])
def test_baselines_cover_and_fit(strategy, shape, nr_dpus):
    tables = SHAPES[shape]
    plan = make_plan(tables, Topology(nr_dpus=nr_dpus), strategy)
    assert plan.strategy == strategy
    coverage_reference(plan)
    mram_reference(plan)
    validate_plan(plan, tables)


def test_row_uniform_equal_ranges_and_spread():
    tables = [TableSpec("big", 10_000, 8), TableSpec("small", 5, 8), TableSpec("small2", 5, 8)]
    plan = make_plan(tables, Topology(nr_dpus=64), "row_uniform")
    a = shard_arrays(plan)
    big = a["table"] == 0
    assert big.sum() == 64 and set(a["dpu"][big].tolist()) == set(range(64))
    assert a["nr_rows"][big].max() - a["nr_rows"][big].min() <= 1
    # the 10 one-row ranges of the small tables land on 10 different DPUs
    small = a["table"] > 0
    assert (a["nr_rows"][small] == 1).all() and len(set(a["dpu"][small].tolist())) == 10


def test_column_wise_slices_even_widths():
    tables = [TableSpec("t", 100, 64), TableSpec("u", 100, 3)]
    plan = make_plan(tables, Topology(nr_dpus=16), "column_wise")
    a = shard_arrays(plan)
    widths = a["col_hi"] - a["col_lo"]
    assert len(a["dpu"]) == 16 and len(set(a["dpu"].tolist())) == 16  # one slice per DPU
    assert (widths[a["table"] == 0] % 2 == 0).all()
    plan = make_plan(tables, Topology(nr_dpus=40), "column_wise")  # room to split both fully
    a = shard_arrays(plan)
    widths = a["col_hi"] - a["col_lo"]
    assert (widths[a["table"] == 0] == 2).all()
    assert sorted(widths[a["table"] == 1].tolist()) == [1, 2]


def test_table_wise_least_filled_first():
    tables = [TableSpec(f"t{i}", r, 16) for i, r in enumerate([1000, 900, 800, 100, 50])]
    plan = make_plan(tables, Topology(nr_dpus=2), "table_wise")
    a = shard_arrays(plan)
    d = dict(zip(a["table"].tolist(), a["dpu"].tolist()))
    # LPT: 1000 -> A, 900 -> B, 800 -> B (1700 vs 1000? no: least filled is A) ...
    assert d[0] != d[1] and d[2] == d[1] or d[2] == d[0]
    loads = np.bincount(a["dpu"], weights=a["nbytes"], minlength=2)
    ref = [0, 0]
    for r in sorted([1000, 900, 800, 100, 50], reverse=True):
        ref[int(np.argmin(ref))] += r * 64
    assert sorted(loads.tolist()) == sorted(ref)


def test_table_wise_oversized_table_named_or_split():
    topo = Topology(nr_dpus=8, mram_bytes=16 * MIB)
    tables = [TableSpec("huge", 200_000, 16), TableSpec("ok", 10, 16)]  # 12.8 MB > 16 MiB - 8 MiB - static
    with pytest.raises(PlanDoesNotFitError, match=r"table 0 'huge' .*12,800,000 B.* short") as ei:
        make_plan(tables, topo, "table_wise")
    assert ei.value.shortfall_bytes > 0 and ei.value.table == 0
    plan = make_plan(tables, topo, "table_wise", split_oversized=True)
    coverage_reference(plan)
    assert sum(1 for g in plan.groups if g.table == 0) >= 2


def test_model_too_large_names_total_shortfall():
    tables = kaggle(1.0)
    need = sum(t.rows for t in tables) * 64
    have = 16 * (Topology(16).mram_heap_bytes - 8 * MIB)
    with pytest.raises(PlanDoesNotFitError) as ei:
        make_plan(tables, Topology(nr_dpus=16), "row_uniform")
    assert ei.value.shortfall_bytes == need - have
    assert f"{need - have:,} B short" in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_dpu_overflow_message_names_dpu_and_parts():
    tables = [TableSpec("t", 1000, 16)]
    plan = make_plan(tables, Topology(nr_dpus=4), "row_uniform", request_bytes=1 * MIB, output_bytes=2 * MIB)
    big = plan.replace(request_bytes=40 * MIB, output_bytes=30 * MIB)
    with pytest.raises(PlanDoesNotFitError) as ei:
        validate_plan(big)
    msg = str(ei.value)
    heap = Topology(4).mram_heap_bytes
    assert f"has {heap:,} B" in msg and "request 41,943,040 + output 31,457,280" in msg
    assert ei.value.dpu in range(4)
    assert ei.value.shortfall_bytes == 250 * 64 + 70 * MIB - heap


def _small_plan():
    return make_plan([TableSpec("a", 100, 8), TableSpec("b", 40, 4)], Topology(nr_dpus=4), "row_uniform")


def test_validation_catches_each_rule():
    plan = _small_plan()
    validate_plan(plan)

    p = _small_plan(); p.groups[0].row_hi -= 1
    with pytest.raises(PlanError, match=r"table 0 'a': rows \[24, 25\) are in no base group"):
        validate_plan(p)
    p = _small_plan(); p.groups[1].row_lo -= 2
    with pytest.raises(PlanError, match=r"row 23 is in two base groups"):
        validate_plan(p)
    p = _small_plan(); p.shards[0].dpu = 4
    with pytest.raises(PlanError, match=r"DPU 4, but the topology has DPUs 0..3"):
        validate_plan(p)
    p = _small_plan(); p.shards[0].mram_offset = 4
    with pytest.raises(PlanError, match=r"MRAM offset 4"):
        validate_plan(p)
    p = _small_plan(); p.shards[0].col_hi = 4
    with pytest.raises(PlanError, match=r"column slices \[0, 4\) do not cover \[0, 8\)"):
        validate_plan(p)
    p = _small_plan(); p.shards.append(Shard(table=0, group=0, replica=0, dpu=1, col_lo=4, col_hi=8, mram_offset=8000))
    with pytest.raises(PlanError, match=r"group 0 .* replica 0: column slices"):
        validate_plan(p)
    p = _small_plan(); p.shards[1].dpu = p.shards[0].dpu; p.shards[1].mram_offset = p.shards[0].mram_offset + 8
    with pytest.raises(PlanError, match=r"overlaps"):
        validate_plan(p)
    p = _small_plan(); p.shards.append(Shard(table=0, group=0, replica=2, dpu=1, col_lo=0, col_hi=8, mram_offset=4096))
    with pytest.raises(PlanError, match=r"replicas \[0, 2\]"):
        validate_plan(p)
    with pytest.raises(PlanError, match=r"plan was made for table 1 'b' with 40 x 4 but the model has 'b' with 41 x 4"):
        validate_plan(plan, [TableSpec("a", 100, 8), TableSpec("b", 41, 4)])
    with pytest.raises(PlanError, match=r"made for 2 tables but the model has 1"):
        validate_plan(plan, [TableSpec("a", 100, 8)])


def test_row_sets_and_cache_groups_validate():
    tables = [TableSpec("a", 10, 4)]
    groups = [RowGroup(0, rows=np.array([0, 2, 4, 6, 8])), RowGroup(0, rows=np.array([1, 3, 5, 7, 9])),
              RowGroup(0, rows=np.array([2, 3]), kind="cache")]
    shards = [Shard(0, 0, 0, 0, 0, 4), Shard(0, 1, 0, 1, 0, 4), Shard(0, 2, 0, 0, 0, 4), Shard(0, 2, 1, 1, 0, 2),
              Shard(0, 2, 1, 1, 2, 4)]
    plan = Plan(tables, Topology(2), groups, shards)
    from updlrm.partition import assign_offsets
    assign_offsets(plan)
    validate_plan(plan)
    groups[1].rows = np.array([1, 3, 5, 7])
    with pytest.raises(PlanError, match=r"row 9 is in no base group"):
        validate_plan(plan)
    groups[1].rows = np.array([1, 3, 5, 7, 9])
    groups.append(RowGroup(0, rows=np.array([3, 4]), kind="cache"))
    shards.append(Shard(0, 3, 0, 0, 0, 4, mram_offset=4096))
    with pytest.raises(PlanError, match=r"row 3 is in 2 cache groups"):
        validate_plan(plan)


def test_shard_limit_per_dpu():
    tables = [TableSpec(f"t{i}", 1, 2) for i in range(4097)]
    with pytest.raises(PlanError, match=r"DPU 0 holds 4,097 shards but the kernel takes at most 4,096"):
        make_plan(tables, Topology(nr_dpus=1), "table_wise")


@pytest.mark.parametrize("strategy", ["row_uniform", "column_wise", "table_wise"])
def test_save_load_round_trip(tmp_path, strategy):
    tables = SHAPES["odd_dims"]
    plan = make_plan(tables, Topology(nr_dpus=5, working_dpus_per_rank=(3, 2), dpus_per_rank=4), strategy,
                     request_bytes=1 * MIB)
    f = tmp_path / "p.json"
    save_plan(plan, f)
    back = load_plan(f)
    assert back.tables == plan.tables and back.topology == plan.topology
    assert back.strategy == plan.strategy and back.request_bytes == 1 * MIB
    assert [vars(s) for s in back.shards] == [vars(s) for s in plan.shards]
    assert [(g.table, g.row_lo, g.row_hi, g.kind) for g in back.groups] == [(g.table, g.row_lo, g.row_hi, g.kind) for g in plan.groups]


def test_save_load_row_sets(tmp_path):
    tables = [TableSpec("a", 10, 4)]
    groups = [RowGroup(0, rows=np.array([0, 2, 4, 6, 8])), RowGroup(0, rows=np.array([1, 3, 5, 7, 9])),
              RowGroup(0, rows=np.array([2, 3]), kind="cache")]
    shards = [Shard(0, 0, 0, 0, 0, 4), Shard(0, 1, 0, 1, 0, 4), Shard(0, 2, 0, 0, 0, 4), Shard(0, 2, 1, 1, 0, 4)]
    plan = Plan(tables, Topology(2), groups, shards, meta={"x": np.int64(3)})
    from updlrm.partition import assign_offsets
    assign_offsets(plan)
    f = tmp_path / "plan.json"
    save_plan(plan, f)
    assert rows_path(f).exists()
    back = load_plan(f)
    for g, h in zip(plan.groups, back.groups):
        assert np.array_equal(g.rows, h.rows) and h.rows.dtype == np.int64 and g.kind == h.kind
    assert back.meta == {"x": 3}
    rows_path(f).unlink()
    with pytest.raises(PlanError, match=r"row sets in .*plan.rows.npz"):
        load_plan(f)


def test_load_rejects_other_versions(tmp_path):
    f = tmp_path / "p.json"
    save_plan(_small_plan(), f)
    f.write_text(f.read_text().replace('"version":1', '"version":99'))
    with pytest.raises(PlanError, match=r"format version 99"):
        load_plan(f)


def test_bad_arguments():
    with pytest.raises(PlanError, match=r"unknown strategy 'nope'"):
        make_plan(SHAPES["one_table"], Topology(4), "nope")
    with pytest.raises(PlanError, match=r"has no option 'foo'"):
        make_plan(SHAPES["one_table"], Topology(4), "row_uniform", foo=1)
    with pytest.raises(PlanError, match=r"request_bytes must be a non-negative multiple of 8"):
        make_plan(SHAPES["one_table"], Topology(4), request_bytes=5)
    with pytest.raises(PlanError, match=r"table 0 't' has shape 0 x 16"):
        make_plan([TableSpec("t", 0, 16)], Topology(4))


def test_kaggle_2048_dpus_builds_fast():
    tables = kaggle(1.0)
    t0 = time.perf_counter()
    plan = make_plan(tables, Topology(nr_dpus=2048), "row_uniform")
    assert time.perf_counter() - t0 < 10  # generous: "seconds", measured ~0.3 s
    a = shard_arrays(plan)
    per_table_rows = np.bincount(a["table"], weights=a["nr_rows"])
    assert per_table_rows.tolist() == [float(t.rows) for t in tables]
