"""Two-level (host, then DPU) plans: planning, validation, the plan file, routing and costs.

References: torch EmbeddingBag sums over the full tables (routing must reproduce them from the
shards' partial sums), the trace's own lookup counts, and the plan's own shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from updlrm.cli import main
from updlrm.partition import PlanDoesNotFitError, PlanError, TableSpec
from updlrm.partition.hosts import (ELEM_BYTES, HostRouter, NetworkModel, evaluate_host_plan, host_request,
                                    load_host_plan, make_host_plan, rotation_hosts, save_host_plan,
                                    uniform_host_cost, validate_host_plan)
from updlrm.partition.lab import kaggle_tables, zipf_workload

TABLES = [TableSpec("A", 1000, 8), TableSpec("B", 60, 8), TableSpec("C", 3000, 8), TableSpec("D", 7, 8)]


@pytest.fixture(scope="module")
def workload():
    return zipf_workload(TABLES, alpha=1.05, pooling=4, batch_size=64, profile_batches=4, eval_batches=2)


def _split_plan(workload, hosts=3, replicas=2, hot_rows=10, strategy="row_uniform"):
    return make_host_plan(TABLES, hosts, 4, replicas, profile=workload.profile, hot_rows=hot_rows, split_share=0.3,
                          dpu_strategy=strategy)


def test_plan_covers_rows_and_spreads_replicas(workload):
    plan = _split_plan(workload)
    for t, spec in enumerate(TABLES):
        js = plan.table_shards(t)
        covered = np.concatenate([np.arange(plan.shards[j].row_lo, plan.shards[j].row_hi) for j in js])
        assert np.array_equal(covered, np.arange(spec.rows))
    assert len(plan.table_shards(2)) > 1  # the big table is split
    for s in plan.shards:
        assert len(set(s.hosts)) == 2 and all(0 <= h < 3 for h in s.hosts)
    # hot rows ride along only on split tables big enough to have them (D has 7 rows < 2 x 10)
    assert all(s.hot_rows is None for s in plan.shards if s.table == 3)
    assert plan.shards[plan.table_shards(2)[0]].nr_hot == 10
    # every host has a DPU plan over exactly its shards' tables
    for h in range(3):
        assert [t.rows for t in plan.host_plans[h].tables] == [t.rows for t in plan.host_tables(h)]


def test_router_partials_sum_to_embedding_bag(workload):
    plan = _split_plan(workload)
    router = HostRouter(plan)
    rng = np.random.default_rng(0)
    weights = [torch.from_numpy(rng.standard_normal((t.rows, t.dim))) for t in TABLES]  # float64: exact sums
    for idx, off, b in workload.eval_trace.batches(64):
        routed = router.route(idx, off, b)
        for t in range(len(TABLES)):
            o = off[t * b:(t + 1) * b + 1]
            ref = torch.nn.functional.embedding_bag(torch.from_numpy(idx[o[0]:o[-1]]), weights[t],
                                                    torch.from_numpy(o[:-1] - o[0]), mode="sum")
            got = torch.zeros_like(ref)
            for j in plan.table_shards(t):
                s, sb = plan.shards[j], routed[j]
                local_w = weights[t][torch.from_numpy(s.local_rows())]
                got += torch.nn.functional.embedding_bag(torch.from_numpy(sb.indices), local_w,
                                                         torch.from_numpy(sb.offsets[:-1]), mode="sum")
                assert sb.indices.size == 0 or sb.indices.max() < s.nr_local_rows
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_hot_lookups_follow_their_bag(workload):
    """A bag's hot lookups go to the range of its first cold lookup: no extra partial sum."""
    plan = _split_plan(workload, hot_rows=10)
    idx, off, b = next(workload.eval_trace.batches(64))
    routed = HostRouter(plan).route(idx, off, b)
    js = plan.table_shards(2)
    hot = plan.shards[js[0]].hot_rows
    o = off[2 * b:3 * b + 1]
    ids = idx[o[0]:o[-1]]
    bag = np.repeat(np.arange(b), np.diff(o))
    cold = ~np.isin(ids, hot)
    bounds = np.array([plan.shards[j].row_lo for j in js])
    cold_ranges = np.zeros(b, dtype=int)  # distinct ranges among each bag's cold lookups
    for i in range(len(js)):
        cold_ranges += np.bincount(bag[cold & (np.searchsorted(bounds, ids, side="right") - 1 == i)], minlength=b) > 0
    touched = sum((np.diff(routed[j].offsets) > 0).astype(int) for j in js)
    has_cold = cold_ranges > 0
    assert has_cold.any() and (~has_cold).any()  # both kinds of bag occur
    assert np.array_equal(touched[has_cold], cold_ranges[has_cold])
    assert (touched[~has_cold & (np.diff(o) > 0)] == 1).all()  # an all-hot bag goes to one range


def test_rotation_and_failover_choice(workload):
    plan = _split_plan(workload)
    a = rotation_hosts(plan, 0)
    b = rotation_hosts(plan, 1)
    assert all(x in s.hosts for x, s in zip(a, plan.shards)) and a != b  # copies take turns
    down = plan.shards[0].hosts[0]
    alive = [h != down for h in range(plan.nr_hosts)]
    for n in range(4):
        chosen = rotation_hosts(plan, n, alive)
        assert down not in chosen and -1 not in chosen
    r1 = make_host_plan(TABLES, 2, 4, 1, dpu_strategy=None)
    lost = rotation_hosts(r1, 0, [False, True])
    assert -1 in lost and all((h == -1) == (s.hosts == (0,)) for h, s in zip(lost, r1.shards))


