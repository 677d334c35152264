"""int8 / int16 tables on the (emulated) DPUs against torch.nn.EmbeddingBag(mode="sum").

* bit-exact in the integer domain: the pooled result equals float32(EmbeddingBag over the stored
  integers / s_c), for both dtypes and both scale granularities, and for every row width the DMA
  rules allow (8..2,048 bytes in steps of 8: the emulator faults on any bad DMA);
* within the documented bound of the exact fp32 sums for every strategy on 1, 3 and 64 DPUs;
* a bag of max_bag_lookups copies of the largest-magnitude rows does not overflow int32;
* a kernel built against another ABI version is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from updlrm.errors import DpuFaultError, InvalidBatchError
from updlrm.partition import PlanError, TableSpec, Topology, make_plan, strategy_names
from updlrm.partition.profile import AccessProfile
from updlrm.pim import PimEmbedding, PIMEmbeddingBag

REPO = Path(__file__).resolve().parents[1]


def _batch(rng, rows, B, max_len=8, zipf=False):
    lens = rng.integers(0, max_len + 1, size=len(rows) * B)
    parts = []
    for k, n in enumerate(lens):
        r = rows[k // B]
        parts.append((rng.zipf(1.2, size=n) - 1) % r if zipf else rng.integers(0, r, size=n))
    return np.concatenate(parts).astype(np.int64), np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)


def _bag_sums(table: np.ndarray, idx, offs, B, t):
    """torch EmbeddingBag(sum) of table t's slice of a table-major batch, in float64."""
    a, e = int(offs[t * B]), int(offs[(t + 1) * B])
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(np.asarray(table, dtype=np.float64)), mode="sum")
    return bag(torch.from_numpy(idx[a:e]), torch.from_numpy(offs[t * B : (t + 1) * B] - a)).numpy()


def _check_integer_exact(pim, ws, idx, offs, B):
    got = pim.lookup_list(idx, offs, B)
    for t, w in enumerate(ws):
        q = pim.quant.quantize(t, w)  # the stored integers (checked against NumPy in test_quant.py)
        sums = _bag_sums(q, idx, offs, B, t)  # exact: integers well below 2**53
        expect = (sums / pim.quant.table_scales(t)).astype(np.float32)
        np.testing.assert_array_equal(got[t], expect, err_msg=f"table {t}")


def _check_within_bound(pim, ws, idx, offs, B):
    got = pim.lookup_list(idx, offs, B)
    lens = np.diff(offs).reshape(len(ws), B)
    bound = pim.pooled_error_bound(lens)
    for t, w in enumerate(ws):
        err = np.abs(got[t].astype(np.float64) - _bag_sums(w, idx, offs, B, t)).max(axis=1)
        assert np.all(err <= bound[t]), f"table {t}: error {err.max()} > bound {bound[t][np.argmax(err - bound[t])]}"
    return got


@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("quant", ["table", "group"])
def test_pooled_sums_are_bit_exact_in_the_integer_domain(dtype, quant):
    rng = np.random.default_rng(10)
    rows, dims = [500, 37, 64], [16, 5, 24]
    ws = [rng.standard_normal((r, d)).astype(np.float32) * rng.uniform(0.01, 3, d).astype(np.float32)
          for r, d in zip(rows, dims)]
    plan = make_plan([TableSpec(f"t{t}", r, d) for t, (r, d) in enumerate(zip(rows, dims))],
                     Topology(nr_dpus=3), "row_uniform", dtype=dtype)
    with PimEmbedding(ws, plan, dtype=dtype, max_bag_lookups=256, quant=quant, group_cols=4) as pim:
        idx, offs = _batch(rng, rows, 24)
        _check_integer_exact(pim, ws, idx, offs, 24)


@pytest.mark.parametrize("dtype,max_dim", [("int8", 2048), ("int16", 1024)])
def test_every_row_width_from_8_to_2048_bytes(dtype, max_dim):
    """One table per dim 1..max_dim: stored rows of 8..2,048 bytes (every multiple of 8), sums
    of up to 8 KiB per row; every DMA is checked by the emulator, every result against torch."""
    rng = np.random.default_rng(11)
    dims = list(range(1, max_dim + 1))
    ws = [rng.integers(-3, 4, size=(3, d)).astype(np.float32) for d in dims]
    plan = make_plan([TableSpec(f"t{d}", 3, d) for d in dims], Topology(nr_dpus=1, nr_tasklets=16), "row_uniform",
                     dtype=dtype, request_bytes=1 << 20, output_bytes=16 << 20)
    B = 2
    lens = np.tile([2, 3], len(dims))
    offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    idx = rng.integers(0, 3, size=int(lens.sum())).astype(np.int64)
    with PimEmbedding(ws, plan, dtype=dtype, max_bag_lookups=4) as pim:
        rb = sorted(set(pim._layout.shard_row_bytes.tolist()))
        assert rb == list(range(8, 2049, 8))
        _check_integer_exact(pim, ws, idx, offs, B)


