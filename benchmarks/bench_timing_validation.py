"""Validate the UPMEM timing model against a published end-to-end DLRM point.

The point: UBC-ECE-Sasha/PIM-Embedding-Lookup, upmem/PERF.md ("cloud8"): 1,920 DPUs in 31 ranks
(56-64 working DPUs each, listed in the log), 30 tables x 14M rows x dim 64, int32 fixed point,
column-wise partitioning (one DPU holds one column of one table: 14M x 4 B = 56 MB of MRAM),
16 tasklets, one batch = 32 samples x 128 indices per table. Their host code (src/embedding.c,
``lookup``) times, per batch: three ``dpu_push_xfer`` (indices 32*128*4 = 16,384 B, offsets
32*4 = 128 B, lengths 8 B per DPU), one launch, one ``dpu_push_xfer`` from the DPUs (32 int32
results = 128 B per DPU) and a host callback. Logged: ~3.3-4.6 ms per batch, mostly 3.4-4 ms.

Their kernel (src/dpu/emb_dpu_lookup.c): tasklet 0 stages the indices in WRAM with 2,048-byte
DMAs, tasklets take samples round-robin (32 samples / 16 tasklets = 2 each, 128 lookups per
sample), and every lookup is one 8-byte mram_read (one int32 column padded to 8 bytes) and one
integer add. Those counts are built here analytically (no emulation at that size).

Run: ``.venv/bin/python benchmarks/bench_timing_validation.py [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import numpy as np

from updlrm.partition import Topology
from updlrm.timing_model import KernelCounters, TimingModel, TransferCounters

# working DPUs per rank, from the PERF.md log (sum 1,920)
RANKS = (63, 64, 62, 63, 63, 56, 63, 64, 64, 64, 64, 64, 64, 58, 56, 64, 64, 62, 56, 64, 64, 64,
         64, 64, 56, 62, 64, 64, 56, 56, 64)
LOGGED_MS = (3.4, 4.0)  # the bulk of the 100 logged batches (median ~3.6 ms)
NR_TASKLETS = 16
SAMPLES = 32
INDICES_PER_SAMPLE = 128


def published_point() -> tuple[Topology, KernelCounters, TransferCounters]:
    """Topology and exact-by-construction counters of one batch of the published run."""
    topo = Topology(nr_dpus=sum(RANKS), working_dpus_per_rank=RANKS, nr_tasklets=NR_TASKLETS)
    d, t = topo.nr_dpus, NR_TASKLETS
    lookups_t = np.full((d, t), SAMPLES // t * INDICES_PER_SAMPLE, dtype=float)  # 256 per tasklet
    reads = lookups_t.copy()  # one 8-byte row read per lookup
    read_bytes = reads * 8
    index_bytes = SAMPLES * INDICES_PER_SAMPLE * 4
    # tasklet 0 stages: the lengths struct (8 B), the indices in 2,048-byte chunks, the offsets
    reads[:, 0] += 1 + index_bytes // 2048 + 1
    read_bytes[:, 0] += 8 + index_bytes + SAMPLES * 4
    writes = np.zeros((d, t))
    write_bytes = np.zeros((d, t))
    writes[:, 0] = 1  # one result write of the per-sample sums
    write_bytes[:, 0] = SAMPLES * 4
    kernel = KernelCounters(
        nr_tasklets=t,
        dtype="int32",
        lookups=lookups_t.sum(1),
        bags=np.full(d, float(SAMPLES)),
        elements=lookups_t.sum(1) * 1,  # one int32 column per lookup
        dma_read_ops=reads,
        dma_read_bytes=read_bytes,
        dma_write_ops=writes,
        dma_write_bytes=write_bytes,
        lookups_per_tasklet=lookups_t,
        bags_per_tasklet=np.full((d, t), float(SAMPLES // t)),
    )
    transfers = TransferCounters(
        to_dpu_lengths=np.array([float(index_bytes), SAMPLES * 4.0, 8.0]),
        from_dpu_lengths=np.array([SAMPLES * 4.0]),
        to_dpu_bytes=np.full(d, index_bytes + SAMPLES * 4.0 + 8.0),
        from_dpu_bytes=np.full(d, SAMPLES * 4.0),
    )
    return topo, kernel, transfers


def run(model: TimingModel) -> dict:
    topo, kernel, transfers = published_point()
    mb = model.model_batch(topo, kernel, transfers)
    return {
        "phases_ms": {p.name: p.seconds * 1e3 for p in mb.phases},
        "total_ms": mb.seconds * 1e3,
        "bound_ms": mb.bound.seconds * 1e3,
        "kernel_limiter": mb.get("kernel").detail["limiter"],
        "kernel_cycles": mb.get("kernel").detail["cycles"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    base = TimingModel.default()
    variants = {
        "default constants": base,
        "DMA engine fully serial (engine_fixed = alpha = 77)": base.with_overrides({"dma_engine_fixed_cycles": 77}),
        "no per-transfer fixed cost": base.with_overrides({"to_dpu_fixed_per_rank_s": 0, "from_dpu_fixed_per_rank_s": 0}),
        "system bandwidth fitted to the 64 KB point (16.2 / 9.5 GB/s)": base.with_overrides(
            {"to_dpu_system_bw_bytes_per_s": 16.2e9, "from_dpu_system_bw_bytes_per_s": 9.5e9}),
    }
    results = {name: run(m) for name, m in variants.items()}
    lo, hi = LOGGED_MS
    print(f"PIM-Embedding-Lookup point: 1,920 DPUs / 31 ranks, 30 tables x 14M x 64 int32, column-wise, "
          f"32 x 128 lookups per batch; logged {lo}-{hi} ms per batch")
    print(f"{'variant':62s} {'push':>6s} {'launch':>6s} {'kernel':>6s} {'pull':>6s} {'total':>6s} "
          f"{'bound':>6s}  vs logged mid")
    mid = (lo + hi) / 2
    for name, r in results.items():
        p = r["phases_ms"]
        print(f"{name:62s} {p['cpu_to_dpu']:6.2f} {p['launch']:6.2f} {p['kernel']:6.2f} {p['dpu_to_cpu']:6.2f} "
              f"{r['total_ms']:6.2f} {r['bound_ms']:6.3f}  {r['total_ms'] / mid - 1:+.0%}")
    r = results["default constants"]
    print(f"kernel limiter: {r['kernel_limiter']}, {r['kernel_cycles']:.0f} cycles at 350 MHz")
    within = abs(r["total_ms"] / mid - 1) <= 0.30
    print(f"default model within 30% of the logged midpoint ({mid} ms): {within}")
    if args.json:
        out = {"point": "UBC-ECE-Sasha/PIM-Embedding-Lookup upmem/PERF.md", "logged_ms": LOGGED_MS,
               "results": results, "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
               "constants": base.describe()}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
