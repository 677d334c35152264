"""Pipelined PIM batches (PimEmbedding.lookup_many, Engine.predict_many) and the packer's twin.

Every result is checked against torch EmbeddingBag (or the engine's own one-batch path, itself
checked against EmbeddingBag elsewhere); the pipeline must give results in order, a failing
batch must fail alone, bags too large for one launch are cut and added back, and the native
packer's per-DPU lookups and partial sums equal partition.routing.Router's (its numpy twin).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from updlrm.errors import DpuFaultError, InvalidBatchError
from updlrm.partition import Topology, make_plan
from updlrm.partition.cost import CostEstimator
from updlrm.partition.profile import profile_trace
from updlrm.partition.routing import Router
from updlrm.pim import PimEmbedding, native
from updlrm.pim.layout import plan_layout

from test_pim_embedding import assert_fp32_close, assert_int32_within_bound, make_batch, make_weights, plan_for
from test_pim_faults import lying_spec

ROWS = [97, 400, 33, 250]
DIMS = [16, 16, 16, 16]


def _batches(rng, n, sizes=(7, 31, 1, 16)):
    out = []
    for k in range(n):
        B = sizes[k % len(sizes)]
        idx, offs = make_batch(rng, ROWS, B, max_len=9, zipf=True)
        out.append((idx, offs, B))
    return out


@pytest.mark.parametrize("strategy", ["table_wise", "row_uniform", "cache_aware"])
@pytest.mark.parametrize("dtype", ["fp32", "int32"])
def test_lookup_many_in_order_and_exact(strategy, dtype):
    rng = np.random.default_rng(1)
    weights = make_weights(rng, ROWS, DIMS)
    batches = _batches(rng, 7)
    kw = {}
    if strategy == "cache_aware":
        idx, offs = make_batch(rng, ROWS, 64, max_len=9, zipf=True)
        kw["profile"] = profile_trace((idx, offs, 64), plan_for(ROWS, DIMS, 8, "row_uniform").tables, source="A")
    with PimEmbedding(weights, plan_for(ROWS, DIMS, 8, strategy, **kw), dtype=dtype) as pim:
        outs = list(pim.lookup_many(batches))
        assert len(outs) == len(batches)
        for (idx, offs, B), flat in zip(batches, outs):
            got = [flat[:, 16 * t:16 * (t + 1)] for t in range(len(ROWS))]
            if dtype == "fp32":
                assert_fp32_close(got, weights, idx, offs, B)
            else:
                assert_int32_within_bound(pim, got, weights, idx, offs, B)
        # the stages overlap: batch n+1 was packed, and batch n-1 merged, before batch n's DPU
        # stage ended (the asynchronous launch returned at once)
        ev = {(b, st): (t0, t1) for b, st, t0, t1 in pim.timeline.events}
        for n in range(1, len(batches) - 1):
            assert ev[(n + 1, "pack")][0] < ev[(n, "dpu")][1]
            if n >= 1:
                assert ev[(n - 1, "merge")][0] < ev[(n, "dpu")][1]


def test_a_failing_batch_fails_alone_and_in_place():
    rng = np.random.default_rng(2)
    weights = make_weights(rng, ROWS, DIMS)
    batches = _batches(rng, 6)
    bad_id = list(batches[2])
    bad_id[0] = bad_id[0].copy()
    bad_id[0][3] = 10**6  # an id outside its table
    batches[2] = tuple(bad_id)
    with PimEmbedding(weights, plan_for(ROWS, DIMS, 4, "row_uniform")) as pim:
        # batch 4 meets a kernel error on a DPU: ids mapped past their shard by a lying plan
        good, bad, first = lying_spec(pim, 1, 40)
        pim._rt.set_plan(bad)
        safe = []
        for k, (idx, offs, B) in enumerate(batches):
            idx = idx.copy()
            lo, hi = offs[B], offs[2 * B]  # table 1's lookups
            seg = idx[lo:hi]
            seg[seg >= first] = 0  # the lying plan moved the rows from `first` on
            if k == 4 and hi > lo:
                seg[0] = first + 5
            safe.append((idx, offs, B))
        assert safe[4][1][8] > safe[4][1][4]  # table 1 of batch 4 is not empty
        outs = list(pim.lookup_many(safe, return_exceptions=True))
        pim._rt.set_plan(good)
    assert isinstance(outs[2], InvalidBatchError) and "index 1000000" in str(outs[2])
    assert isinstance(outs[4], DpuFaultError) and "local row" in outs[4].reason
    for k in (0, 1, 3, 5):
        idx, offs, B = safe[k]
        flat = outs[k]
        assert_fp32_close([flat[:, 16 * t:16 * (t + 1)] for t in range(4)], weights, idx, offs, B)


def test_without_return_exceptions_the_failure_is_raised_at_its_place():
    rng = np.random.default_rng(3)
    weights = make_weights(rng, ROWS, DIMS)
    batches = _batches(rng, 5)
    batches[3] = (batches[3][0], batches[3][1][:-1], batches[3][2])  # offsets of the wrong length
    with PimEmbedding(weights, plan_for(ROWS, DIMS, 4, "table_wise")) as pim:
        got = []
        with pytest.raises(InvalidBatchError, match="offsets has shape"):
            for out in pim.lookup_many(batches):
                got.append(out)
        assert len(got) == 3
        # the runtime was left clean: the next batch runs
        idx, offs, B = batches[0]
        flat = pim.lookup_flat(idx, offs, B)
        np.testing.assert_array_equal(flat, got[0])


def test_stopping_early_leaves_no_batch_on_the_dpus():
    rng = np.random.default_rng(4)
    weights = make_weights(rng, ROWS, DIMS)
    batches = _batches(rng, 6)
    with PimEmbedding(weights, plan_for(ROWS, DIMS, 4, "row_uniform")) as pim:
        gen = pim.lookup_many(batches)
        first = next(gen)  # batch 1 is on the DPUs now
        gen.close()
        idx, offs, B = batches[0]
        np.testing.assert_array_equal(pim.lookup_flat(idx, offs, B), first)


@pytest.mark.parametrize("dtype", ["fp32", "int32"])
def test_pipeline_with_batches_and_bags_cut_into_launches(dtype):
    """Capacities too small for one launch, and a bag larger than a whole launch's request: the
    packer cuts DPU by DPU and inside the bag; the pieces' partial sums add up."""
    rng = np.random.default_rng(5)
    weights = make_weights(rng, ROWS, DIMS)
    plan = plan_for(ROWS, DIMS, 3, "row_uniform").replace(request_bytes=512, output_bytes=256)
    batches = []
    for B in (9, 20, 5):
        idx, offs = make_batch(rng, ROWS, B, max_len=12, big_bag=700)  # 700 ids > 512 B of request
        batches.append((idx, offs, B))
    with PimEmbedding(weights, plan, dtype=dtype) as pim:
        outs = list(pim.lookup_many(batches))
        assert pim.last_stats.counters["nr_launches"] > 3
        for (idx, offs, B), flat in zip(batches, outs):
            got = [flat[:, 16 * t:16 * (t + 1)] for t in range(4)]
            if dtype == "fp32":
                assert_fp32_close(got, weights, idx, offs, B)
            else:
                assert_int32_within_bound(pim, got, weights, idx, offs, B)


