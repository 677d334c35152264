"""The native table loader (host/python/loader.cpp): MRAM images built window by window from the
weights must equal the numpy reference (layout.shard_images) byte for byte, for row ranges, row
sets (caches), replicas and column slices, fp32 and the integer dtypes (per-table and group-wise
scales); table_stats against numpy; bad image specs raise ValueError naming the shard."""

from __future__ import annotations

import numpy as np
import pytest

from updlrm.partition import TableSpec, Topology, make_plan
from updlrm.partition.profile import profile_trace
from updlrm.pim import native
from updlrm.pim.layout import image_spec, plan_layout, shard_images
from updlrm.pim.quant import Quantization


@pytest.fixture(scope="module")
def mod():
    return native.native_module("emulator")


def _tables():
    # odd dims: column slices of 3 columns (12 B) pad rows to 16 B; 2,000 rows cut across DPUs
    return [TableSpec("a", 2000, 7), TableSpec("b", 300, 7), TableSpec("c", 57, 7)]


def _weights(tables, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((t.rows, t.dim)).astype(np.float32) for t in tables]


def _plan(tables, strategy, nr_dpus=8, dtype="fp32"):
    profile = None
    if strategy == "cache_aware":
        rng = np.random.default_rng(1)
        B, L = 64, 6
        idx = np.concatenate([np.minimum(rng.zipf(1.3, B * L) - 1, t.rows - 1) for t in tables]).astype(np.int64)
        offs = np.arange(0, len(tables) * B * L + 1, L, dtype=np.int64)
        profile = profile_trace((idx, offs, B), tables)
    return make_plan(tables, Topology(nr_dpus=nr_dpus), strategy, profile, dtype=dtype)


def _reference(ws, plan, layout, dtype, quant, length):
    images = shard_images(ws, plan, layout, dtype, quant)
    out = np.zeros((layout.nr_dpus, length), dtype=np.uint8)
    for d, im in enumerate(images):
        out[d, : min(length, im.size)] = im[:length]
    return out


@pytest.mark.parametrize("strategy", ["row_uniform", "column_wise", "cache_aware", "table_wise"])
@pytest.mark.parametrize("dtype,granularity", [("fp32", None), ("int32", "table"), ("int16", "group"), ("int8", "table"),
                                               ("int8", "group")])
