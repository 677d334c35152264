"""Engine end to end: cpu backend vs torch references, bad batches leave the engine serving, cuda
unavailable here, plans for another model rejected, and the full DLRM on `pim` (emulated DPUs)
agreeing with `cpu` within the dtype's bound for several strategies."""

from __future__ import annotations

import dataclasses
import sys
import threading
import types

import numpy as np
import pytest
import torch

import updlrm
from updlrm import configs
from updlrm.batch import Batch, random_batch
from updlrm.engine import Engine
from updlrm.errors import BackendUnavailableError, InvalidBatchError
from updlrm.model import DLRM
from updlrm.partition import PlanError, TableSpec, Topology, make_plan
from updlrm.stats import BatchStats

CFG = dataclasses.replace(configs.get("tiny"), seed=11)


def reference_pooled(model: DLRM, batch: Batch) -> torch.Tensor:
    """torch.nn.functional.embedding_bag per table, in float64: [B, T, d]."""
    outs = []
    b = batch.batch_size
    for t, bag in enumerate(model.embeddings):
        lo, hi = int(batch.offsets[t * b]), int(batch.offsets[(t + 1) * b])
        outs.append(
            torch.nn.functional.embedding_bag(
                batch.indices[lo:hi], bag.weight.detach().double(), batch.offsets[t * b : (t + 1) * b] - lo, mode="sum"
            )
        )
    return torch.stack(outs, dim=1)


def bad_batch(batch: Batch) -> Batch:
    ids = batch.indices.clone()
    ids[-1] = 10**6
    return Batch(batch.dense, ids, batch.offsets)


def test_public_api_exports():
    assert updlrm.DLRM is DLRM and updlrm.Engine is Engine and updlrm.Batch is Batch
    assert updlrm.configs.get("tiny").name == "tiny" and updlrm.DLRMConfig is type(CFG)


def test_cpu_engine_matches_torch_reference():
    model = DLRM(CFG)
    batch = random_batch(CFG, batch_size=33, pooling=7, seed=3)
    with Engine(model, backend="cpu") as engine:
        pooled = engine.embed(batch)
        assert [p.name for p in engine.last_stats.phases] == ["embed"]
        probs = engine.predict(batch)
        stats = engine.last_stats
        assert engine.plan is None and engine.tables == list(CFG.tables)
    np.testing.assert_allclose(pooled.double().numpy(), reference_pooled(model, batch).numpy(), atol=1e-6)
    with torch.no_grad():
        want = model.top(model.interact(model.bottom(batch.dense), reference_pooled(model, batch).float()))
    np.testing.assert_allclose(probs.numpy(), want.numpy(), atol=1e-6)
    assert probs.shape == (33,)
    assert {p.name: p.source for p in stats.phases} == {"embed": "measured", "mlp": "measured"}
    assert stats.counters["lookups"] == 33 * 7 * CFG.nr_tables


def test_bad_batch_changes_nothing_and_engine_serves_next():
    model = DLRM(CFG)
    good = random_batch(CFG, batch_size=8, pooling=3, seed=1)
    with Engine(model) as engine:
        first = engine.predict(good)
        stats_before = engine.last_stats
        with pytest.raises(InvalidBatchError, match=r"table 3 \('T4'\): id 1000000"):
            engine.predict(bad_batch(good))
        with pytest.raises(InvalidBatchError, match="dense"):
            engine.embed(Batch(good.dense[:, :2], good.indices, good.offsets))
        assert engine.last_stats is stats_before
        again = engine.predict(good)
    assert torch.equal(first, again)


def test_closed_engine_and_options_for_other_backends():
    model = DLRM(CFG)
    engine = Engine(model)
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        engine.predict(random_batch(CFG, 2, pooling=1))
    with pytest.raises(ValueError, match="nr_dpus, dtype only apply to backend='pim'"):
        Engine(model, backend="cpu", nr_dpus=8, dtype="int32")
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        Engine(model, backend="tpu")