@pytest.mark.parametrize("backend", ["cpu", "pim"])
def test_engine_predict_many_equals_predict(backend):
    import updlrm
    from updlrm.batch import random_batch

    cfg = updlrm.configs.get("tiny")
    model = updlrm.DLRM(cfg)
    batches = [random_batch(cfg, b, pooling=6, alpha=1.1, seed=s) for s, b in enumerate((16, 3, 40, 8))]
    bad = random_batch(cfg, 4, pooling=3, seed=9)
    bad.indices[1] = -7
    stream = batches[:2] + [bad] + batches[2:]
    kw = {"nr_dpus": 6, "strategy": "row_uniform", "dtype": "int32"} if backend == "pim" else {}
    with updlrm.Engine(model, backend=backend, **kw) as engine:
        want = [engine.predict(b) for b in batches]
        got = list(engine.predict_many(stream, return_exceptions=True))
        assert isinstance(got[2], InvalidBatchError)
        del got[2]
        for w, g in zip(want, got):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        assert engine.last_stats.counters["batch_size"] == 8
        with pytest.raises(InvalidBatchError):
            list(engine.predict_many(stream))


ALL = ["table_wise", "row_uniform", "column_wise", "tile_uniform", "popularity_balanced", "cache_aware"]


@pytest.mark.parametrize("strategy", ALL)
def test_native_packer_is_the_routers_twin(strategy):
    """Per-DPU lookups (row-slice reads) and partial sums of the native packer equal the Router's
    (order "bag_fill") and the cost estimator's, for every strategy, without running DPUs."""
    rng = np.random.default_rng(6)
    rows, dims = [5000, 300, 40, 2000], [16, 16, 16, 16]
    B = 96
    idx, offs = make_batch(rng, rows, B, max_len=20, zipf=True)
    pidx, poffs = make_batch(rng, rows, 256, max_len=20, zipf=True)
    plan0 = plan_for(rows, dims, 24, "row_uniform")
    prof = profile_trace((pidx, poffs, 256), plan0.tables, source="A")
    kw = {"col_slices": 2} if strategy == "tile_uniform" else {}
    plan = make_plan(plan0.tables, Topology(nr_dpus=24), strategy, prof, **kw)
    plan.assign_offsets()
    hp = native.native_module("emulator").HostPacker(plan_layout(plan).native_spec("fp32", np.zeros(0)), 24)
    r = hp.pack(idx, offs, B).result()
    routed = Router(plan).route(idx, offs, B)
    assert np.array_equal(r["lookups"][0], routed.lookups_per_dpu)
    load = CostEstimator().dpu_load(plan, routed, B)
    assert np.array_equal(r["bags"][0], load.bags)
    assert np.array_equal(r["output_bytes"][0], load.output_bytes)
    assert np.array_equal(r["request_bytes"][0], load.request_bytes)
