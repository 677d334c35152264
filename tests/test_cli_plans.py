"""`updlrm demo --plan` and `updlrm bench --plan`: a plan saved for the model is used as saved (its
strategy and DPU count show in the reports), a plan made for other table shapes is refused with
exit code 2 and a message naming the table whose shape differs, and --plan conflicts are reported."""

from __future__ import annotations

import json

import pytest

from updlrm import configs
from updlrm.cli import main
from updlrm.partition import Topology, load_plan, make_plan, save_plan

import updlrm.pim  # noqa: F401  (part of the package: a broken import fails here, never skips)


def needs_pim(test):
    """Kept as a marker of the tests that run the emulated DPUs."""
    return test

#: The demo's model at this row scale has 26 tables and ~3.4k rows: fast on 2 cores.
DEMO_SCALE = 1e-4
DEMO_ARGS = ["demo", "--small", "--batches", "2", "--batch-size", "16", "--pooling", "5", "--row-scale", str(DEMO_SCALE), "--json"]


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """A tile_uniform plan on 3 DPUs for the demo model, and one for the same model at twice the rows."""
    d = tmp_path_factory.mktemp("plans")
    ok = configs.get("kaggle", row_scale=DEMO_SCALE)
    other = configs.get("kaggle", row_scale=2 * DEMO_SCALE)
    # tile_uniform and 3 DPUs differ from the demo's defaults (row_uniform, 64): the report can only
    # show them if the plan was really used
    save_plan(make_plan(list(ok.tables), Topology(nr_dpus=3), "tile_uniform"), d / "ok.json")
    save_plan(make_plan(list(other.tables), Topology(nr_dpus=3), "row_uniform"), d / "other.json")
    tiny = configs.get("tiny")
    save_plan(make_plan(list(tiny.tables), Topology(nr_dpus=2), "column_wise"), d / "tiny.json")
    return d


def _first_mismatch(plan_path, cfg) -> tuple[str, int, int]:
    """(name, plan rows, model rows) of the first table whose rows differ, computed independently."""
    plan = load_plan(plan_path)
    for p, m in zip(plan.tables, cfg.tables):
        if (p.rows, p.dim) != (m.rows, m.dim):
            return m.name, p.rows, m.rows
    raise AssertionError("the two plans were expected to differ")


