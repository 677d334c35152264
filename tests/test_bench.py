"""End-to-end tests of `updlrm bench` on the tiny config: every available backend reports every
phase with a source label, cuda is listed unavailable with a reason when torch sees no GPU, pim
latency is measured host phases plus modeled DPU phases, and the files (JSON, CSV, plots) exist.
"""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import torch

from updlrm.bench import EXPECTED_PHASES, MODELED_PHASES, BenchConfig, load_bench_config
from updlrm.cli import main as cli_main
from updlrm.stats import SOURCES

import updlrm.pim  # noqa: F401  (part of the package: a broken import fails here, never skips)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = cli_main([
        "bench", "--model", "tiny", "--batch-sizes", "16,64", "--repeats", "2", "--warmup", "1",
        "--nr-dpus", "4", "--strategies", "row_uniform,cache_aware", "--backends", "cpu,cuda,pim", "--threads", "1", "--quiet", "--out", str(out),
    ])
    return code, out, json.loads((out / "bench.json").read_text())


def test_bench_exits_cleanly_and_writes_files(bench_run):
    code, out, _ = bench_run
    assert code == 0
    for name in ("bench.json", "bench.csv", "latency_vs_batch.png", "phases.png", "speedup.png"):
        assert (out / name).stat().st_size > 0, name


def test_every_available_backend_has_every_phase_labelled(bench_run):
    _, _, data = bench_run
    ok = [r for r in data["runs"] if r["status"] == "ok"]
    assert {r["backend"] for r in ok} >= {"cpu"}
    for r in ok:
        for phase in EXPECTED_PHASES[r["backend"]]:
            assert phase in r["phases"], (r["backend"], r["batch_size"], phase)
        for name, p in r["phases"].items():
            assert p["source"] in SOURCES, (name, p)
            assert p["p50_s"] >= 0
        lat = r["latency_s"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert r["latency_source"]
    for r in ok:
        if r["backend"] in ("cpu", "cuda-hybrid", "cuda-gpu"):
            assert all(p["source"] == "measured" for p in r["phases"].values())


def test_cuda_listed_unavailable_with_reason(bench_run):
    _, _, data = bench_run
    for name in ("cuda-hybrid", "cuda-gpu"):
        info = data["backends"][name]
        if torch.cuda.is_available():
            assert info["available"]
            continue
        assert info["available"] is False
        assert "GPU" in info["reason"] and "torch" in info["reason"]
        runs = [r for r in data["runs"] if r["backend"] == name]
        assert {r["batch_size"] for r in runs} == {16, 64}
        assert all(r["status"] == "unavailable" and r["reason"] for r in runs)


def test_pim_runs_are_modeled_with_bound(bench_run):
    _, _, data = bench_run
    info = data["backends"]["pim"]
    assert info["available"], info
    pim = [r for r in data["runs"] if r["backend"] == "pim"]
    assert {r["strategy"] for r in pim} == {"row_uniform", "cache_aware"}  # cache_aware got a profile
    assert pim and all(r["status"] == "ok" for r in pim), [r.get("reason") for r in pim]
    for r in pim:
        for phase in MODELED_PHASES:
            assert r["phases"][phase]["source"] == "modeled"
        for phase in ("pack", "merge", "mlp"):
            assert r["phases"][phase]["source"] == "measured"
        assert r["emulator_wall_s"], "emulator wall time must be kept, separately"
        assert r["bound_s"] > 0 and r["modeled_over_bound"] >= 1.0
        assert r["nr_dpus"] == 4
        assert r["strategy"] in ("row_uniform", "cache_aware")
        # the modeled DPU phases are part of the latency; the emulator's wall time is not
        modeled = sum(r["phases"][p]["p50_s"] for p in MODELED_PHASES)
        assert r["latency_s"]["p50"] >= 0.5 * modeled
        assert r["speedup_over_cpu"] and r["speedup_over_cpu"] > 0
        # embedding layer = pack + modeled DPU phases + merge
        parts = sum(r["phases"][p]["p50_s"] for p in ("pack", *MODELED_PHASES, "merge"))
        assert r["embedding_s"] == pytest.approx(parts)
        cpu = next(c for c in data["runs"] if c["backend"] == "cpu" and c["batch_size"] == r["batch_size"])
        assert r["embedding_speedup_over_cpu"] == pytest.approx(cpu["phases"]["embed"]["p50_s"] / parts)


def test_csv_has_one_row_per_run_with_sources(bench_run):
    _, out, data = bench_run
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert len(rows) == len(data["runs"])
    cpu = [r for r in rows if r["backend"] == "cpu" and r["status"] == "ok"]
    assert cpu and all(r["embed_source"] == "measured" and float(r["p50_ms"]) > 0 for r in cpu)


def test_machine_and_constants_recorded(bench_run):
    _, _, data = bench_run
    m = data["machine"]
    assert m["cpu_count"] >= 1 and m["torch"] and m["torch_threads"] == 1
    load = m["load_average_1_5_15_min"]
    assert load is None or (len(load) == 3 and all(x >= 0 for x in load))
    names = {c["name"] for c in data["timing_constants"]}
    assert "dma_read_alpha_cycles" in names
    assert all(c.get("source") for c in data["timing_constants"])


def test_bad_config_is_reported(tmp_path, capsys):
    assert cli_main(["bench", "--backends", "cpu,tpu", "--quiet", "--out", str(tmp_path)]) == 2
    assert "tpu" in capsys.readouterr().err
    assert cli_main(["bench", "--batch-sizes", "64,x", "--quiet", "--out", str(tmp_path)]) == 2
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"model": "tiny", "batch_size": [64]}))
    with pytest.raises(ValueError, match="batch_size"):
        load_bench_config(p)
    with pytest.raises(ValueError, match="dtype"):
        BenchConfig(dtype="fp16")