def test_engine_is_safe_from_several_threads():
    model = DLRM(CFG)
    batches = [random_batch(CFG, 16, pooling=4, seed=s) for s in range(6)]
    with torch.no_grad():
        want = [model(b) for b in batches]
    results = [None] * len(batches)
    with Engine(model) as engine:

        def work(i):
            results[i] = engine.predict(batches[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    for got, exp in zip(results, want):
        assert torch.allclose(got, exp, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible; the unavailable path cannot be tested")
def test_cuda_backend_unavailable_here():
    with pytest.raises(BackendUnavailableError, match=r"torch.cuda.is_available\(\) is False"):
        Engine(DLRM(CFG), backend="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["hybrid", "gpu"])
def test_cuda_backend_matches_cpu(mode):
    model = DLRM(CFG)
    batch = random_batch(CFG, 64, pooling=5, seed=2)
    with Engine(model, backend="cuda", cuda_mode=mode) as engine:
        probs = engine.predict(batch)
    with torch.no_grad():
        assert torch.allclose(probs, model(batch), atol=1e-5)


@pytest.mark.parametrize("mode", ["hybrid", "gpu"])
def test_cuda_backend_code_path_on_the_cpu_device(monkeypatch, mode):
    """No GPU here: run the cuda backend's copies and lookups with device 'cpu' to check its logic."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    model = DLRM(CFG)
    batch = random_batch(CFG, 24, pooling=5, seed=8)
    with Engine(model, backend="cuda", cuda_mode=mode, cuda_device="cpu") as engine:
        probs, pooled = engine.predict_with_pooled(batch)
        assert engine.last_stats.get("embed").detail["where"] == ("gpu" if mode == "gpu" else "cpu")
    with torch.no_grad():
        assert torch.allclose(probs, model(batch), atol=1e-6)
    assert torch.allclose(pooled.double(), reference_pooled(model, batch), atol=1e-6)
    with pytest.raises(ValueError, match="cuda_mode must be one of"):
        Engine(model, backend="cuda", cuda_mode="tpu")


def test_plan_for_another_model_is_rejected():
    model = DLRM(CFG)
    other = [TableSpec(s.name, s.rows + 1, s.dim) for s in CFG.tables]
    plan = make_plan(other, Topology(nr_dpus=4), "row_uniform")
    with pytest.raises(PlanError, match=r"table 0 'T1' with 51 x 8 but the model has 'T1' with 50 x 8"):
        Engine(model, backend="pim", strategy=plan)
    fewer = make_plan(list(CFG.tables[:3]), Topology(nr_dpus=4), "row_uniform")
    with pytest.raises(PlanError, match="3 tables but the model has 4"):
        Engine(model, backend="pim", plan=fewer)
    with pytest.raises(ValueError, match="either as strategy=Plan or as plan=Plan"):
        Engine(model, backend="pim", strategy=fewer, plan=fewer)


# -- the pim backend's plumbing, with a stand-in PimEmbedding (exact sums in NumPy) ----------------
class StandInPim:
    """Implements the PimEmbedding contract with NumPy float64 sums; records what it was given."""

    created: list = []

    def __init__(self, weights, plan, dtype="fp32", device="emulator", max_bag_lookups=4096):
        self.weights, self.plan, self.dtype = [np.asarray(w, dtype=np.float64) for w in weights], plan, dtype
        self.max_bag_lookups = max_bag_lookups
        self.last_stats = None
        self.closed = False
        StandInPim.created.append(self)

    def lookup(self, indices, offsets, batch_size):
        t_count = len(self.weights)
        out = np.zeros((batch_size, t_count, self.weights[0].shape[1]), dtype=np.float32)
        for k in range(t_count * batch_size):  # a reference, not a hot path
            t, b = divmod(k, batch_size)
            out[b, t] = self.weights[t][indices[offsets[k] : offsets[k + 1]]].sum(axis=0)
        stats = BatchStats()
        for name in ("pack", "cpu_to_dpu", "kernel", "dpu_to_cpu", "merge"):
            stats.add(name, 1e-3, "emulator-wall" if name == "kernel" else "measured")
        stats.counters["lookups_per_dpu"] = [1, 2]
        self.last_stats = stats
        return out

    def fixed_point_bound(self, bag_lookups):
        return np.asarray(bag_lookups, dtype=np.float64) * 1e-7

    def close(self):
        self.closed = True


def test_pim_backend_plumbing_with_stand_in(monkeypatch):
    fake = types.ModuleType("updlrm.pim")
    fake.PimEmbedding = StandInPim
    monkeypatch.setitem(sys.modules, "updlrm.pim", fake)
    model = DLRM(CFG)
    batch = random_batch(CFG, 12, pooling=4, seed=5)
    engine = Engine(model, backend="pim", nr_dpus=4, strategy="column_wise", dtype="int32", max_bag_lookups=6)
    pim = StandInPim.created[-1]
    assert engine.plan.strategy == "column_wise" and engine.plan.topology.nr_dpus == 4
    assert pim.dtype == "int32" and pim.max_bag_lookups == 6 and pim.plan is engine.plan
    assert all(np.array_equal(w, m.weight.detach().double().numpy()) for w, m in zip(pim.weights, model.embeddings))
    probs, pooled = engine.predict_with_pooled(batch)
    names = [p.name for p in engine.last_stats.phases]
    assert names == ["pack", "cpu_to_dpu", "kernel", "dpu_to_cpu", "merge", "mlp"]
    assert engine.last_stats.counters["lookups_per_dpu"] == [1, 2]
    np.testing.assert_allclose(pooled.double().numpy(), reference_pooled(model, batch).numpy(), atol=1e-6)
    bound = engine.pooled_error_bound(batch)
    assert bound.shape == (12, CFG.nr_tables, 1) and bool((bound >= 4e-7).all())
    # a bag longer than the int32 scale allows is rejected before anything runs
    long_bag = random_batch(CFG, 12, pooling=7, seed=5)
    with pytest.raises(InvalidBatchError, match="bag of 7 lookups exceeds max_bag_lookups=6"):
        engine.predict(long_bag)
    engine.close()
    assert pim.closed


# -- the real PIM path (needs updlrm.pim and the native emulator) -------------------------------------
def _pim_or_skip():
    # A plain import: updlrm.pim is part of the package, so a broken import must fail these tests,
    # not skip them (a missing native module raises BackendUnavailableError when used).
    import updlrm.pim

    return updlrm.pim


@pytest.mark.parametrize("dtype", ["fp32", "int32"])
@pytest.mark.parametrize(
    "strategy, nr_dpus",
    [("row_uniform", 8), ("table_wise", 3), ("column_wise", 4), ("popularity_balanced", 8), ("cache_aware", 8)],
)
def test_pim_matches_cpu_within_dtype_bound(dtype, strategy, nr_dpus):
    _pim_or_skip()
    from updlrm.partition.profile import profile_trace

    model = DLRM(CFG)
    # popularity-aware strategies get a profile measured on another trace than the one served
    profile = profile_trace(random_batch(CFG, 300, pooling=9, seed=99), CFG.tables)
    batch = random_batch(CFG, batch_size=40, pooling=9, seed=21)
    lengths = np.random.default_rng(2).integers(0, 30, size=CFG.nr_tables * 40)
    lengths[:5] = 0  # empty bags
    ids = np.concatenate(
        [np.random.default_rng(3).integers(0, CFG.tables[k // 40].rows, size=n) for k, n in enumerate(lengths)]
    )
    batch = Batch(batch.dense, ids, np.concatenate([[0], np.cumsum(lengths)]))
    exact = reference_pooled(model, batch)
    with Engine(model, backend="cpu") as cpu:
        p_cpu = cpu.predict(batch).double()
    with Engine(model, backend="pim", nr_dpus=nr_dpus, strategy=strategy, dtype=dtype, profile=profile) as engine:
        assert engine.plan.strategy == strategy
        p_pim, pooled = engine.predict_with_pooled(batch)
        bound = engine.pooled_error_bound(batch)
        stats = engine.last_stats
        # a bad batch in between changes nothing; the next good batch gives the same answer
        with pytest.raises(InvalidBatchError):
            engine.predict(bad_batch(batch))
        assert engine.last_stats is stats
        assert torch.equal(engine.predict(batch), p_pim)
    assert bool(((pooled.double() - exact).abs() <= bound).all())
    with torch.no_grad():
        x = model.bottom(batch.dense)
        # both paths deviate from the exact sums by at most `bound` (fp32 CPU sums included)
        p_bound = model.probability_error_bound(x, exact.float(), 2 * bound) + 1e-6
    assert bool(((p_pim.double() - p_cpu).abs() <= p_bound).all())
    # and the engine fed exactly those pooled vectors to the model's interaction and top MLP
    with torch.no_grad():
        assert torch.allclose(p_pim, model.top(model.interact(x, pooled)), rtol=0, atol=1e-6)
    assert {p.name for p in stats.phases} >= {"pack", "cpu_to_dpu", "kernel", "dpu_to_cpu", "merge", "mlp"}
    assert stats.get("kernel").source in ("emulator-wall", "modeled")


def test_pim_batch_larger_than_request_buffer_is_cut_into_launches():
    _pim_or_skip()
    model = DLRM(CFG)
    batch = random_batch(CFG, batch_size=256, pooling=12, seed=4)
    small = {"request_bytes": 4096, "output_bytes": 4096}
    with Engine(model, backend="pim", nr_dpus=2, strategy="row_uniform", plan_options=small) as engine:
        assert engine.plan.request_bytes == 4096
        pooled = engine.embed(batch)
        assert engine.last_stats.counters["nr_launches"] > 1
    assert torch.allclose(pooled.double(), reference_pooled(model, batch), atol=1e-5)


def test_given_plan_brings_its_topology():
    _pim_or_skip()
    model = DLRM(CFG)
    plan = make_plan(list(CFG.tables), Topology(nr_dpus=3, nr_tasklets=8), "row_uniform")
    batch = random_batch(CFG, 16, pooling=4, seed=6)
    # nr_dpus defaults to 64 in the contract's signature even with a Plan: the plan wins
    with Engine(model, backend="pim", strategy=plan, nr_dpus=64) as engine:
        assert engine.plan is plan and engine.plan.topology.nr_dpus == 3
        assert engine.backend.pim.nr_tasklets == 8
        pooled = engine.embed(batch)
    assert torch.allclose(pooled.double(), reference_pooled(model, batch), atol=1e-5)


def test_dpu_fault_through_the_engine_then_next_batch_is_served():
    _pim_or_skip()
    from updlrm.errors import DpuFaultError

    model = DLRM(CFG)
    batch = random_batch(CFG, 16, pooling=5, seed=13)
    with Engine(model, backend="pim", nr_dpus=4) as engine:
        engine.predict(batch)
        stats = engine.last_stats
        from test_pim_faults import lying_spec

        pim = engine.backend.pim
        good, bad, first = lying_spec(pim, 0, 1)  # the host maps id `first` past its shard's rows
        pim._rt.set_plan(bad)
        bad_batch = type(batch)(batch.dense, batch.indices.clone(), batch.offsets)
        bad_batch.indices[int(batch.offsets[0])] = first
        try:
            with pytest.raises(DpuFaultError):
                engine.predict(bad_batch)
        finally:
            pim._rt.set_plan(good)
        assert engine.last_stats is stats
        probs, pooled = engine.predict_with_pooled(batch)
    assert torch.allclose(pooled.double(), reference_pooled(model, batch), atol=1e-5)


def test_saved_plan_round_trip_serves_the_same(tmp_path):
    _pim_or_skip()
    from updlrm.partition import load_plan, save_plan

    model = DLRM(CFG)
    batch = random_batch(CFG, 20, pooling=6, seed=12)
    save_plan(make_plan(list(CFG.tables), Topology(nr_dpus=5), "column_wise"), tmp_path / "plan.json")
    with Engine(model, backend="pim", strategy=load_plan(tmp_path / "plan.json"), dtype="int32",
                max_bag_lookups=64) as engine:
        assert engine.plan.topology.nr_dpus == 5
        pooled = engine.embed(batch)
        bound = engine.pooled_error_bound(batch)
        with pytest.raises(InvalidBatchError, match="exceeds max_bag_lookups=64"):
            engine.embed(random_batch(CFG, 2, pooling=65, seed=1))
    assert bool(((pooled.double() - reference_pooled(model, batch)).abs() <= bound).all())


def test_pim_devices_without_sdk_are_unavailable():
    _pim_or_skip()
    import importlib.util

    if importlib.util.find_spec("updlrm._native._sdk") is not None:
        pytest.skip("this build has the UPMEM SDK module")
    for device in ("hw", "simulator"):
        with pytest.raises(BackendUnavailableError, match="UPMEM SDK"):
            Engine(DLRM(CFG), backend="pim", nr_dpus=2, device=device)


# -- `updlrm demo` -------------------------------------------------------------------------------------
DEMO_ARGS = ["demo", "--small", "--batches", "2", "--batch-size", "32", "--dpus", "4", "--row-scale", "1e-4", "--json"]


class NoisyStandInPim(StandInPim):
    """A PIM stand-in whose sums are off by 1e-3: the demo must notice and fail."""

    def lookup(self, indices, offsets, batch_size):
        return super().lookup(indices, offsets, batch_size) + np.float32(1e-3)


@pytest.mark.parametrize("pim_class, rc", [(StandInPim, 0), (NoisyStandInPim, 1)])
def test_demo_reports_and_checks_agreement(monkeypatch, capsys, pim_class, rc):
    from updlrm.cli import main

    fake = types.ModuleType("updlrm.pim")
    fake.PimEmbedding = pim_class
    monkeypatch.setitem(sys.modules, "updlrm.pim", fake)
    assert main(DEMO_ARGS) == rc
    out = capsys.readouterr()
    report = __import__("json").loads(out.out)
    assert report["agreement"]["ok"] is (rc == 0)
    assert report["workload"]["lookups_per_batch"] == 32 * 20 * 26
    rows = {(r["backend"], r["phase"]): r for r in report["phases"]}
    assert rows[("cpu", "embed")]["source"] == "measured"
    assert rows[("pim", "kernel")]["source"] == "emulator-wall" and len(rows[("pim", "kernel")]["all_s"]) == 2
    assert "[demo] model kaggle" in out.err  # progress goes to stderr


def test_demo_rejects_bad_arguments(capsys):
    from updlrm.cli import main

    assert main(["demo", "--batches", "0"]) == 2
    assert "--batches must be >= 1" in capsys.readouterr().err


def test_demo_on_emulated_dpus(capsys):
    _pim_or_skip()
    from updlrm.cli import main

    assert main(DEMO_ARGS + ["--dtype", "int32"]) == 0
    report = __import__("json").loads(capsys.readouterr().out)
    assert report["agreement"]["ok"]
    assert 0.0 <= report["agreement"]["saturated_share"] <= 1.0
    kernel = [r for r in report["phases"] if r["backend"] == "pim" and r["phase"] == "kernel"]
    assert {r["source"] for r in kernel} <= {"emulator-wall", "modeled"} and kernel


# -- BatchStats.to_dict: plain, JSON-serialisable data ----------------------------------------------
def test_stats_to_dict_converts_numpy_to_plain_python():
    import json

    stats = BatchStats()
    stats.add("kernel", np.float64(2.5e-3), "emulator-wall", cycles=np.int64(7), per_dpu=np.arange(3, dtype=np.uint32))
    stats.counters.update(
        lookups=np.array([[1, 2], [3, 4]], dtype=np.int64),
        bytes=np.uint64(2**40),
        imbalance=np.float32(1.5),
        ok=np.bool_(True),
        nested={"per_launch": [np.array([0.5, 1.0]), (np.int32(3), "x")], np.int64(4): np.zeros(0)},
        pooled=torch.tensor([1.0, 2.0]),
    )
    d = stats.to_dict()
    # json.dumps raises TypeError on any NumPy scalar or array left in the tree
    back = json.loads(json.dumps(d))
    c = back["counters"]
    assert c["lookups"] == [[1, 2], [3, 4]] and c["bytes"] == 2**40 and c["imbalance"] == 1.5
    assert c["ok"] is True and c["pooled"] == [1.0, 2.0]
    assert c["nested"] == {"per_launch": [[0.5, 1.0], [3, "x"]], "4": []}
    k = back["phases"][0]
    assert k == {"name": "kernel", "seconds": 2.5e-3, "source": "emulator-wall", "detail": {"cycles": 7, "per_dpu": [0, 1, 2]}}
    # exact Python types, not look-alikes that only json accepts
    assert type(d["counters"]["bytes"]) is int and type(d["counters"]["imbalance"]) is float
    assert type(d["counters"]["lookups"][0][0]) is int
    # to_dict does not change the stats themselves
    assert isinstance(stats.counters["lookups"], np.ndarray)


def test_pim_engine_stats_are_json_serialisable():
    _pim_or_skip()
    import json

    model = DLRM(CFG)
    batch = random_batch(CFG, batch_size=16, pooling=5, seed=2)
    with Engine(model, backend="pim", nr_dpus=4) as engine:
        engine.predict(batch)
        raw = engine.last_stats.counters
        d = json.loads(json.dumps(engine.last_stats.to_dict()))
    arrays = [k for k, v in raw.items() if isinstance(v, np.ndarray)]
    assert arrays, "expected the pim backend to report per-DPU counters as arrays"
    for k in arrays:
        assert d["counters"][k] == raw[k].tolist()
