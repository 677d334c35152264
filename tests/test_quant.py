"""Quantization of embedding tables (updlrm.pim.quant) and dtype-aware plans, without DPUs.

Checks the element limit against int32 arithmetic, the stored integers against NumPy's rounding,
the per-element error against its bound, group-wise and calibrated scales, and that plans size
rows, MRAM budgets and saved files by dtype.
"""

from __future__ import annotations

import numpy as np
import pytest

from updlrm.partition import (PlanDoesNotFitError, PlanError, TableSpec, Topology, load_plan, make_plan,
                              per_dpu_table_bytes, row_bytes, save_plan)
from updlrm.pim.quant import Quantization, column_groups, element_limit, hot_rows


@pytest.mark.parametrize(
    "dtype,m,limit",
    [("int8", 1, 127), ("int8", 16_909_320, 127), ("int8", 16_909_321, 126), ("int16", 65_538, 32_767),
     ("int16", 65_539, 32_766), ("int32", 4096, (2**31 - 1) // 4096)],
)
def test_element_limit_keeps_a_full_bag_inside_int32(dtype, m, limit):
    assert element_limit(dtype, m) == limit
    assert m * limit <= 2**31 - 1  # the bag of m elements at +-limit fits
    assert limit == np.iinfo(dtype).max or m * (limit + 1) > 2**31 - 1  # and limit is the largest that does


def test_element_limit_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dtype must be one of int32, int16, int8"):
        element_limit("fp32", 8)
    with pytest.raises(ValueError, match="max_bag_lookups must be >= 1"):
        element_limit("int8", 0)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32"])
@pytest.mark.parametrize("granularity", ["table", "group"])
def test_quantized_elements_are_rounded_clipped_and_within_their_error(dtype, granularity):
    rng = np.random.default_rng(3)
    ws = [rng.standard_normal((300, 10)).astype(np.float32) * np.linspace(0.01, 2, 10, dtype=np.float32),
          rng.uniform(-0.1, 0.1, (40, 6)).astype(np.float32)]
    qz = Quantization.build(ws, dtype, max_bag_lookups=64, granularity=granularity, group_cols=3)
    assert qz.col_scale.shape == (16,)
    for t, w in enumerate(ws):
        q = qz.quantize(t, w)
        assert q.dtype == np.dtype(dtype) and q.shape == w.shape
        s = qz.table_scales(t)
        expect = np.clip(np.rint(w.astype(np.float64) * s), -qz.limit, qz.limit)
        np.testing.assert_array_equal(q, expect)
        assert np.abs(q).max() <= qz.limit
        assert np.abs(q).max() == qz.limit  # uncalibrated: the largest element uses the full range
        err = np.abs(qz.dequantize(t, q) - w.astype(np.float64)).max(axis=0)
        o = int(qz.col_offsets[t])
        assert np.all(err <= qz.col_error[o : o + w.shape[1]] * (1 + 1e-12))
    if granularity == "group":
        # groups of 3 columns: columns 0-2 share a scale, 3-5 another; a column group of small
        # weights gets a larger scale (finer steps) than the table-wide one
        s0 = qz.table_scales(0)
        assert s0[0] == s0[2] and s0[3] == s0[5] and s0[0] != s0[3]
        table = Quantization.build(ws, dtype, 64, "table")
        assert np.all(qz.col_error[:10] <= table.col_error[:10] * (1 + 1e-12))
        assert qz.col_error[0] < table.col_error[0] / 2


def test_pooled_bound_is_n_times_the_column_error_plus_fp32_rounding():
    rng = np.random.default_rng(4)
    ws = [rng.standard_normal((50, 4)).astype(np.float32), rng.standard_normal((20, 8)).astype(np.float32)]
    qz = Quantization.build(ws, "int8", 128, "group", group_cols=2)
    lens = np.array([[0, 1, 7], [3, 3, 128]])
    b = qz.pooled_error_bound(lens)
    assert b.shape == (2, 3)
    per = [(qz.col_error[:4] + 2.0**-24 * qz.col_absmax[:4]).max(), (qz.col_error[4:] + 2.0**-24 * qz.col_absmax[4:]).max()]
    np.testing.assert_allclose(b, lens * np.array(per)[:, None])
    np.testing.assert_allclose(qz.pooled_error_bound(5), 5 * np.array(per))
    with pytest.raises(ValueError, match="2 rows"):
        qz.pooled_error_bound(np.ones((3, 2)))


def test_calibration_lets_hot_rows_set_the_scale_and_bounds_the_clipped_cold_rows():
    rng = np.random.default_rng(5)
    w = rng.uniform(-0.5, 0.5, (1000, 8)).astype(np.float32)
    w[999] = 8.0  # one cold outlier row
    counts = np.zeros(1000, dtype=np.int64)
    counts[:100] = 1000  # 100 hot rows take almost every access
    counts[100:] = 1
    plain = Quantization.build([w], "int8", 64)
    cal = Quantization.build([w], "int8", 64, calibrate_on=[counts], coverage=0.99)
    assert cal.calibrated and not plain.calibrated
    hot = np.abs(w[:100]).max()
    assert cal.col_scale.max() == pytest.approx(127 / hot)
    q = cal.quantize(0, w)
    deq = cal.dequantize(0, q)
    # hot rows: 16x finer steps than the outlier-driven scale allows
    assert np.abs(deq[:100] - w[:100]).max() <= 0.5 / cal.col_scale.min() * (1 + 1e-12)
    assert np.abs(deq[:100] - w[:100]).max() < np.abs(plain.dequantize(0, plain.quantize(0, w))[:100] - w[:100]).max() / 4
    # the clipped outlier is still within the documented per-element error
    assert np.all(np.abs(deq - w).max(axis=0) <= cal.col_error * (1 + 1e-12))
    assert np.all(q[999] == 127)


def test_hot_rows_cover_the_requested_share():
    c = np.array([1, 50, 0, 30, 19])
    assert hot_rows(c, 0.5).tolist() == [1]
    assert hot_rows(c, 0.8).tolist() == [1, 3]
    assert sorted(hot_rows(c, 1.0).tolist()) == [0, 1, 3, 4]
    assert hot_rows(np.zeros(4), 0.9).size == 0


def test_column_groups():
    assert column_groups(5, "table", 2).tolist() == [0] * 5
    assert column_groups(5, "group", 2).tolist() == [0, 0, 1, 1, 2]
    with pytest.raises(ValueError, match="granularity"):
        column_groups(5, "row", 2)


# ---- plans by dtype --------------------------------------------------------------------------


def test_row_bytes_follow_the_dtype():
    assert [row_bytes(16, d) for d in ("fp32", "int32", "int16", "int8")] == [64, 64, 32, 16]
    assert row_bytes(3, "int8") == 8 and row_bytes(9, "int8") == 16 and row_bytes(5, "int16") == 16
    with pytest.raises(ValueError, match="dtype must be one of"):
        row_bytes(4, "int4")


def test_int8_plan_uses_a_quarter_of_the_mram_and_round_trips(tmp_path):
    tables = [TableSpec("a", 10_000, 16), TableSpec("b", 3_000, 16)]
    topo = Topology(nr_dpus=4)
    p32 = make_plan(tables, topo, "row_uniform")
    p8 = make_plan(tables, topo, "row_uniform", dtype="int8")
    assert p32.dtype == "fp32" and p8.dtype == "int8"
    assert per_dpu_table_bytes(p8).sum() * 4 == per_dpu_table_bytes(p32).sum() == 13_000 * 64
    save_plan(p8, tmp_path / "p.json")
    back = load_plan(tmp_path / "p.json")
    assert back.dtype == "int8" and [s.mram_offset for s in back.shards] == [s.mram_offset for s in p8.shards]
    with pytest.raises(PlanError, match="dtype must be one of"):
        make_plan(tables, topo, dtype="int4")


def test_a_model_too_big_for_fp32_fits_in_int8_and_the_error_says_so():
    # 64 MiB DPUs, 4 MiB + 4 MiB buffers: 56 MiB - 128 KiB for tables per DPU
    tables = [TableSpec("big", 2_000_000, 64)]  # 512 MB in fp32, 128 MB in int8
    topo = Topology(nr_dpus=4)
    with pytest.raises(PlanDoesNotFitError, match=r"in fp32 need .* a smaller dtype \(int16 or int8\)"):
        make_plan(tables, topo, "row_uniform")
    plan = make_plan(tables, topo, "row_uniform", dtype="int8")
    assert per_dpu_table_bytes(plan).max() <= topo.mram_heap_bytes - plan.request_bytes - plan.output_bytes


# ---- timing model and lab by dtype ------------------------------------------------------------


def test_timing_model_prices_int8_elements_and_estimates_their_dma_bytes():
    from updlrm import timing_model as tm

    model = tm.TimingModel.default()
    assert {"instr_per_element_int16", "instr_per_element_int8"} <= set(model.constants)
    k8 = tm.synthetic_kernel_counters(2, 16, "int8", lookups_per_tasklet=10, elements_per_lookup=16)
    k32 = tm.synthetic_kernel_counters(2, 16, "int32", lookups_per_tasklet=10, elements_per_lookup=16)
    c8, c32 = model.kernel_cycles(k8)["instructions"], model.kernel_cycles(k32)["instructions"]
    per = 16 * 10 * 16  # elements per DPU
    assert np.allclose(c8 - c32, per * (model.constants["instr_per_element_int8"] - model.constants["instr_per_element_int32"]))
    # SDK builds (no DMA counters): rows of 16 int8 elements are 16 B per lookup, 64 B in int32
    base = {"nr_tasklets": 4, "lookups": [8], "bags": [2], "elements": [8 * 16], "request_bytes": [64],
            "output_bytes": [128], "pushed_bytes": [64], "pulled_bytes": [128]}
    est8 = tm._normalise_native({**base, "dtype": "int8"})
    est32 = tm._normalise_native({**base, "dtype": "int32"})
    assert np.sum(est8["dma_read_bytes"]) == 8 * 16 + 64 and np.sum(est32["dma_read_bytes"]) == 8 * 64 + 64


def test_the_lab_plans_in_the_dtype_and_reports_mram_use():
    from updlrm.partition.lab import compare, format_reports, zipf_workload

    tables = [TableSpec(f"t{i}", 20_000, 16) for i in range(3)]
    wl = zipf_workload(tables, batch_size=256, profile_batches=1, eval_batches=1)
    rows = {d: compare(tables, Topology(nr_dpus=8), wl, 256, ["row_uniform"], dtype=d)[0] for d in ("fp32", "int8")}
    assert rows["int8"]["dtype"] == "int8"
    buffers = 8 * 2**20  # request + output, 4 MiB each
    assert (rows["fp32"]["mram_bytes_max"] - buffers) == 4 * (rows["int8"]["mram_bytes_max"] - buffers)
    assert rows["int8"]["mram_use_max"] == rows["int8"]["mram_bytes_max"] / 2**26
    text = format_reports([rows["int8"]])
    assert "MRAM max %" in text and "tables stored as int8" in text


def test_rowwise_int8_follows_its_definition_and_requantizes_within_the_bound():
    from updlrm.pim.quant import dequantize_rowwise, rowwise_int8

    rng = np.random.default_rng(6)
    w = rng.standard_normal((200, 12)).astype(np.float32)
    w[5] = 0.25  # a constant row
    q, scale, bias = rowwise_int8(w)
    assert q.dtype == np.uint8 and q.min() == 0 and q.max() == 255
    np.testing.assert_array_equal(bias, w.min(axis=1))
    np.testing.assert_allclose(scale[np.arange(200) != 5], ((w.max(axis=1) - w.min(axis=1)) / 255)[np.arange(200) != 5])
    deq = dequantize_rowwise(q, scale, bias)
    assert np.all(np.abs(deq - w) <= 0.5 * scale[:, None] * (1 + 1e-5))
    assert np.all(deq[5] == 0.25)
    qz = Quantization.build([deq], "int8", 32, "group", group_cols=4)
    back = qz.dequantize(0, qz.quantize(0, deq))
    assert np.all(np.abs(back - deq).max(axis=0) <= qz.col_error * (1 + 1e-12))
