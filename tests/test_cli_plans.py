"""`updlrm demo --plan` and `updlrm bench --plan`: a plan saved for the model is used as saved (its
strategy and DPU count show in the reports), a plan made for other table shapes is refused with
exit code 2 and a message naming the table whose shape differs, and --plan conflicts are reported."""

from __future__ import annotations

import importlib.util
import json

import pytest

from updlrm import configs
from updlrm.cli import main
from updlrm.partition import Topology, load_plan, make_plan, save_plan

PIM_PRESENT = importlib.util.find_spec("updlrm.pim") is not None
needs_pim = pytest.mark.skipif(not PIM_PRESENT, reason="updlrm.pim (the emulated DPU runtime) is not built")

#: The demo's model at this row scale has 26 tables and ~3.4k rows: fast on 2 cores.
DEMO_SCALE = 1e-4
DEMO_ARGS = ["demo", "--batches", "2", "--batch-size", "16", "--pooling", "5", "--row-scale", str(DEMO_SCALE), "--json"]


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
