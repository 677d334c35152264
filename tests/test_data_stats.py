"""Trace statistics vs brute-force Python references, the CDF plot, and the `updlrm trace` CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from updlrm.cli import main
from updlrm.data import Trace, hot_coverage, load_trace, table_stats
from updlrm.data.stats import reuse_intervals, stack_distances


def _brute_stack(seq):
    out, last = [], {}
    for i, v in enumerate(seq):
        if v in last:
            out.append(len(set(seq[last[v] + 1 : i]) - {v}))
        last[v] = i
    return out


def _brute_intervals(seq):
    out, last = [], {}
    for i, v in enumerate(seq):
        if v in last:
            out.append(i - last[v])
        last[v] = i
    return sorted(out)


@pytest.mark.parametrize("block", [1, 7, 256])
def test_stack_distances_match_brute_force(block):
    rng = np.random.default_rng(block)
    seq = rng.integers(0, 40, size=900)
    assert stack_distances(seq, block=block).tolist() == _brute_stack(seq.tolist())


def test_reuse_intervals_match_brute_force():
    seq = np.random.default_rng(1).integers(0, 25, size=500)
    intervals, cold = reuse_intervals(seq)
    assert sorted(intervals.tolist()) == _brute_intervals(seq.tolist())
    assert cold == len(set(seq.tolist()))


def test_hot_coverage_matches_sorted_counts():
    counts = np.random.default_rng(2).integers(0, 1000, size=12_345)
    got = hot_coverage(counts, (0.001, 0.01, 0.1))
    s = sorted(counts.tolist(), reverse=True)
    for f, g in zip((0.001, 0.01, 0.1), got):
        k = math.ceil(f * counts.size)
        assert g == pytest.approx(sum(s[:k]) / sum(s))


def test_table_stats_on_a_hand_built_trace():
    # table 0 (10 rows): bags [1,1,2] [] [1] [3];  table 1 (4 rows): [0] [0] [0] [0,1]
    tr = Trace([1, 1, 2, 1, 3, 0, 0, 0, 0, 1], [0, 3, 3, 4, 5, 6, 7, 8, 10], batch_size=4, table_rows=[10, 4])
    s0 = table_stats(tr, 0)
    assert (s0.lookups, s0.touched, s0.pooling_max, s0.empty_bag_share) == (5, 3, 3, 0.25)
    assert s0.pooling_mean == pytest.approx(1.25)
    assert s0.hot_coverage["0.1%"] == pytest.approx(3 / 5)  # ceil(0.01) = 1 row: row 1 has 3 of 5
    assert s0.cold_share == pytest.approx(3 / 5)
    assert s0.stack_distance_p50 == pytest.approx(np.percentile(_brute_stack([1, 1, 2, 1, 3]), 50))
    s1 = table_stats(tr, 1)
    assert s1.touched_share == pytest.approx(0.5) and s1.hot_coverage["10%"] == pytest.approx(0.8)


def test_cli_gen_stats_plot_and_json(tmp_path, capsys):
    out = tmp_path / "syn.pt.gz"
    rc = main(["trace", "gen", str(out), "--tables", "3", "--rows", "5000,200,70000", "--samples", "2000",
               "--alpha", "1.1", "--pooling", "uniform:1,9", "--coaccess", "8,3,0.2", "--drift", "500,10", "--seed", "3"])
    assert rc == 0
    tr = load_trace(out)
    assert tr.nr_tables == 3 and tr.batch_size == 2000 and tr.table_rows == [5000, 200, 70000]
    assert tr.lengths().min() >= 1 and tr.lengths().max() <= 9
    plot, js = tmp_path / "cdf.png", tmp_path / "stats.json"
    rc = main(["trace", "stats", str(out), "--plot", str(plot), "--json", str(js), "--tables", "0,t2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "top0.1%" in text and "t2" in text and "70,000" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads(js.read_text())
    assert [s["name"] for s in stats] == ["t0", "t2"]
    counts = np.bincount(tr.table(0)[0], minlength=5000)
    assert stats[0]["touched"] == int(np.count_nonzero(counts))
    # profile pooling taken from the trace just written
    rc = main(["trace", "gen", str(tmp_path / "p.pt"), "--tables", "2", "--rows", "100", "--samples", "3000",
               "--pooling", f"profile:{out}:0"])
    assert rc == 0
    lens = load_trace(tmp_path / "p.pt").lengths()
    assert lens.min() >= 1 and lens.max() <= 9


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["trace", "stats", str(tmp_path / "missing.pt")]) == 2
    assert main(["trace", "gen", str(tmp_path / "x.pt"), "--tables", "2", "--rows", "1,2,3"]) == 2
    assert main(["trace", "gen", str(tmp_path / "x.pt"), "--pooling", "poisson:3"]) == 2
    err = capsys.readouterr().err
    assert "--rows: give one value or 2" in err and "--pooling must be" in err
