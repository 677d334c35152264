"""Pipelined PIM embedding layer vs the cpu backend, at system scale, with a stage timeline.

For one model (default: full Criteo Kaggle tables, cache_aware, int32, 2,560 emulated DPUs) and
each batch size, on the same Zipf batches:

* **cpu**: the cpu backend's embedding layer (torch EmbeddingBag), median seconds per batch,
  measured.
* **pim, emulator, pipelined** (all measured): ``PimEmbedding.lookup_many`` with two batches in
  flight on the emulator; batches per second of wall time. The emulator's kernel wall time is
  not a DPU latency: this line says what this machine does, not what DPUs would.
* **pim, system** (host measured, DPU side modeled): per batch, the host stage is pack + merge,
  measured batch by batch with the DPUs idle (on this 2-core machine the emulator's kernel
  threads would otherwise compete with the host work, which real DPUs do not), and the DPU stage
  is CPU->DPU + launch + kernel + DPU->CPU from the UPMEM timing model on the emulator's exact
  counters. With two batches in flight the period is the larger of the two; the script names
  the stage that bounds it and the ratio against cpu.

Prints and saves everything with the machine's load average, and draws the timeline of one run
(pack / DPU / merge per batch) to ``--plot``.

Run (about 5 minutes, ~7 GiB at full Kaggle)::

    .venv/bin/python benchmarks/pipeline.py --json benchmarks/results/pipeline.json \\
        --plot benchmarks/results/pipeline_timeline.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

import updlrm
from updlrm.batch import random_batch
from updlrm.bench import machine_info
from updlrm.partition.profile import profile_trace
from updlrm.timing_model import TimingModel, counters_from_dict

MODELED = ("cpu_to_dpu", "launch", "kernel", "dpu_to_cpu")


def _modeled_dpu_s(model: TimingModel, topology, stats) -> dict:
    kernels, transfers = counters_from_dict(stats.counters)
    mb = model.model_batch(topology, kernels, transfers)
    return {p.name: p.seconds for p in mb.phases}


def plot_timeline(events, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(e[2] for e in events)
    colors = {"pack": "tab:blue", "dpu": "tab:orange", "merge": "tab:green"}
    rows = {"pack": 2, "dpu": 1, "merge": 0}
    fig, ax = plt.subplots(figsize=(10, 2.8))
    for b, st, a, e in events:
        if st not in rows:
            continue
        ax.broken_barh([((a - t0) * 1e3, (e - a) * 1e3)], (rows[st] - 0.4, 0.8), color=colors[st], alpha=0.85)
        ax.text((a - t0) * 1e3 + (e - a) * 5e2, rows[st], str(b), ha="center", va="center", fontsize=7, color="white")
    ax.set_yticks([0, 1, 2])
    ax.set_yticklabels(["merge (host)", "DPUs (emulator)", "pack (host)"])
    ax.set_xlabel("ms since the first batch was packed (measured, emulator)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="kaggle")
    ap.add_argument("--row-scale", type=float, default=1.0)
    ap.add_argument("--dpus", type=int, default=2560)
    ap.add_argument("--strategy", default="cache_aware")
    ap.add_argument("--dtype", default="int32")
    ap.add_argument("--batch-sizes", default="1024,4096")
    ap.add_argument("--batches", type=int, default=8, help="batches per pipelined run (the first is a warm-up)")
    ap.add_argument("--pooling", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=1.05)
    ap.add_argument("--json")
    ap.add_argument("--plot", help="timeline PNG of the last batch size's pipelined run")
    args = ap.parse_args(argv)

    cfg = updlrm.configs.get(args.config, row_scale=args.row_scale)
    print(f"{cfg.name}: {cfg.nr_tables} tables, {cfg.total_rows:,} rows x {cfg.embedding_dim}; {args.dpus} DPUs, "
          f"{args.strategy}, {args.dtype}; pooling {args.pooling}, Zipf {args.alpha}; load average {os.getloadavg()}",
          flush=True)
    t0 = time.perf_counter()
    model = updlrm.DLRM(cfg)
    prof_batch = random_batch(cfg, 8192, pooling=args.pooling, alpha=args.alpha, seed=10_000)
    profile = profile_trace(prof_batch, list(cfg.tables), source="random_batch seed 10000")
    cpu = updlrm.Engine(model, backend="cpu")
    pim = updlrm.Engine(model, backend="pim", nr_dpus=args.dpus, strategy=args.strategy, dtype=args.dtype,
                        profile=profile)
    print(f"model + engines ready in {time.perf_counter() - t0:.1f} s", flush=True)
    tm = TimingModel.default()
    topo = pim.plan.topology
    emb = pim.backend.pim
    rows = []
    events = None
    try:
        for B in [int(x) for x in args.batch_sizes.split(",")]:
            batches = [random_batch(cfg, B, pooling=args.pooling, alpha=args.alpha, seed=s) for s in range(args.batches)]
            n = int(batches[0].nr_lookups)
            # cpu backend: embedding layer per batch (first is a warm-up)
            cpu_s = []
            for i, b in enumerate(batches):
                t1 = time.perf_counter()
                cpu.embed(b)
                if i:
                    cpu_s.append(time.perf_counter() - t1)
            # pim, batch by batch: host pack and merge measured with the DPUs idle, DPU side modeled
            seq_host, modeled = [], []
            for i, b in enumerate(batches):
                emb.lookup_flat(b.indices.numpy(), b.offsets.numpy(), B)
                st = emb.last_stats
                if i:
                    seq_host.append(st.get("pack").seconds + st.get("merge").seconds)
                    modeled.append(_modeled_dpu_s(tm, topo, st))
            # pim on the emulator, two batches in flight
            raw = [(b.indices.numpy(), b.offsets.numpy(), B) for b in batches]
            host_s, dpu_s = [], []
            t1 = time.perf_counter()
            outs = list(emb.lookup_many(raw))
            wall = time.perf_counter() - t1
            tl = emb.timeline
            per = {}
            for b_, stage, a, e in tl.events:
                per.setdefault(b_, {}).setdefault(stage, 0.0)
                per[b_][stage] += e - a
            for b_ in sorted(per)[1:]:
                host_s.append(per[b_].get("pack", 0.0) + per[b_].get("merge", 0.0))
                dpu_s.append(per[b_].get("dpu", 0.0))
            # the last result against the cpu backend (the pipeline gives the same sums)
            want = cpu.embed(batches[-1]).reshape(B, -1).numpy()
            err = float(np.max(np.abs(outs[-1] - want)))
            dpu_model = [sum(m.get(k, 0.0) for k in MODELED) for m in modeled]
            H, Dm = float(np.median(seq_host)), float(np.median(dpu_model))
            period = max(H, Dm)
            C = float(np.median(cpu_s))
            rec = {
                "batch_size": B, "lookups": n, "load_average": os.getloadavg()[0],
                "cpu_embed_ms": C * 1e3,
                "pim_emulator_pipelined_ms_per_batch": wall / len(batches) * 1e3,
                "pim_emulator_vs_cpu_throughput": C / (wall / len(batches)),
                "host_pack_merge_ms": H * 1e3, "host_ns_per_lookup": H / n * 1e9,
                "dpu_modeled_ms": Dm * 1e3,
                "dpu_modeled_phases_ms": {k: float(np.median([m.get(k, 0.0) for m in modeled])) * 1e3 for k in MODELED},
                "emulator_dpu_stage_ms": float(np.median(dpu_s)) * 1e3,
                "pipelined_host_pack_merge_ms": float(np.median(host_s)) * 1e3,  # contended by the emulator
                "system_period_ms": period * 1e3, "bound_by": "host pack+merge" if H >= Dm else "DPU side (modeled)",
                "system_vs_cpu_throughput": C / period,
                "max_abs_diff_vs_cpu": err,
            }
            rows.append(rec)
            events = tl.events
            print(f"B={B:5d}: cpu {C * 1e3:7.2f} ms | pim system: host {H * 1e3:6.2f} ms ({H / n * 1e9:.1f} ns/lookup, "
                  f"measured) vs DPUs {Dm * 1e3:6.2f} ms (modeled) -> {period * 1e3:6.2f} ms/batch, bound by "
                  f"{rec['bound_by']}, {C / period:.2f}x cpu throughput | emulator pipelined {wall / len(batches) * 1e3:7.1f}"
                  f" ms/batch ({C / (wall / len(batches)):.3f}x cpu, measured) | max|pim-cpu| {err:.2e} | load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
    finally:
        pim.close()
        cpu.close()
    if args.plot and events:
        plot_timeline(events, args.plot, f"pipelined PIM batches: {cfg.name}, {args.dpus} DPUs {args.strategy} "
                                         f"{args.dtype}, B={rows[-1]['batch_size']} (emulator, measured)")
        print(f"wrote {args.plot}")
    result = {"machine": machine_info(), "config": cfg.name, "row_scale": args.row_scale, "nr_dpus": args.dpus,
              "strategy": args.strategy, "dtype": args.dtype, "pooling": args.pooling, "alpha": args.alpha,
              "batches": args.batches, "rows": rows}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
