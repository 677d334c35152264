"""Embedding-lookup throughput: emulated PIM path vs torch EmbeddingBag, measured in the same run.

The speed targets, on a Kaggle-shaped batch (B=2048, 26 tables, pooling 20, dim 16 and 64):
emulated PIM throughput >= 0.5x torch's, and pack + merge <= 0.5x torch's EmbeddingBag time.
Prints one JSON document (machine, parameters, per-repeat and median times, ratios) and, with
``--out``, writes it to a file as well.

    .venv/bin/python benchmarks/embedding_throughput.py --dims 16 64 --repeats 5

Times are host wall clock; the PIM ``kernel`` phase is the emulator's wall time, NOT a DPU latency.
torch and PIM run interleaved batch by batch, so load from other processes hits both; on a shared
machine compare the minima as well as the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from updlrm import configs
from updlrm.batch import random_batch
from updlrm.configs import DLRMConfig
from updlrm.partition import TableSpec, Topology, make_plan


def kaggle_shaped(dim: int, row_scale: float, seed: int) -> DLRMConfig:
    """Kaggle's 26 tables (rows scaled) at embedding width ``dim``."""
    base = configs.get("kaggle", row_scale=row_scale, seed=seed)
    tables = tuple(TableSpec(t.name, t.rows, dim) for t in base.tables)
    return DLRMConfig(f"kaggle-d{dim}", base.n_dense, dim, (dim,), (1,), tables, seed=seed)


def torch_lookup(bags, batch) -> torch.Tensor:
    return torch.stack([bag(*batch.table(t)) for t, bag in enumerate(bags)], dim=1)


def run_dim(dim: int, args) -> dict:
    from updlrm.pim import PimEmbedding

    cfg = kaggle_shaped(dim, args.row_scale, args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    bags = []
    for spec in cfg.tables:
        bag = torch.nn.EmbeddingBag(spec.rows, spec.dim, mode="sum")
        with torch.no_grad():
            bag.weight.uniform_(-(spec.rows**-0.5), spec.rows**-0.5, generator=gen)
        bags.append(bag)
    plan = make_plan(list(cfg.tables), Topology(nr_dpus=args.dpus), args.strategy)
    t0 = time.perf_counter()
    pim = PimEmbedding([b.weight.detach().numpy() for b in bags], plan, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    batches = [random_batch(cfg, args.batch_size, pooling=args.pooling, alpha=args.alpha, seed=i) for i in range(args.repeats + 1)]
    torch_s, pim_s, phase_s = [], [], {}
    max_abs = 0.0
    try:
        with torch.inference_mode():
            for i, batch in enumerate(batches):
                t0 = time.perf_counter()
                ref = torch_lookup(bags, batch)
                t1 = time.perf_counter()
                got = pim.lookup(batch.indices.numpy(), batch.offsets.numpy(), batch.batch_size)
                t2 = time.perf_counter()
                max_abs = max(max_abs, float(np.abs(np.asarray(got) - ref.numpy()).max()))
                if i == 0:
                    continue  # warm-up
                torch_s.append(t1 - t0)
                pim_s.append(t2 - t1)
                for ph in pim.last_stats.phases:
                    phase_s.setdefault(f"{ph.name} ({ph.source})", []).append(ph.seconds)
    finally:
        pim.close()
    lookups = batches[0].nr_lookups
    med = {k: statistics.median(v) for k, v in phase_s.items()}
    t_torch, t_pim = statistics.median(torch_s), statistics.median(pim_s)
    pack_merge = sum(v for k, v in med.items() if k.startswith(("pack ", "merge ")))
    return {
        "dim": dim,
        "lookups_per_batch": lookups,
        "table_rows": cfg.total_rows,
        "pim_load_s": load_s,
        "torch_s": torch_s,
        "pim_s": pim_s,
        "torch_median_s": t_torch,
        "pim_median_s": t_pim,
        "torch_min_s": min(torch_s),
        "pim_min_s": min(pim_s),
        "torch_lookups_per_s": lookups / t_torch,
        "pim_lookups_per_s": lookups / t_pim,
        "pim_over_torch_throughput": t_torch / t_pim,
        "pim_phases_median_s": med,
        "pack_plus_merge_over_torch_time": pack_merge / t_torch,
        "max_abs_diff_vs_torch": max_abs,
        "targets_met": {"throughput>=0.5x": t_torch / t_pim >= 0.5, "pack+merge<=0.5x": pack_merge / t_torch <= 0.5},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[16, 64])
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--pooling", type=int, default=20)
    p.add_argument("--alpha", type=float, default=1.05)
    p.add_argument("--row-scale", type=float, default=0.01)
    p.add_argument("--dpus", type=int, default=64)
    p.add_argument("--strategy", default="row_uniform")
    p.add_argument("--dtype", choices=("fp32", "int32"), default="fp32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    report = {
        "benchmark": "embedding_throughput",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "params": vars(args),
        "note": "host wall clock medians over repeats after one warm-up; the PIM kernel phase is emulator wall time",
        "results": [run_dim(d, args) for d in args.dims],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
