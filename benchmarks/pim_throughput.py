"""Throughput of the emulated PIM embedding path vs torch.nn.EmbeddingBag, same batches, same run.

Kaggle-shaped batch: B=2048, 26 tables (Criteo Kaggle row counts capped at --row-cap so the
tables fit this machine), pooling 20, Zipf(1.05) ids, dims 16 and 64. For each dim it reports
(medians over --repeats):

* torch: 26 EmbeddingBag(mode="sum") calls, lookups/s, timed with torch's default threads and with
  one thread; the faster of the two is the baseline (a busy shared machine hurts multi-threaded
  torch most);
* pim: PimEmbedding.lookup end to end on the emulator (map + pack, transfers, emulated kernel,
  merge), lookups/s, and the ratio pim / torch (target >= 0.5);
* pack + merge (host work of the PIM path) vs the EmbeddingBag time (target <= 0.5x).

Run:  .venv/bin/python benchmarks/pim_throughput.py [--dims 16 64] [--nr-dpus 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from updlrm.partition import TableSpec, Topology, make_plan
from updlrm.pim import PimEmbedding

KAGGLE_ROWS = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
               5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def zipf_batch(rng, rows, batch_size, pooling, alpha):
    """Table-major indices/offsets, every bag `pooling` long, Zipf(alpha) ids permuted per table."""
    parts = []
    for r in rows:
        ranks = rng.zipf(alpha, size=batch_size * pooling) - 1
        perm = rng.permutation(r)
        parts.append(perm[ranks % r])
    idx = np.concatenate(parts).astype(np.int64)
    offs = np.arange(len(rows) * batch_size + 1, dtype=np.int64) * pooling
    return idx, offs


def run(dim, strategy, args):
    rng = np.random.default_rng(0)
    rows = [min(r, args.row_cap) for r in KAGGLE_ROWS]
    weights = [rng.uniform(-0.05, 0.05, size=(r, dim)).astype(np.float32) for r in rows]
    tables = [TableSpec(f"C{t + 1}", r, dim) for t, r in enumerate(rows)]
    plan = make_plan(tables, Topology(nr_dpus=args.nr_dpus, nr_tasklets=args.nr_tasklets), strategy)
    B, P = args.batch_size, args.pooling
    batches = [zipf_batch(rng, rows, B, P, args.alpha) for _ in range(args.repeats)]
    n = batches[0][0].size

    bags = [torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(w), mode="sum") for w in weights]
    torch_batches = []
    for idx, offs in batches:
        per = []
        for t in range(len(rows)):
            a = offs[t * B]
            per.append((torch.from_numpy(idx[a : offs[(t + 1) * B]]), torch.from_numpy(offs[t * B : (t + 1) * B] - a)))
        torch_batches.append(per)

    def torch_lookup(per):
        with torch.inference_mode():
            return [bag(i, o) for bag, (i, o) in zip(bags, per)]

    pim = PimEmbedding(weights, plan, dtype=args.dtype)
    try:
        torch_lookup(torch_batches[0])  # warm-ups
        out = pim.lookup(*batches[0], B)  # + correctness spot check
        ref = np.stack([o.numpy() for o in torch_lookup(torch_batches[0])], axis=1)
        max_err = float(np.abs(out - ref).max())
        # Interleaved (torch, pim) per repeat so that both see the same machine load.
        phases = {name: [] for name in ("pack", "cpu_to_dpu", "kernel", "dpu_to_cpu", "merge")}
        t_torch_all, t_torch1_all, t_pim_all = [], [], []
        threads = torch.get_num_threads()
        for i, (idx, offs) in enumerate(batches):
            t0 = time.perf_counter()
            torch_lookup(torch_batches[i])
            t1 = time.perf_counter()
            torch.set_num_threads(1)  # single-threaded torch too: fairer on a shared, busy machine
            try:
                torch_lookup(torch_batches[i])
            finally:
                torch.set_num_threads(threads)
            t2 = time.perf_counter()
            pim.lookup(idx, offs, B)
            t3 = time.perf_counter()
            t_torch_all.append(t1 - t0)
            t_torch1_all.append(t2 - t1)
            t_pim_all.append(t3 - t2)
            for p in pim.last_stats.phases:
                phases[p.name].append(p.seconds)
        # the baseline is the faster torch configuration (conservative for the PIM ratios)
        t_torch_threads = statistics.median(t_torch_all)
        t_torch_1 = statistics.median(t_torch1_all)
        t_torch = min(t_torch_threads, t_torch_1)
        t_pim = statistics.median(t_pim_all)
        med = {k: statistics.median(v) for k, v in phases.items()}
        launches = int(pim.last_stats.counters["nr_launches"])
        bags_per_batch = int(pim.last_stats.counters["bags"].sum())
    finally:
        pim.close()
    pack_merge = med["pack"] + med["merge"]
    return {
        "dim": dim,
        "strategy": strategy,
        "lookups_per_batch": n,
        "torch_embeddingbag_s": t_torch,
        "torch_embeddingbag_all_threads_s": t_torch_threads,
        "torch_embeddingbag_1_thread_s": t_torch_1,
        "pim_total_s": t_pim,
        "torch_lookups_per_s": n / t_torch,
        "pim_lookups_per_s": n / t_pim,
        "pim_over_torch_throughput": t_torch / t_pim,
        "phases_median_s": med,
        "pack_plus_merge_s": pack_merge,
        "pack_merge_over_embeddingbag": pack_merge / t_torch,
        "launches_per_batch": launches,
        "dpu_bags_per_batch": bags_per_batch,
        "max_abs_err_vs_torch": max_err,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--pooling", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=1.05)
    ap.add_argument("--row-cap", type=int, default=50_000, help="rows per table at most (Kaggle rows capped)")
    ap.add_argument("--nr-dpus", type=int, default=64)
    ap.add_argument("--nr-tasklets", type=int, default=16)
    ap.add_argument("--strategies", nargs="+", default=["table_wise", "row_uniform"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "int32"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores_visible": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "load_average_1min_at_start": os.getloadavg()[0],
    }
    results = {"machine": machine, "config": vars(args), "runs": [run(d, s, args) for d in args.dims for s in args.strategies]}
    print(f"machine: {machine}")
    print(f"B={args.batch_size}, 26 tables (rows <= {args.row_cap}), pooling {args.pooling}, Zipf {args.alpha}, "
          f"{args.nr_dpus} emulated DPUs x {args.nr_tasklets} tasklets, {args.dtype}, "
          f"medians of {args.repeats}")
    for r in results["runs"]:
        ph = r["phases_median_s"]
        print(f"dim {r['dim']:3d} {r['strategy']:>11}: torch {r['torch_lookups_per_s'] / 1e6:7.1f} M lookups/s "
              f"({r['torch_embeddingbag_s'] * 1e3:.1f} ms) | pim {r['pim_lookups_per_s'] / 1e6:7.1f} M lookups/s "
              f"({r['pim_total_s'] * 1e3:.1f} ms) -> {r['pim_over_torch_throughput']:.2f}x torch | "
              f"pack {ph['pack'] * 1e3:.1f} ms + merge {ph['merge'] * 1e3:.1f} ms = "
              f"{r['pack_merge_over_embeddingbag']:.2f}x EmbeddingBag | c2d {ph['cpu_to_dpu'] * 1e3:.1f} ms, "
              f"kernel(emulator-wall) {ph['kernel'] * 1e3:.1f} ms, d2c {ph['dpu_to_cpu'] * 1e3:.1f} ms | "
              f"launches {r['launches_per_batch']}, DPU bags {r['dpu_bags_per_batch']} | max err {r['max_abs_err_vs_torch']:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
