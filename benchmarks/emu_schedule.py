"""Cost of the emulator's faithful tasklet scheduling on the project's own kernel, same process.

Two PimEmbedding engines over the same plan and batches: one with the default schedule (tasklets
switch round-robin at every DMA and synchronization call, prefetching a DMA's source before the
switch) and one created with the profile ``schedule=run`` (each tasklet runs until it blocks: the
emulator's earlier scheduling, and the fast path for race-free kernels). Lookups alternate
between the two so that both see the same machine load; the script prints the median emulated
kernel time of each (emulator wall time, not a DPU latency), their ratio, and the load average.

Run:  .venv/bin/python benchmarks/emu_schedule.py [--dim 16] [--repeats 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pim_throughput import KAGGLE_ROWS, zipf_batch  # noqa: E402

from updlrm.partition import TableSpec, Topology, make_plan  # noqa: E402
from updlrm.pim import PimEmbedding  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--pooling", type=int, default=20)
    ap.add_argument("--row-cap", type=int, default=50_000)
    ap.add_argument("--nr-dpus", type=int, default=64)
    ap.add_argument("--strategy", default="table_wise")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    rows = [min(r, args.row_cap) for r in KAGGLE_ROWS]
    tables = [TableSpec(f"t{i}", r, args.dim) for i, r in enumerate(rows)]
    weights = [rng.standard_normal((r, args.dim)).astype(np.float32) for r in rows]
    batches = [zipf_batch(rng, rows, args.batch_size, args.pooling, 1.05) for _ in range(args.repeats + 1)]
    plan = make_plan(tables, Topology(nr_dpus=args.nr_dpus), args.strategy)

    engines = {}
    old = os.environ.get("UPMEM_PROFILE_BASE")
    for name, profile in (("round_robin", None), ("run_until_block", "schedule=run")):
        if profile is None:
            os.environ.pop("UPMEM_PROFILE_BASE", None)
        else:
            os.environ["UPMEM_PROFILE_BASE"] = profile
        engines[name] = PimEmbedding(weights, plan)
    if old is None:
        os.environ.pop("UPMEM_PROFILE_BASE", None)
    else:
        os.environ["UPMEM_PROFILE_BASE"] = old

    times: dict[str, list[float]] = {k: [] for k in engines}
    try:
        ref = None
        for i, (idx, offs) in enumerate(batches):
            for name, eng in engines.items():
                out = eng.lookup(idx, offs, args.batch_size)
                if i == 0:  # warm-up; both schedules must give the same sums
                    ref = out if ref is None else ref
                    assert np.array_equal(out, ref), "the two schedules disagree"
                    continue
                times[name].append(next(p.seconds for p in eng.last_stats.phases if p.name == "kernel"))
    finally:
        for eng in engines.values():
            eng.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    load = os.getloadavg()
    res = {"kernel_median_s": med, "ratio_rr_over_run": med["round_robin"] / med["run_until_block"],
           "repeats": args.repeats, "load_average": load, "dim": args.dim, "strategy": args.strategy,
           "nr_dpus": args.nr_dpus, "batch_size": args.batch_size}
    print(f"kernel (emulator wall, median of {args.repeats}): round-robin {med['round_robin'] * 1e3:.1f} ms, "
          f"run-until-block {med['run_until_block'] * 1e3:.1f} ms, ratio {res['ratio_rr_over_run']:.2f} "
          f"| load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
