"""Host runtime at system scale: native pack + merge per lookup vs torch EmbeddingBag, every strategy.

For full-size Criteo Kaggle tables (33.8M rows, dim 16) and each strategy x DPU count x batch
size, this script builds the plan, packs the same Zipf batches with the native packer
(``updlrm._native._emu.HostPacker``: PlanIndex, replica choice, request buffers) and merges them
(fused scatter-add + int32 -> fp32) from an output buffer of the right size, and times torch
EmbeddingBag (the cpu backend's lookups: 26 ``F.embedding_bag`` calls, sum pooling) on the same
batches in the same process. No DPU runs here: the pack and merge are the host work that runs
unchanged in front of real DPUs; the DPUs' part is modeled elsewhere (``updlrm bench``).

Reported per point: median ns per lookup of pack, merge, pack + merge over ``--repeats`` batches,
and the ratio (pack + merge) / EmbeddingBag on the same batches (< 1: the host spends less per
lookup than the CPU would spend doing the lookups itself). The load average is printed with
every run, as this 2-core machine is shared.

Run (about 10-20 minutes at the defaults; 2 GiB of tables + plans)::

    .venv/bin/python benchmarks/host_runtime.py --json benchmarks/results/host_runtime.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from updlrm import configs
from updlrm.batch import random_batch
from updlrm.bench import machine_info
from updlrm.partition import Topology, make_plan
from updlrm.partition.profile import profile_trace
from updlrm.pim import native
from updlrm.pim.layout import fixed_point_scales, plan_layout

ALL = ["table_wise", "row_uniform", "column_wise", "tile_uniform", "popularity_balanced", "cache_aware"]


def _spec(plan, dtype: str, weights_max: np.ndarray, max_bag: int = 4096) -> dict:
    lay = plan_layout(plan)
    if dtype == "int32":  # the PIM backend's per-table fixed-point scales
        col_scale = np.repeat(fixed_point_scales(None, max_bag, max_abs=weights_max), lay.dims)
    else:
        col_scale = np.zeros(0)
    return lay.native_spec(dtype, col_scale), lay.width


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="kaggle")
    ap.add_argument("--row-scale", type=float, default=1.0)
    ap.add_argument("--dpus", default="64,256,2560")
    ap.add_argument("--batch-sizes", default="256,1024,4096")
    ap.add_argument("--strategies", default=",".join(ALL))
    ap.add_argument("--dtype", default="int32", choices=["fp32", "int32"])
    ap.add_argument("--pooling", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=1.05)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args(argv)

    mod = native.native_module("emulator")
    cfg = configs.get(args.config, row_scale=args.row_scale)
    tables = list(cfg.tables)
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"{cfg.name}: {cfg.nr_tables} tables, {cfg.total_rows:,} rows x {cfg.embedding_dim}; pooling {args.pooling}, "
          f"Zipf {args.alpha}, dtype {args.dtype}; load average {os.getloadavg()}", flush=True)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    weights = [torch.from_numpy(rng.standard_normal((t.rows, t.dim), dtype=np.float32) * 0.01) for t in tables]
    wmax = np.array([float(w.abs().max()) for w in weights])
    print(f"weights built in {time.perf_counter() - t0:.1f} s", flush=True)
    profile_batch = random_batch(cfg, 8192, pooling=args.pooling, alpha=args.alpha, seed=10_000)
    profile = profile_trace(profile_batch, tables, source="random_batch seed 10000, 8192 samples")

    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    batches = {b: [random_batch(cfg, b, pooling=args.pooling, alpha=args.alpha, seed=s) for s in range(args.repeats + 1)]
               for b in batch_sizes}
    # torch EmbeddingBag on the same batches (the cpu backend's lookup path), per batch size
    eb = {}
    for b in batch_sizes:
        times = []
        for i, batch in enumerate(batches[b]):
            idx, off = batch.indices, batch.offsets
            t0 = time.perf_counter()
            for t in range(len(tables)):
                a, e = t * b, (t + 1) * b
                torch.nn.functional.embedding_bag(idx[int(off[a]):int(off[e])], weights[t], off[a:e] - off[a], mode="sum")
            dt = time.perf_counter() - t0
            if i:
                times.append(dt)
        n = int(batches[b][0].nr_lookups)
        eb[b] = float(np.median(times)) / n * 1e9
        print(f"EmbeddingBag B={b}: {eb[b]:.2f} ns/lookup ({n:,} lookups; median of {len(times)})", flush=True)

    rows = []
    for nd in [int(x) for x in args.dpus.split(",")]:
        topo = Topology(nr_dpus=nd)
        for strat in args.strategies.split(","):
            t0 = time.perf_counter()
            kw = {"split_oversized": True} if strat == "table_wise" else {}  # full Kaggle's largest tables exceed a DPU
            try:
                plan = make_plan(tables, topo, strat, profile if strat not in ("row_uniform", "table_wise", "column_wise") else None, **kw)
            except Exception as exc:  # a strategy may not fit these tables on this DPU count
                print(f"{nd:5d} DPUs {strat:20s} plan failed: {exc}", flush=True)
                rows.append({"nr_dpus": nd, "strategy": strat, "error": str(exc)})
                continue
            plan_s = time.perf_counter() - t0
            spec, width = _spec(plan, args.dtype, wmax)
            hp = mod.HostPacker(spec, nd)
            for b in batch_sizes:
                out = np.empty((b, width), dtype=np.float32)
                pack, merge = [], []
                pb = None
                for i, batch in enumerate(batches[b]):
                    idx, off = batch.indices.numpy(), batch.offsets.numpy()
                    t1 = time.perf_counter()
                    pb = hp.pack(idx, off, b, pb)
                    t2 = time.perf_counter()
                    if pb.error is not None:
                        raise SystemExit(f"pack failed: {pb.error}")
                    hp.merge(pb, out)
                    t3 = time.perf_counter()
                    if i:
                        pack.append(t2 - t1)
                        merge.append(t3 - t2)
                n = int(batches[b][0].nr_lookups)
                pk, mg = float(np.median(pack)) / n * 1e9, float(np.median(merge)) / n * 1e9
                tot = float(np.median(np.add(pack, merge))) / n * 1e9
                rec = {"nr_dpus": nd, "strategy": strat, "batch_size": b, "lookups": n, "pack_ns": pk, "merge_ns": mg,
                       "pack_merge_ns": tot, "embedding_bag_ns": eb[b], "ratio_vs_embedding_bag": tot / eb[b],
                       "launches": int(pb.nr_launches), "plan_s": plan_s, "index_bytes": int(hp.index_bytes),
                       "index": hp.describe(), "load_average": os.getloadavg()[0]}
                rows.append(rec)
                print(f"{nd:5d} DPUs {strat:20s} B={b:5d}: pack {pk:6.2f} + merge {mg:5.2f} = {tot:6.2f} ns/lookup "
                      f"({tot / eb[b]:.2f}x EmbeddingBag), index {hp.index_bytes / 2**20:.1f} MiB, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
            del hp, plan
    result = {"machine": machine_info(), "config": cfg.name, "row_scale": args.row_scale, "dtype": args.dtype,
              "pooling": args.pooling, "alpha": args.alpha, "repeats": args.repeats, "rows": rows}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