def test_save_load_round_trip(tmp_path, workload):
    plan = _split_plan(workload, strategy="cache_aware")
    f = tmp_path / "hosts.json"
    save_host_plan(plan, f)
    back = load_host_plan(f)
    assert [(s.table, s.row_lo, s.row_hi, s.hosts) for s in back.shards] == [
        (s.table, s.row_lo, s.row_hi, s.hosts) for s in plan.shards]
    for s, t in zip(plan.shards, back.shards):
        assert (s.hot_rows is None and t.hot_rows is None) or np.array_equal(s.hot_rows, t.hot_rows)
    for hp, hb in zip(plan.host_plans, back.host_plans):
        assert len(hp.shards) == len(hb.shards) and hp.strategy == hb.strategy
        for g, g2 in zip(hp.groups, hb.groups):
            assert np.array_equal(g.global_rows(), g2.global_rows())
    # a corrupted file is refused with a message naming what is wrong
    doc = json.loads(f.read_text())
    doc["shards"][0]["hosts"] = [0, 0]
    f.write_text(json.dumps(doc))
    with pytest.raises(PlanError, match="distinct"):
        load_host_plan(f)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(PlanError, match="not an updlrm host plan"):
        load_host_plan(tmp_path / "x.json")


def test_validation_errors(workload):
    plan = _split_plan(workload)
    with pytest.raises(PlanError, match="has 4 tables|made for 4 tables"):
        validate_host_plan(plan, TABLES[:3])
    s = plan.shards[plan.table_shards(2)[1]]
    s.row_lo += 1
    with pytest.raises(PlanError, match="expected a range starting at"):
        validate_host_plan(plan)
    s.row_lo -= 1
    with pytest.raises(PlanError, match="replicas must be in"):
        make_host_plan(TABLES, 2, 4, 3)
    with pytest.raises(PlanError, match="needs an access profile"):
        make_host_plan(TABLES, 2, 4, hot_rows=5)


def test_does_not_fit_names_shortfall():
    big = [TableSpec("big", 3_000_000, 64)]  # 768 MB; 2 hosts x 4 DPUs hold ~450 MB
    with pytest.raises(PlanDoesNotFitError, match="short") as exc:
        make_host_plan(big, 2, 4, 1)
    assert exc.value.shortfall_bytes > 0


def test_evaluate_counts_every_lookup_once(workload):
    plan = _split_plan(workload)
    net = NetworkModel(bytes_per_s=1e9, rtt_us=20.0, source="test")
    rep = evaluate_host_plan(plan, workload.eval_trace, 64, network=net)
    idx, off, b = next(workload.eval_trace.batches(64))
    assert rep["batches"] == 2
    assert sum(h["lookups"] for h in rep["hosts"]) == pytest.approx(idx.size, rel=0.01)
    # every shard is served by exactly one host per batch; each returns [B, served, d] float32
    assert sum(h["served"] for h in rep["hosts"]) == pytest.approx(len(plan.shards))
    for h in rep["hosts"]:
        assert h["response_bytes"] == pytest.approx(h["served"] * 64 * 8 * ELEM_BYTES)
        assert h["network_us"] >= net.rtt_us
    assert rep["latency_us"] >= max(h["total_us"] for h in rep["hosts"]) * 0.5


def test_uniform_cost_full_kaggle():
    tables = kaggle_tables()
    plan = make_host_plan(tables, 4, 256, 2)
    rep = uniform_host_cost(plan, 2048, pooling=20)
    assert sum(h["lookups"] for h in rep["hosts"]) == pytest.approx(2048 * 20 * 26)
    assert sum(h["table_bytes"] for h in rep["hosts"]) == 2 * sum(t.rows * 64 for t in tables)
    one = uniform_host_cost(make_host_plan(tables, 1, 256, 1), 2048, pooling=20)
    assert rep["latency_us"] < one["latency_us"]  # 4 hosts (each shard on 2) beat one host of the same size


def test_request_layout(workload):
    plan = _split_plan(workload)
    idx, off, b = next(workload.eval_trace.batches(64))
    routed = HostRouter(plan).route(idx, off, b)
    chosen = rotation_hosts(plan, 0)
    for h in range(plan.nr_hosts):
        ids, o, served = host_request(plan, h, routed, chosen, b)
        local = plan.shards_on(h)
        assert o.size == len(local) * b + 1 and o[-1] == ids.size
        for i, j in enumerate(local):
            n = int(o[(i + 1) * b] - o[i * b])
            assert n == (routed[j].indices.size if i in served else 0)


def test_cli_hosts(tmp_path, capsys):
    f = tmp_path / "hp.json"
    rc = main(["partition", "--row-scale", "0.0005", "--hosts", "2", "--dpus-per-host", "8", "--replicas", "2",
               "--batch-size", "128", "--profile-batches", "2", "--eval-batches", "1", "--net-gbps", "25",
               "--save-plan", str(f)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "returned KB" in out and "network us" in out and "25 Gb/s" in out and "set on the command line" in out
    plan = load_host_plan(f)
    assert plan.nr_hosts == 2 and plan.replicas == 2 and plan.dpus_per_host == 8
    rc = main(["partition", "--row-scale", "0.0005", "--hosts", "3", "--replicas", "4", "--uniform"])
    assert rc == 1 and "replicas must be in" in capsys.readouterr().err