def test_images_equal_the_numpy_reference(mod, strategy, dtype, granularity):
    tables = _tables()
    ws = _weights(tables)
    plan = _plan(tables, strategy, dtype=dtype)
    if strategy == "cache_aware":
        assert any(g.rows is not None for g in plan.groups), "the test needs a plan with row sets"
    if strategy == "column_wise":
        assert any(s.col_lo > 0 for s in plan.shards), "the test needs column slices"
    abi = native.abi(mod)
    layout = plan_layout(plan, abi)
    quant = Quantization.build(ws, dtype, 64, granularity, group_cols=2) if granularity else None
    spec = image_spec(plan, layout, dtype, quant.col_scale if quant else None, quant.limit if quant else 0.0, abi)
    ends = layout.shard_mram_offset + layout.shard_nr_rows * layout.shard_row_bytes
    length = int(ends.max())
    ref = _reference(ws, plan, layout, dtype, quant, length)
    got = mod.image_window(ws, spec, layout.nr_dpus, 0, length)
    np.testing.assert_array_equal(got, ref)
    # windows inside one row, cutting rows at one or both edges, spanning rows and shards
    # (row bytes 16 or 32)
    for off in (8, 40, length // 2 // 8 * 8):
        for n in (8, 24, 56, 200):
            part = mod.image_window(ws, spec, layout.nr_dpus, off, n)
            for d in range(layout.nr_dpus):
                want = ref[d, off : off + n]
                if want.size < n:  # past the end of every image: zeros
                    want = np.concatenate([want, np.zeros(n - want.size, np.uint8)])
                np.testing.assert_array_equal(part[d], want, err_msg=f"DPU {d}, window of {n} B at {off}")


def test_int32_images_round_half_to_even_and_clip(mod):
    # one table, one shard: values that land on .5 after scaling, and values beyond the limit
    from updlrm.partition import Plan, RowGroup, Shard

    tables = [TableSpec("t", 1, 8)]
    plan = Plan(tables, Topology(nr_dpus=1), [RowGroup(0, 0, 1)], [Shard(0, 0, 0, 0, 0, 8, mram_offset=0)])
    w = [np.array([[0.5, 1.5, 2.5, -0.5, -1.5, 1e9, -1e9, 3.25]], dtype=np.float32)]
    abi = native.abi(mod)
    layout = plan_layout(plan, abi)
    spec = image_spec(plan, layout, "int32", np.ones(8), 100.0, abi)  # one scale per column
    got = mod.image_window(w, spec, 1, 0, 32)[0].view(np.int32)
    want = np.clip(np.rint(w[0][0].astype(np.float64)), -100, 100).astype(np.int32)
    np.testing.assert_array_equal(got, want)
    assert got.tolist() == [0, 2, 2, 0, -2, 100, -100, 3]


def test_table_stats_match_numpy(mod):
    rng = np.random.default_rng(3)
    ws = [rng.standard_normal((3000, 16)).astype(np.float32) * s for s in (1.0, 1e-3, 40.0)]
    ws.append(np.zeros((0, 16), np.float32))
    bad_nan, bad_inf = ws[0].copy(), ws[1].copy()
    bad_nan[1234, 5] = np.nan
    bad_inf[7, 0] = -np.inf
    ws += [bad_nan, bad_inf]
    max_abs, finite = mod.table_stats(ws)
    for t in range(4):
        assert max_abs[t] == (float(np.max(np.abs(ws[t]))) if ws[t].size else 0.0)
    assert finite.tolist() == [True, True, True, True, False, False]


def test_bad_image_specs_name_the_shard(mod):
    tables = _tables()
    ws = _weights(tables)
    plan = _plan(tables, "cache_aware")
    abi = native.abi(mod)
    layout = plan_layout(plan, abi)
    good = image_spec(plan, layout, "fp32", None, 1.0, abi)

    def window(**changes):
        spec = dict(good)
        for k, v in changes.items():
            spec[k] = v
        return mod.image_window(ws, spec, layout.nr_dpus, 0, 64)

    rows = good["rows"].copy()
    rows[0] = tables[0].rows + 5
    with pytest.raises(ValueError, match="row id"):
        window(rows=rows)
    row_lo = good["row_lo"].copy()
    s = int(np.flatnonzero(good["rows_at"] < 0)[0])
    row_lo[s] = tables[int(good["table"][s])].rows
    with pytest.raises(ValueError, match=f"shard {s}: rows"):
        window(row_lo=row_lo)
    with pytest.raises(ValueError, match="on DPU"):
        window(dpu=np.full_like(good["dpu"], layout.nr_dpus))
    with pytest.raises(ValueError, match="dtype code"):
        window(dtype=99)
    with pytest.raises(ValueError, match="overlap"):
        window(mram_offset=np.zeros_like(good["mram_offset"]))
    with pytest.raises(ValueError, match="float32"):
        mod.image_window([w.astype(np.float64) for w in ws], good, layout.nr_dpus, 0, 64)


@pytest.mark.parametrize("dtype", ["fp32", "int32"])
def test_loaded_tables_answer_like_embedding_bag(dtype):
    """End to end through the driver: one DPU holds a 10 MB table (two push windows of at most
    8 MiB), others hold small tables or nothing (left out of the pushes); every row of every
    table is then looked up and compared with torch EmbeddingBag."""
    import torch

    from updlrm.pim import PimEmbedding

    tables = [TableSpec("big", 160_000, 16), TableSpec("small", 1000, 16), TableSpec("odd", 10, 5)]
    ws = _weights(tables, seed=5)
    plan = make_plan(tables, Topology(nr_dpus=6), "table_wise")
    assert len({s.dpu for s in plan.shards}) < 6, "the test needs DPUs without shards"
    with PimEmbedding(ws, plan, dtype=dtype) as pim:
        assert max(pim.load_stats["mram_bytes_per_dpu"]) > 8 << 20
        B = 4000  # bag b of table t: rows b, b + B, b + 2B, ... below the table's rows
        idx, offs = [], [0]
        for t in tables:
            for b in range(B):
                rows = np.arange(b, t.rows, B)[:40]
                idx.append(rows)
                offs.append(offs[-1] + rows.size)
        idx = np.concatenate(idx).astype(np.int64)
        offs = np.asarray(offs, dtype=np.int64)
        got = pim.lookup_list(idx, offs, B)
        for t, w in enumerate(ws):
            a, e = offs[t * B], offs[(t + 1) * B]
            want = torch.nn.functional.embedding_bag(
                torch.from_numpy(idx[a:e]), torch.from_numpy(w), torch.from_numpy(offs[t * B : (t + 1) * B] - a),
                mode="sum").numpy()
            n = np.diff(offs[t * B : (t + 1) * B + 1])[:, None]
            tol = pim.fixed_point_bound(1.0)[t] * n + 1e-5 * (1 + np.abs(want))
            assert np.all(np.abs(got[t] - want) <= tol), f"table {t}"
