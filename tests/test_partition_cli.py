"""Tests of the strategy lab's entry points: `updlrm partition` (compare, --save-plan, --sweep)
and the add-a-strategy example in partition/README.md (executed as written)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from updlrm.cli import main
from updlrm.partition import TableSpec, Topology, load_plan, make_plan

README = Path(__file__).resolve().parents[1] / "partition" / "README.md"


def test_readme_strategy_example_runs():
    code = README.read_text().split("# my_strategy.py\n")[1].split("```")[0]
    exec(compile(code, "my_strategy.py", "exec"), {})
    plan = make_plan([TableSpec("a", 100, 4)], Topology(nr_dpus=8), "every_other_dpu", stride=3)
    assert sorted({s.dpu for s in plan.shards}) == [0, 3, 6]


def test_cli_compare_and_save_plan(tmp_path, capsys):
    f = tmp_path / "plan.json"
    rc = main(["partition", "--row-scale", "0.0005", "--dpus", "32", "--batch-size", "128", "--profile-batches", "2",
               "--eval-batches", "1", "--latency", "simple", "--save-plan", str(f)])
    out = capsys.readouterr().out
    assert rc == 0
    for s in ("row_uniform", "table_wise", "column_wise", "tile_uniform", "popularity_balanced", "cache_aware"):
        assert s in out
    assert "profiled on: trace A" in out and "evaluated on: trace B" in out
    plan = load_plan(f)
    assert plan.strategy == "cache_aware" and plan.topology.nr_dpus == 32
    assert any(g.kind == "cache" for g in plan.groups)


def test_cli_strategy_options(tmp_path, capsys):
    f = tmp_path / "p.json"
    rc = main(["partition", "--row-scale", "0.0005", "--dpus", "16", "--batch-size", "64", "--profile-batches", "2",
               "--eval-batches", "1", "--latency", "simple", "--strategies", "table_wise,cache_aware",
               "--set", "cache_aware.hot_threshold=0.5", "--set", "table_wise.split_oversized=false", "--json",
               "--save-plan", str(f)])
    assert rc == 0
    import json

    rows = json.loads(capsys.readouterr().out.split("saved the")[0])
    assert [r["strategy"] for r in rows] == ["table_wise", "cache_aware"]
    assert load_plan(f).meta["strategy_options"]["hot_threshold"] == 0.5
    with pytest.raises(SystemExit):
        main(["partition", "--set", "nonsense"])
    rc = main(["partition", "--row-scale", "0.0005", "--dpus", "16", "--batch-size", "64", "--profile-batches", "1",
               "--eval-batches", "1", "--strategies", "cache_aware", "--set", "cache_aware.bogus=1"])
    assert rc == 1 and "has no option 'bogus'" in capsys.readouterr().out


def test_cli_sweep_writes_csv_and_plots(tmp_path, capsys):
    prefix = tmp_path / "sw"
    rc = main(["partition", "--row-scale", "0.0005", "--sweep", "--sweep-dpus", "16,64", "--sweep-alphas", "0.6,1.2",
               "--sweep-batch-sizes", "64", "--profile-batches", "2", "--eval-batches", "1", "--latency", "simple",
               "--strategies", "row_uniform,cache_aware", "--out", str(prefix)])
    assert rc == 0
    rows = list(csv.DictReader(open(f"{prefix}.csv")))
    assert len(rows) == 2 * 2 * 2
    assert {(r["strategy"], r["nr_dpus"], r["alpha"]) for r in rows} == {
        (s, d, a) for s in ("row_uniform", "cache_aware") for d in ("16", "64") for a in ("0.6", "1.2")}
    assert all(r["profile_fingerprint"] != r["eval_fingerprint"] for r in rows)
    assert Path(f"{prefix}_imbalance.png").stat().st_size > 0 and Path(f"{prefix}_latency_us.png").stat().st_size > 0


def test_cli_too_large_model_names_shortfall(capsys):
    rc = main(["partition", "--dpus", "4", "--strategies", "row_uniform", "--profile-batches", "1", "--eval-batches", "1",
               "--batch-size", "16"])
    cap = capsys.readouterr()
    assert rc == 1 and "cannot place the model" in cap.out and "B short" in cap.out
    assert "no strategy could place the model" in cap.err