def _strategy_plan(name, tables, nr_dpus, dtype, profile):
    opts = {"split_oversized": True} if name == "table_wise" else {}
    return make_plan(tables, Topology(nr_dpus=nr_dpus), name, profile=profile, dtype=dtype, **opts)


@pytest.mark.parametrize("nr_dpus", [1, 3, 64])
def test_within_the_bound_of_fp32_for_every_strategy(nr_dpus):
    rng = np.random.default_rng(12 + nr_dpus)
    rows, dims = [2000, 300, 40], [16, 16, 16]
    tables = [TableSpec(f"t{t}", r, d) for t, (r, d) in enumerate(zip(rows, dims))]
    ws = [rng.uniform(-1, 1, (r, d)).astype(np.float32) for r, d in zip(rows, dims)]
    pidx, poffs = _batch(rng, rows, 256, zipf=True)
    counts = [np.bincount(pidx[poffs[t * 256] : poffs[(t + 1) * 256]], minlength=r) for t, r in enumerate(rows)]
    profile = AccessProfile(counts=counts, samples=256, source="zipf(1.2) test draw", fingerprint="test")
    idx, offs = _batch(rng, rows, 32, zipf=True)
    names = strategy_names()
    assert {"table_wise", "row_uniform", "column_wise", "tile_uniform", "popularity_balanced", "cache_aware"} <= set(names)
    for name in names:
        for dtype, quant in (("int8", "group"), ("int16", "table")):
            plan = _strategy_plan(name, tables, nr_dpus, dtype, profile)
            with PimEmbedding(ws, plan, dtype=dtype, max_bag_lookups=64, quant=quant) as pim:
                _check_within_bound(pim, ws, idx, offs, 32)


@pytest.mark.parametrize("dtype,m", [("int8", 3000), ("int16", 65_538), ("int16", 70_000)])
def test_a_full_bag_of_the_largest_rows_does_not_overflow(dtype, m):
    """max_bag_lookups copies of the row of largest magnitude (both signs): the DPU's int32 sum
    reaches M * L <= 2**31 - 1 and comes back with the right sign and within the bound."""
    w = np.full((4, 6), 0.01, dtype=np.float32)
    w[2] = 5.0
    w[3] = -5.0
    plan = make_plan([TableSpec("t", 4, 6)], Topology(nr_dpus=1), "row_uniform", dtype=dtype)
    with PimEmbedding([w], plan, dtype=dtype, max_bag_lookups=m) as pim:
        L = pim.quant.limit
        assert np.all(np.abs(pim.quant.quantize(0, w[2:])) == L) and m * L <= 2**31 - 1
        idx = np.array([2] * m + [3] * m, dtype=np.int64)
        offs = np.array([0, m, 2 * m], dtype=np.int64)
        got = _check_within_bound(pim, [w], idx, offs, 2)[0]
        assert np.all(got[0] > 0.999 * 5 * m) and np.all(got[1] < -0.999 * 5 * m)
        with pytest.raises(InvalidBatchError, match=f"bag of {m + 1} lookups exceeds max_bag_lookups={m}"):
            pim.lookup(np.full(m + 1, 2, dtype=np.int64), np.array([0, m + 1], dtype=np.int64), 1)


def test_plan_dtype_must_match_and_module_and_calibration_options():
    rng = np.random.default_rng(13)
    ws = [rng.standard_normal((100, 8)).astype(np.float32)]
    fp32_plan = make_plan([TableSpec("t0", 100, 8)], Topology(nr_dpus=2))
    with pytest.raises(PlanError, match="sized for fp32 rows .* make the plan with dtype='int8'"):
        PimEmbedding(ws, fp32_plan, dtype="int8")
    counts = [np.r_[np.full(10, 100), np.zeros(90, dtype=np.int64)]]
    bag = PIMEmbeddingBag(ws, nr_dpus=2, dtype="int8", quant="group", group_cols=2, calibrate_on=counts)
    try:
        assert bag.plan.dtype == "int8" and bag.pim.quant.calibrated
        idx = torch.tensor([0, 1, 2, 99])
        out = bag([idx], [torch.tensor([0, 2])])[0]
        ref = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(ws[0]).double(), mode="sum")(idx, torch.tensor([0, 2]))
        bound = bag.pim.pooled_error_bound(np.array([[2, 2]]))[0]
        assert np.all((out.double() - ref).abs().numpy().max(axis=1) <= bound)
    finally:
        bag.close()


