"""Benchmark of the partitioner's targets: every partitioning strategy side by side on a Kaggle-shaped
model (26 Criteo Kaggle tables, full size, dim 16), Zipf alpha 1.05, batch 2,048, pooling 20,
2,048 DPUs. Plans are profiled on trace A and evaluated on held-out trace B (same distribution,
disjoint samples). Targets: cache_aware imbalance <= 1.15 and estimated latency >= 2x better than
row_uniform.

Also measured: how long planning and evaluation take (median over --repeats), both latency
models (updlrm.timing_model and the simple lookups x row bytes model), and - to justify
popularity_balanced's weighted row ranges - a plug-in alternative defined in this file,
``popularity_rows``, which deals rows one by one in frequency order ("snake" order, the
vectorized form of LPT for equal-size rows) as explicit row sets; and cache_aware's base-range
dealing (``table_order`` on/off) under the PIM packer's replica choice (Router order
"base_first", the estimator's default) and under the packer's pre-d5d8e66 table-by-table order
(Router order "table"). Latencies are modeled (cost estimator), not measured on DPUs.

    .venv/bin/python benchmarks/partition_strategies.py            # writes benchmarks/results/partition/partition_results.{json,md,png}
    .venv/bin/python benchmarks/partition_strategies.py --quick    # 1/100 rows, 256 DPUs (smoke run)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from updlrm.partition import Placement, RowGroup, Shard, Strategy, Topology, make_plan, register_strategy, save_plan
from updlrm.partition.cost import CostEstimator, SimpleLatency
from updlrm.partition.lab import compare, format_reports, kaggle_tables, machine_info, zipf_workload
from updlrm.partition.popularity import smoothed_load

HERE = Path(__file__).resolve().parent


@register_strategy
class PopularityRows(Strategy):
    """Rows dealt one by one in decreasing profiled frequency, snake order over the DPUs
    (0..N-1, N-1..0, ...): each DPU gets one row set per table. Vectorized; plan holds every row id."""

    name = "popularity_rows"
    needs_profile = True

    def place(self, tables, topology, budget, profile=None):
        n = topology.nr_dpus
        groups, shards = [], []
        for t, spec in enumerate(tables):
            load = smoothed_load(profile.counts[t], 0.1)
            order = np.argsort(-load, kind="stable")
            k = np.arange(spec.rows)
            lap, pos = np.divmod(k, n)
            dpu_of_rank = np.where(lap % 2 == 0, pos, n - 1 - pos)
            start = (t * 7919) % n  # rotate so that tables do not all start on DPU 0
            dpu = (dpu_of_rank + start) % n
            by = np.argsort(dpu, kind="stable")
            rows_by_dpu = order[by]
            d_sorted = dpu[by]
            cuts = np.flatnonzero(np.diff(d_sorted)) + 1
            for rows, d in zip(np.split(rows_by_dpu, cuts), d_sorted[np.r_[0, cuts]].tolist()):
                gi = len(groups)
                groups.append(RowGroup(table=t, rows=np.sort(rows)))
                shards.append(Shard(table=t, group=gi, replica=0, dpu=int(d), col_lo=0, col_hi=spec.dim))
        return Placement(groups, shards, {})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1/100 of the rows on 256 DPUs")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (median reported)")
    ap.add_argument("--out", default=str(HERE / "results" / "partition" / "partition_results"), help="output prefix")
    ap.add_argument("--ablation", action="store_true",
                    help="instead: the 7 Kaggle tables with >= 100k rows (no tiny hot tables), alpha 0.6 and 0.9, "
                         "weighted ranges vs rows dealt one by one, cache_aware with and without min_cached_share "
                         "and table_order -> partition_ablation.json")
    args = ap.parse_args(argv)
    if args.ablation:
        return ablation(HERE / "results" / "partition" / "partition_ablation.json")

    scale, dpus = (0.01, 256) if args.quick else (1.0, 2048)
    cfg = {"model": "Criteo Kaggle (26 tables, dim 16)", "row_scale": scale, "nr_dpus": dpus, "alpha": 1.05,
           "batch_size": 2048, "pooling": 20, "profile_batches": 8, "eval_batches": 4, "seed": 0}
    tables = kaggle_tables(scale)
    t0 = time.perf_counter()
    wl = zipf_workload(tables, cfg["alpha"], cfg["pooling"], cfg["batch_size"], cfg["profile_batches"],
                       cfg["eval_batches"], cfg["seed"])
    gen_s = time.perf_counter() - t0
    topo = Topology(nr_dpus=dpus)
    strategies = ["row_uniform", "table_wise", "column_wise", "tile_uniform", "popularity_balanced",
                  "popularity_rows", "cache_aware"]
    options = {"table_wise": {"split_oversized": True}}
    results = {}
    for name, est in (("timing_model", CostEstimator()), ("simple", CostEstimator(SimpleLatency()))):
        rows = compare(tables, topo, wl, cfg["batch_size"], strategies, est, options)
        tuned = compare(tables, topo, wl, cfg["batch_size"], ["cache_aware"], est,
                        {"cache_aware": {"tune": True, "tune_batch_size": cfg["batch_size"]}})[0]
        tuned["strategy"] = "cache_aware(tune=True)"
        if not tuned.get("error"):
            tuned["speedup_vs_row_uniform"] = rows[0]["latency_us"] / tuned["latency_us"]
        rows.append(tuned)
        results[name] = rows
        print(f"\n== latency model: {rows[0].get('latency_model', name)}")
        print(format_reports(rows))
    # design choices at this setting: base-range dealing (table_order) under the packer's
    # base-first replica choice, and both under the packer's old table-by-table order
    choices = []
    for router in ("base_first", "table"):
        for label, opts in (("cache_aware", {}), ("cache_aware(table_order=False)", {"table_order": False})):
            r = compare(tables, topo, wl, cfg["batch_size"], ["cache_aware"], CostEstimator(order=router),
                        {"cache_aware": opts})[0]
            r["strategy"] = f"{label} [router {router}]"
            r["router_order"] = router
            if not r.get("error"):
                r["speedup_vs_row_uniform"] = results["timing_model"][0]["latency_us"] / r["latency_us"]
            choices.append(r)
    results["choices"] = choices
    print("\n== cache_aware base-range dealing x packer replica order (timing model)")
    print(format_reports(choices))
    # timing of planning and evaluation: median over repeats
    est = CostEstimator()
    timing = {}
    for s in strategies:
        plan_s, eval_s = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            try:
                plan = make_plan(tables, topo, s, profile=wl.profile, **options.get(s, {}))
            except ValueError:
                break
            t1 = time.perf_counter()
            est.evaluate(plan, wl.eval_trace, cfg["batch_size"], profile=wl.profile)
            eval_s.append(time.perf_counter() - t1)
            plan_s.append(t1 - t0)
        if plan_s:
            with tempfile.TemporaryDirectory() as d:
                f = Path(d) / "plan.json"
                save_plan(plan, f)
                size = sum(p.stat().st_size for p in Path(d).iterdir())
            timing[s] = {"plan_s_median": statistics.median(plan_s), "eval_s_median": statistics.median(eval_s),
                         "eval_batches": cfg["eval_batches"], "plan_file_bytes": size}
    tm = {r["strategy"]: r for r in results["timing_model"]}
    ca, ru = tm["cache_aware"], tm["row_uniform"]
    tuned = tm["cache_aware(tune=True)"]
    verdict = {
        "tuned_cache_aware_imbalance": tuned.get("imbalance"),
        "tuned_cache_aware_speedup_vs_row_uniform": ru["latency_us"] / tuned["latency_us"] if tuned.get("latency_us") else None,
        "cache_aware_imbalance": ca["imbalance"],
        "imbalance_target_met": ca["imbalance"] <= 1.15,
        "cache_aware_speedup_vs_row_uniform": ru["latency_us"] / ca["latency_us"],
        "latency_target_met": ru["latency_us"] / ca["latency_us"] >= 2.0,
    }
    out = {"config": cfg, "machine": machine_info(), "trace_generation_s": gen_s, "results": results,
           "timing": timing, "verdict": verdict, "profile": wl.profile.summary()}
    Path(args.out + ".json").write_text(json.dumps(out, indent=1, default=str))
    plot(results["timing_model"], args.out + ".png", cfg)
    print("\ntiming (median of", args.repeats, "):", json.dumps(timing, indent=1))
    print("verdict:", json.dumps(verdict))
    return 0


def ablation(path) -> int:
    """Design choices measured where single hot rows do not dominate: big tables only."""
    tables = [t for t in kaggle_tables(1.0) if t.rows >= 100_000]
    topo = Topology(nr_dpus=2048)
    variants = {"cache_aware": {}, "cache_aware(min_cached_share=0)": {"min_cached_share": 0.0},
                "cache_aware(table_order=False)": {"table_order": False},
                "cache_aware(table_order=False, min_cached_share=0)": {"table_order": False, "min_cached_share": 0.0}}
    out = {"config": {"tables": [t.name for t in tables], "nr_dpus": 2048, "batch_size": 2048, "pooling": 20,
                      "profile_batches": 8, "eval_batches": 2}, "machine": machine_info(), "results": {}}
    for alpha in (0.6, 0.9):
        wl = zipf_workload(tables, alpha, 20, 2048, 8, 2, seed=0)
        rows = compare(tables, topo, wl, 2048, ["row_uniform", "popularity_balanced", "popularity_rows"], CostEstimator())
        for label, opts in variants.items():
            r = compare(tables, topo, wl, 2048, ["cache_aware"], CostEstimator(), {"cache_aware": opts})[0]
            r["strategy"] = label
            rows.append(r)
        print(f"\n== alpha {alpha}")
        print(format_reports(rows))
        out["results"][str(alpha)] = rows
    Path(path).write_text(json.dumps(out, indent=1, default=str))
    return 0


def plot(rows, path, cfg):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    names = [r["strategy"] for r in ok]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    names = [n.replace("(tune=True)", "\n(tuned)") for n in names]
    axes[0].bar(names, [r["imbalance"] for r in ok], color="tab:blue")
    axes[0].axhline(1.15, color="red", ls="--", lw=1, label="target 1.15")
    axes[0].set_yscale("log")
    axes[0].set_title("imbalance (max/mean lookups per DPU)")
    axes[0].legend()
    lat = np.array([[r["cpu_to_dpu_us"], r["kernel_us"], r["dpu_to_cpu_us"]] for r in ok]) / 1e3
    bottom = np.zeros(len(ok))
    for i, lab in enumerate(["CPU->DPU", "kernel", "DPU->CPU"]):
        axes[1].bar(names, lat[:, i], bottom=bottom, label=lab)
        bottom += lat[:, i]
    axes[1].set_title("estimated batch latency (ms, modeled)")
    axes[1].legend()
    axes[2].bar(names, [r["output_bytes_padded"] / 2**20 for r in ok], label="results (padded)")
    axes[2].bar(names, [r["output_bytes_useful"] / 2**20 for r in ok], label="results (useful)", alpha=0.7)
    axes[2].set_title("DPU->CPU MiB per batch")
    axes[2].legend()
    for ax in axes:
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.suptitle(f"{cfg['model']} x{cfg['row_scale']}, {cfg['nr_dpus']} DPUs, batch {cfg['batch_size']}, "
                 f"pooling {cfg['pooling']}, Zipf {cfg['alpha']} (held-out trace B)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