def test_config_file_with_custom_model(tmp_path):
    from updlrm.bench import run_bench

    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({
        "model": {"name": "mine", "n_dense": 3, "embedding_dim": 4, "bottom_mlp": [8, 4], "top_mlp": [4, 1],
                  "tables": [{"name": "a", "rows": 10}, {"name": "b", "rows": 20}]},
        "batch_sizes": [8], "backends": ["cpu"], "repeats": 2, "warmup": 0, "pooling": 3,
    }))
    cfg = load_bench_config(p, threads=1)
    result = run_bench(cfg)
    assert result.model["name"] == "mine" and result.model["nr_tables"] == 2
    assert [r["status"] for r in result.runs] == ["ok"]


def test_sdk_devices_listed_unavailable_without_the_sdk(tmp_path):
    from updlrm.bench import run_bench

    if importlib.util.find_spec("updlrm._native._sdk") is not None:
        pytest.skip("this build has the UPMEM SDK module")
    result = run_bench(BenchConfig(model="tiny", batch_sizes=[8], backends=["pim"], nr_dpus=[2], repeats=1,
                                   warmup=0, device="hw", threads=1))
    assert result.backends["pim"]["available"] is False
    assert "SDK" in result.backends["pim"]["reason"]
    assert result.runs[0]["status"] == "unavailable" and result.runs[0]["device"] == "hw"


def test_show_constants_lists_sources(tmp_path, capsys):
    assert cli_main(["bench", "--show-constants"]) == 0
    out = capsys.readouterr().out
    assert "dma_read_alpha_cycles" in out and "PrIM" in out and "[guessed]" in out
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"launch_fixed_s": 1e-4}))
    assert cli_main(["bench", "--show-constants", "--timing-constants", str(p)]) == 0
    assert "0.0001" in capsys.readouterr().out
    p.write_text(json.dumps({"nope": 1}))
    assert cli_main(["bench", "--show-constants", "--timing-constants", str(p)]) == 2
    assert "nope" in capsys.readouterr().err


def test_result_round_trips_through_json(bench_run, tmp_path):
    from updlrm.bench import format_table, load_result, write_outputs

    _, out, data = bench_run
    result = load_result(out / "bench.json")
    assert result.runs == data["runs"]
    paths = write_outputs(result, tmp_path, plots=True)
    assert json.loads(paths["json"].read_text())["runs"] == data["runs"]
    assert "cpu" in format_table(result)
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a bench.json"):
        load_result(bad)


# ---- device != "emulator": DPU phases measured on the SDK simulator / hardware ----------------------