STALE = "#define UPDLRM_ABI_VERSION 2u /* a kernel built before v3 */"


def test_a_kernel_of_another_abi_version_is_refused(tmp_path):
    """The same kernel compiled against a header that says ABI v2: the host refuses its result
    (the kernel also refuses the v3 launch args) and names both versions."""
    emu = pytest.importorskip("updlrm.emu")
    header = (REPO / "dpu_kernels" / "include" / "updlrm_abi.h").read_text()
    lines = [STALE if ln.startswith("#define UPDLRM_ABI_VERSION ") else ln for ln in header.splitlines()]
    assert STALE in lines
    (tmp_path / "updlrm_abi.h").write_text("\n".join(lines) + "\n")
    src = tmp_path / "emb_lookup_v2.c"
    src.write_text((REPO / "dpu_kernels" / "emb_lookup.c").read_text())
    kernel = emu.compile_kernel(str(src), nr_tasklets=4, include_dirs=[str(tmp_path)], out_dir=str(tmp_path))
    w = np.ones((8, 4), dtype=np.float32)
    plan = make_plan([TableSpec("t", 8, 4)], Topology(nr_dpus=1, nr_tasklets=4), dtype="int8")
    with PimEmbedding([w], plan, dtype="int8", kernel_path=str(kernel)) as pim:
        with pytest.raises(DpuFaultError, match=r"ABI version 2, host expects 3"):
            pim.lookup(np.array([1, 2], dtype=np.int64), np.array([0, 2], dtype=np.int64), 1)


def test_engine_int8_group_wise_stays_within_its_pooled_and_probability_bounds():
    from updlrm import configs
    from updlrm.batch import random_batch
    from updlrm.engine import Engine
    from updlrm.model import DLRM

    cfg = configs.get("tiny")
    model = DLRM(cfg)
    batch = random_batch(cfg, 64, pooling=5, seed=3)
    with Engine(model, backend="cpu") as cpu, Engine(model, backend="pim", nr_dpus=3, dtype="int8", quant="group",
                                                      group_cols=2, max_bag_lookups=16) as pim:
        assert pim.plan.dtype == "int8" and pim.backend.pim.quant.granularity == "group"
        p_cpu, pooled_cpu = cpu.predict_with_pooled(batch)
        p_pim, pooled_pim = pim.predict_with_pooled(batch)
        bound = pim.pooled_error_bound(batch)  # [B, T, 1]
        assert torch.all((pooled_pim.double() - pooled_cpu.double()).abs() <= bound)
        x = model.bottom(batch.dense)
        pbound = model.probability_error_bound(x, pooled_cpu, bound) + 1e-6
        assert torch.all((p_pim.double() - p_cpu.double()).abs() <= pbound)
        assert pim.last_stats.counters["dtype"] == "int8"


def test_partition_cli_saves_an_int8_plan_that_the_engine_loads(tmp_path, capsys):
    from updlrm.cli import main
    from updlrm.partition import load_plan

    out = tmp_path / "p.json"
    rc = main(["partition", "--model", "tiny", "--dpus", "4", "--dtype", "int8", "--batch-size", "64",
               "--profile-batches", "1", "--eval-batches", "1", "--strategies", "row_uniform",
               "--plan-strategy", "row_uniform", "--save-plan", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "tables stored as int8" in text and "MRAM max %" in text
    plan = load_plan(out)
    assert plan.dtype == "int8"
    w = [np.ones((t.rows, t.dim), dtype=np.float32) for t in plan.tables]
    with PimEmbedding(w, plan, dtype="int8") as pim:
        B = 2
        offs = np.arange(len(w) * B + 1, dtype=np.int64)
        got = pim.lookup_list(np.zeros(len(w) * B, dtype=np.int64), offs, B)
        assert all(np.all(g == 1.0) for g in got)