@needs_pim
def test_demo_uses_the_saved_plan(plans, capsys):
    assert main(DEMO_ARGS + ["--plan", str(plans / "ok.json")]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["pim"]["strategy"] == "tile_uniform"
    assert report["pim"]["dpus"] == 3
    assert report["pim"]["plan_file"] == str(plans / "ok.json")
    assert report["agreement"]["ok"] is True
    assert "plan " in out.err and "tile_uniform" in out.err


@needs_pim
def test_demo_runs_a_cache_aware_plan_saved_by_updlrm_partition(tmp_path, capsys):
    """The path users take: `updlrm partition --save-plan` (cache_aware: replicated hot rows, row
    sets in a .npz beside the JSON), then `updlrm demo --plan` at the same row scale."""
    path = tmp_path / "ca.json"
    assert main(["partition", "--row-scale", str(DEMO_SCALE), "--dpus", "8", "--batch-size", "32",
                 "--profile-batches", "2", "--eval-batches", "1", "--strategies", "row_uniform,cache_aware",
                 "--save-plan", str(path)]) == 0
    capsys.readouterr()
    saved = load_plan(path)
    assert saved.strategy == "cache_aware" and saved.topology.nr_dpus == 8
    assert main(DEMO_ARGS + ["--plan", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["pim"]["strategy"], report["pim"]["dpus"]) == ("cache_aware", 8)
    assert report["agreement"]["ok"] is True


def test_demo_refuses_a_plan_for_other_table_shapes(plans, capsys):
    name, plan_rows, model_rows = _first_mismatch(plans / "other.json", configs.get("kaggle", row_scale=DEMO_SCALE))
    assert main(DEMO_ARGS + ["--plan", str(plans / "other.json")]) == 2
    out = capsys.readouterr()
    assert out.out == ""  # no report, no traceback
    assert "Traceback" not in out.err
    assert "does not match the demo model" in out.err
    assert repr(name) in out.err and f"{plan_rows:,}" in out.err and f"{model_rows:,}" in out.err


def test_demo_refuses_a_plan_with_another_table_count(plans, capsys):
    assert main(DEMO_ARGS + ["--plan", str(plans / "tiny.json")]) == 2
    err = capsys.readouterr().err
    assert f"{configs.get('tiny').nr_tables} tables but the model has 26" in err


def test_demo_plan_errors_exit_2(plans, tmp_path, capsys):
    assert main(DEMO_ARGS + ["--plan", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert main(DEMO_ARGS + ["--plan", str(tmp_path / "broken.json")]) == 2
    assert "not JSON" in capsys.readouterr().err
    for extra in (["--dpus", "8"], ["--strategy", "row_uniform"]):
        assert main(DEMO_ARGS + ["--plan", str(plans / "ok.json")] + extra) == 2
        assert "--plan fixes the DPU count and the strategy" in capsys.readouterr().err


# -- `updlrm bench --plan` -------------------------------------------------------------------------------
BENCH_ARGS = ["bench", "--model", "tiny", "--dtype", "fp32", "--batch-sizes", "8", "--repeats", "1", "--warmup", "0", "--pooling", "4", "--quiet", "--no-plots"]


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory):
    """column_wise on 3 DPUs with 8 tasklets: none of it is a bench default (64, row_uniform, 16)."""
    path = tmp_path_factory.mktemp("bench_plan") / "tiny.json"
    tiny = configs.get("tiny")
    save_plan(make_plan(list(tiny.tables), Topology(nr_dpus=3, nr_tasklets=8), "column_wise"), path)
    return path


@needs_pim
def test_bench_uses_the_saved_plan(tiny_plan, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(BENCH_ARGS + ["--backends", "cpu,pim", "--plan", str(tiny_plan), "--out", str(out)]) == 0
    assert "pim[3 DPUs,column_wise,plan,fp32]" in capsys.readouterr().out
    doc = json.loads((out / "bench.json").read_text())
    cfg = doc["config"]
    assert (cfg["plan"], cfg["nr_dpus"], cfg["strategies"], cfg["nr_tasklets"]) == (str(tiny_plan), [3], ["column_wise"], 8)
    pim = [r for r in doc["runs"] if r["backend"] == "pim"]
    assert len(pim) == 1 and pim[0]["status"] == "ok", pim
    assert pim[0]["plan_file"] == str(tiny_plan) and pim[0]["nr_dpus"] == 3
    # the timing model saw the engine's plan: its strategy and tasklets, and a DPU among the plan's 3
    km = pim[0]["kernel_model"]
    assert km["strategy"] == "column_wise" and km["nr_tasklets"] == 8 and 0 <= km["slowest_dpu"] < 3


def test_bench_refuses_a_plan_for_another_model(plans, tmp_path, capsys):
    # a plan for the 26-table demo model against bench's 4-table tiny model
    rc = main(BENCH_ARGS + ["--backends", "pim", "--plan", str(plans / "ok.json"), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "does not match the bench model 'tiny'" in err and "26 tables but the model has 4" in err
    assert "Traceback" not in err and not (tmp_path / "bench.json").exists()


def test_bench_refuses_a_plan_with_other_row_counts(plans, tmp_path, capsys):
    cfg = configs.get("kaggle", row_scale=DEMO_SCALE)
    name, plan_rows, model_rows = _first_mismatch(plans / "other.json", cfg)
    rc = main(BENCH_ARGS + ["--model", "kaggle", "--row-scale", str(DEMO_SCALE), "--backends", "pim",
                            "--plan", str(plans / "other.json"), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert repr(name) in err and f"{plan_rows:,}" in err and f"{model_rows:,}" in err


def test_bench_plan_conflicts_exit_2(tiny_plan, tmp_path, capsys):
    for extra in (["--nr-dpus", "4"], ["--strategies", "row_uniform"], ["--nr-tasklets", "16"]):
        assert main(BENCH_ARGS + ["--plan", str(tiny_plan), "--out", str(tmp_path)] + extra) == 2
        assert "--plan fixes the DPU count" in capsys.readouterr().err
    assert main(BENCH_ARGS + ["--backends", "cpu", "--plan", str(tiny_plan), "--out", str(tmp_path)]) == 2
    assert "a plan is for the pim backend" in capsys.readouterr().err
    assert main(BENCH_ARGS + ["--plan", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