class _FakeClock:
    """Stands in for ``time.perf_counter`` in updlrm.bench: moves only when a fake engine says so."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


class _SdkLikeEngine:
    """A PIM engine as the SDK build would present it, without the SDK: the emulator engine runs the
    batch (real pack/merge/MLP phases and real counters), then the DPU phases it reported are
    relabelled the way updlrm.pim.embedding labels a simulator / hw run, with fixed fake seconds,
    and the host wall clock advances by a fixed ``wall_s``."""

    def __init__(self, inner, source: str, dpu_seconds: dict, clock: _FakeClock, wall_s: float):
        self.inner, self.source, self.dpu_seconds, self.clock, self.wall_s = inner, source, dpu_seconds, clock, wall_s
        self.plan = inner.plan
        self.backend = object()  # no synchronize()
        self.last_stats = None
        self.seen_counters = []

    def predict(self, batch):
        from updlrm.stats import BatchStats, Phase

        out = self.inner.predict(batch)
        s = self.inner.last_stats
        phases = [Phase(p.name, self.dpu_seconds[p.name], self.source) if p.source == "emulator-wall" else p
                  for p in s.phases]
        assert {p.name for p in s.phases if p.source == "emulator-wall"} == set(self.dpu_seconds)
        self.last_stats = BatchStats(phases, dict(s.counters))
        self.seen_counters.append(dict(s.counters))
        self.clock.now += self.wall_s
        return out

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("device,source", [("hw", "hardware"), ("simulator", "simulator")])
def test_sdk_device_phases_are_measured_and_the_model_is_only_alongside(device, source, monkeypatch):
    import numpy as np

    import updlrm.bench as bench
    from updlrm.batch import random_batch
    from updlrm.engine import Engine
    from updlrm.model import DLRM
    from updlrm.timing_model import TimingModel

    cfg = BenchConfig(model="tiny", batch_sizes=[32], backends=["pim"], nr_dpus=[4], strategies=["row_uniform"],
                      repeats=3, warmup=1, device=device, threads=1)
    model = DLRM(bench._model_config(cfg)).eval()
    clock = _FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    dpu_seconds = {"cpu_to_dpu": 1.5e-3, "kernel": 4.0e-3, "dpu_to_cpu": 0.75e-3}
    wall_s = 0.025
    inner = Engine(model, backend="pim", nr_dpus=4, strategy="row_uniform", dtype=cfg.dtype, nr_tasklets=cfg.nr_tasklets)
    engine = _SdkLikeEngine(inner, source, dpu_seconds, clock, wall_s)
    timing = TimingModel.default()
    runner = bench._Runner(model, cfg, timing)
    batches = [random_batch(model.config, 32, pooling=cfg.pooling, alpha=cfg.alpha, seed=i) for i in range(4)]
    try:
        rec = runner.time_point(engine, "pim", batches)
    finally:
        engine.close()

    # latency = the host wall clock as measured: nothing taken out, no modeled phase put in
    assert rec["latency_s"]["p50"] == pytest.approx(wall_s)
    assert rec["host_wall_s"]["p50"] == pytest.approx(wall_s)
    assert rec["latency_source"] == f"measured ({device})"
    # the DPU phases are the device's, with its label; host phases stay measured
    for name, sec in dpu_seconds.items():
        assert rec["phases"][name] == {"p50_s": pytest.approx(sec), "min_s": pytest.approx(sec), "source": source}
    for name in ("pack", "merge", "mlp"):
        assert rec["phases"][name]["source"] == "measured"
    assert not any(p["source"] in ("modeled", "emulator-wall") for p in rec["phases"].values())
    # the model for the same counters sits alongside (median over the 3 timed batches), not counted
    assert "emulator_wall_s" not in rec
    timed = engine.seen_counters[cfg.warmup:]
    assert len(timed) == cfg.repeats
    modeled = [timing.model_counters(inner.plan.topology, c, inner.plan) for c in timed]
    assert set(rec["model_alongside_s"]) == set(MODELED_PHASES)
    for name in MODELED_PHASES:
        want = float(np.median([m.get(name).seconds for m in modeled]))
        assert rec["model_alongside_s"][name] == pytest.approx(want)
        assert want > 0
    # the model's kernel differs from the fake measurement, so a mix-up of the two would show
    assert rec["model_alongside_s"]["kernel"] != pytest.approx(dpu_seconds["kernel"])
    bounds = [m.bound.seconds for m in modeled]
    assert rec["bound_s"] == pytest.approx(float(np.median(bounds)))
    # measured DPU side over the physical bound (host phases are not in the bound)
    assert rec["modeled_over_bound"] == pytest.approx(float(np.median([sum(dpu_seconds.values()) / b for b in bounds])))
    assert rec["kernel_model"] and "per_launch" not in rec["kernel_model"]


def test_sdk_device_run_reports_embedding_layer_from_measured_phases(monkeypatch, tmp_path):
    """Through run_bench (engine creation faked): the embedding layer of a hw run is pack + the
    device's DPU phases + merge, the run is labelled hw, and the outputs carry model_alongside_s."""
    import updlrm.bench as bench
    from updlrm.engine import Engine

    clock = _FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    dpu_seconds = {"cpu_to_dpu": 2e-3, "kernel": 5e-3, "dpu_to_cpu": 1e-3}
    real_engine = bench._Runner.engine

    def engine(self, backend, nr_dpus=None, strategy=None):
        if backend != "pim":
            return real_engine(self, backend, nr_dpus, strategy)
        inner = Engine(self.model, backend="pim", nr_dpus=nr_dpus, strategy=strategy, dtype=self.cfg.dtype,
                       nr_tasklets=self.cfg.nr_tasklets)
        return _SdkLikeEngine(inner, "hardware", dpu_seconds, clock, 0.03)

    monkeypatch.setattr(bench._Runner, "engine", engine)
    cfg = BenchConfig(model="tiny", batch_sizes=[16], backends=["pim"], nr_dpus=[4], strategies=["row_uniform"],
                      repeats=2, warmup=0, device="hw", dtype="int32", threads=1)
    result = bench.run_bench(cfg)
    (r,) = result.runs
    assert r["status"] == "ok" and r["device"] == "hw", r.get("reason")
    host = r["phases"]["pack"]["p50_s"] + r["phases"]["merge"]["p50_s"]
    assert r["embedding_s"] == pytest.approx(host + sum(dpu_seconds.values()))
    assert "launch" not in r["phases"]  # the device reports launch inside kernel; only the model splits it
    table = bench.format_table(result)
    assert "pim[4 DPUs,row_uniform,int32,hw]" in table and "measured on the hw" in table
    assert "modeled DPU phases" not in table  # no emulator run in this result
    paths = bench.write_outputs(result, tmp_path, plots=False)
    saved = json.loads(paths["json"].read_text())["runs"][0]
    assert saved["model_alongside_s"] == pytest.approx(r["model_alongside_s"])
