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
