"""The defaults of `updlrm demo` (the paper's best setting at system scale, --small one flag away),
its one-line verdict on the embedding layer, and of `updlrm bench`."""

from __future__ import annotations

import json

import pytest

from updlrm.cli import build_parser, main
from updlrm.commands import demo


def _args(*argv):
    args = build_parser().parse_args(["demo", *argv])
    demo._resolve_defaults(args)
    base = demo.SMALL if args.small else demo.DEFAULTS
    return args, (args.dpus or base["dpus"]), (args.strategy or base["strategy"])


def test_default_is_cache_aware_int32_on_2560_dpus():
    args, dpus, strategy = _args()
    assert (dpus, strategy, args.dtype) == (2560, "cache_aware", "int32")
    assert 0 < args.row_scale < 1


def test_small_is_the_earlier_setting_and_explicit_options_win():
    args, dpus, strategy = _args("--small")
    assert (dpus, strategy, args.dtype, args.row_scale) == (64, "row_uniform", "fp32", 0.1)
    args, dpus, strategy = _args("--small", "--dtype", "int32", "--dpus", "8", "--row-scale", "0.01")
    assert (dpus, strategy, args.dtype, args.row_scale) == (8, "row_uniform", "int32", 0.01)


def test_verdict_names_the_winner_and_marks_the_dpu_time_modeled():
    # two batches in flight: a batch costs the larger stage (here both 1 ms), not their sum
    v = demo._verdict(cpu_s=0.004, pim_host_s=0.001, pim_dpu_modeled_s=0.001, nr_dpus=2560, batch_size=1024)
    assert v["winner"] == "pim" and v["ratio"] == pytest.approx(4.0) and v["pim_one_batch_s"] == pytest.approx(0.002)
    assert "pim wins, 4.0x faster" in v["line"] and "MODELED" in v["line"] and "\n" not in v["line"]
    v = demo._verdict(cpu_s=0.001, pim_host_s=0.003, pim_dpu_modeled_s=0.001, nr_dpus=64, batch_size=8)
    assert v["winner"] == "cpu" and v["ratio"] == pytest.approx(3.0) and v["bound_by"] == "host"
    assert "bound by host pack+merge" in v["line"]
    assert demo._verdict(0.001, 0.003, 0.0, 64, 8)["winner"] is None  # no modeled DPU phases: no verdict


def test_demo_prints_the_verdict_last(capsys):
    pytest.importorskip("updlrm._native._emu")
    argv = ["demo", "--dpus", "4", "--row-scale", "1e-4", "--batch-size", "16", "--batches", "1", "--pooling", "4"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("embedding layer: ") and " wins, " in lines[-1] and "MODELED" in lines[-1]
    assert main(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pim"]["strategy"] == "cache_aware" and report["pim"]["dtype"] == "int32"
    assert report["verdict"]["winner"] in ("cpu", "pim")


def test_bench_default_is_kaggle_shaped_at_system_scale():
    from updlrm.bench import BenchConfig

    cfg = BenchConfig()
    assert (cfg.model, cfg.max_rows, cfg.nr_dpus, cfg.dtype) == ("kaggle", 2_000_000, [2560], "int32")
    assert set(cfg.strategies) == {"row_uniform", "cache_aware"}
    from updlrm import configs

    model = configs.get(cfg.model, row_scale=cfg.row_scale, max_rows=cfg.max_rows)
    assert model.nr_tables == 26 and max(t.rows for t in model.tables) == 2_000_000
