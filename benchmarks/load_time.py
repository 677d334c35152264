"""Time and peak memory of loading a DLRM's tables onto emulated DPUs, step by step.

Default: the full Criteo Kaggle tables (26 tables, 33.8M rows x dim 16, 2.0 GiB fp32) onto 2,560
DPUs in int32 fixed point, for cache_aware, row_uniform and table_wise. Every (strategy, repeat)
runs in its own process, so that its peak RSS (getrusage of that child) is its own. Steps:

* ``model_s``    DLRM(config): building and initialising the tables (not part of loading);
* ``profile_s``  access profile from a held-out batch (cache_aware only);
* ``plan_s``     make_plan: placement, MRAM offsets, validate_plan (table_wise with
                 split_oversized=True: Kaggle's large tables do not fit one DPU whole);
* ``prepare_s``  PimEmbedding: weight checks (max|w|, finite), validate_plan, plan_layout, row
                 mapper, image spec;
* ``open_s``     DPU allocation and kernel load;
* ``build_s``    of write_s: building the MRAM image windows from the weights (loader.cpp);
* ``write_s``    MRAM images built window by window from the weights while they are pushed
                 (build_s + the driver's shard pushes into the emulator's MRAM);
* ``load_s``     = profile + plan + the whole PimEmbedding construction (prepare, open, write,
                 set_plan): what `Engine(model, backend="pim")` costs after the model exists.

Each child then checks one B=64 batch against torch EmbeddingBag within the fixed-point bound
(``check``), so a fast but wrong load cannot pass. Medians over --repeats; the load average is
read before and after.

Run:  .venv/bin/python benchmarks/load_time.py [--strategies cache_aware row_uniform table_wise]
          [--dpus 2560] [--row-scale 1] [--dtype int32] [--repeats 1] [--with-reference]
          [--out benchmarks/results/loading/load_time.json]

--with-reference also loads the first strategy the way it was done before the native loader
(numpy images of every DPU in host memory, then write_shards), in the same run.
Full Kaggle peaks near 8 GiB per child; children run one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

STEPS = ("model_s", "profile_s", "plan_s", "prepare_s", "open_s", "build_s", "write_s", "load_s")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "loading" / "load_time.json"


def child(args) -> dict:
    """One load in this process: step times, MRAM bytes, and the correctness check."""
    import numpy as np
    import torch

    from updlrm import configs
    from updlrm.batch import random_batch
    from updlrm.model import DLRM
    from updlrm.partition import Topology, make_plan
    from updlrm.partition.profile import profile_trace
    from updlrm.pim import PimEmbedding

    out: dict = {"strategy": args.strategy}
    cfg = configs.get("kaggle", row_scale=args.row_scale, seed=0)
    t = time.perf_counter()
    model = DLRM(cfg).eval()
    out["model_s"] = time.perf_counter() - t

    t0 = time.perf_counter()
    profile = None
    if args.strategy not in ("row_uniform", "table_wise", "column_wise", "tile_uniform"):
        held_out = random_batch(cfg, 4096, pooling=20, alpha=1.05, seed=777_777)
        profile = profile_trace(held_out, cfg.tables, source="held-out random batch")
    t1 = time.perf_counter()
    # table_wise: Kaggle's large tables exceed one DPU, so they are cut into the fewest row ranges that fit
    options = {"split_oversized": True} if args.strategy == "table_wise" else {}
    plan = make_plan(list(cfg.tables), Topology(nr_dpus=args.dpus), args.strategy, profile, **options)
    t2 = time.perf_counter()
    out.update(profile_s=t1 - t0, plan_s=t2 - t1)
    weights = [w.detach().numpy() for w in model.embedding_weights()]  # views, as the pim backend takes them
    if args.reference:
        return reference_load(out, weights, plan, args, t0)
    pim = PimEmbedding(weights, plan, dtype=args.dtype)
    t3 = time.perf_counter()
    ls = pim.load_stats
    out.update(prepare_s=ls["prepare_s"], open_s=ls["open_s"],
               build_s=ls["build_images_s"], write_s=ls["load_tables_s"], load_s=t3 - t0)
    out["shards"] = len(plan.shards)
    mram = np.asarray(ls["mram_bytes_per_dpu"], dtype=np.int64)
    out["mram_bytes_total"] = int(mram.sum())
    out["mram_bytes_per_dpu_max"] = int(mram.max())

    batch = random_batch(cfg, 64, pooling=20, alpha=1.05, seed=1)
    got = pim.lookup(batch.indices.numpy(), batch.offsets.numpy(), batch.batch_size)  # [B, T, D]
    worst = 0.0
    for ti, bag in enumerate(model.embeddings):
        ids, offs = batch.table(ti)
        w = bag.weight.detach()
        want = torch.nn.functional.embedding_bag(ids, w, offs, mode="sum").double().numpy()
        picks = torch.arange(ids.numel())
        abs_sum = torch.nn.functional.embedding_bag(picks, w.index_select(0, ids).abs().double(), offs, mode="sum")
        n = np.diff(np.append(offs.numpy(), ids.numel()))
        # fixed-point rounding per lookup + reordered fp32 sums (2 n 2^-24 of the sum of |w|)
        bound = pim.fixed_point_bound(1.0)[ti] * n[:, None] + (2 * n[:, None] * 2.0**-24 + 1e-7) * abs_sum.numpy()
        bound = np.maximum(bound, 1e-12)
        worst = max(worst, float((np.abs(got[:, ti, :] - want) / bound).max()))
    out["check"] = {"worst_diff_over_bound": worst, "ok": worst <= 1.0}
    pim.close()
    return out


def reference_load(out: dict, weights, plan, args, t0: float) -> dict:
    """The numpy reference path in the same child: every DPU's full image built by
    layout.shard_images (one gather per shard, all images in host memory at once), then
    Runtime.write_shards - how the tables were loaded before the native loader."""
    import numpy as np

    from updlrm.pim import native
    from updlrm.pim.layout import fixed_point_scales, plan_layout, shard_images

    mod = native.native_module("emulator")
    abi = native.abi(mod)
    t = time.perf_counter()
    layout = plan_layout(plan, abi)
    M = 4096
    limit = float((2**31 - 1) // M)
    scales = fixed_point_scales(weights, M) if args.dtype == "int32" else None
    out["prepare_s"] = time.perf_counter() - t
    rt = mod.Runtime(native.kernel_path("emulator", plan.topology.nr_tasklets, mod), plan.topology.nr_dpus,
                     native.PROFILES["emulator"])
    t = time.perf_counter()
    images = shard_images(weights, plan, layout, args.dtype, scales, limit)
    out["build_s"] = time.perf_counter() - t
    out["write_s"] = out["build_s"] + rt.write_shards(images, layout.shard_spec(args.dtype, abi))
    out["open_s"] = rt.open_seconds
    out["load_s"] = time.perf_counter() - t0
    out["shards"] = len(plan.shards)
    sizes = np.array([im.size for im in images], dtype=np.int64)
    out["mram_bytes_total"], out["mram_bytes_per_dpu_max"] = int(sizes.sum()), int(sizes.max())
    out["check"] = {"ok": True, "note": "reference path: checked by tests/test_pim_loader.py, not here"}
    rt.close()
    return out


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def run_child(argv: list[str]) -> tuple[dict, int]:
    """The child's JSON result and its peak RSS in bytes (wait4's rusage; Linux ru_maxrss is KiB)."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", *argv], stdout=subprocess.PIPE)
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode != 0:
        raise RuntimeError(f"load child {argv} exited with {proc.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1]), int(usage.ru_maxrss) * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strategies", nargs="+", default=["cache_aware", "row_uniform", "table_wise"])
    ap.add_argument("--dpus", type=int, default=2560)
    ap.add_argument("--row-scale", type=float, default=1.0)
    ap.add_argument("--dtype", default="int32", choices=("fp32", "int32"))
    ap.add_argument("--repeats", type=int, default=1, help="loads per strategy (median; each a fresh process)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--with-reference", action="store_true",
                    help="also load the first strategy the old way (numpy images of every DPU, then "
                         "write_shards) for a before/after in the same run; peaks near 10 GiB at full Kaggle")
    ap.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--strategy", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0

    load_before = loadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results = []
    todo = [(s, False) for s in args.strategies]
    if args.with_reference:
        todo.append((args.strategies[0], True))
    for strategy, reference in todo:
        runs = []
        for _ in range(args.repeats):
            r, rss = run_child(["--strategy", strategy, "--dpus", str(args.dpus), "--row-scale", str(args.row_scale),
                                "--dtype", args.dtype] + (["--reference"] if reference else []))
            r["peak_rss_bytes"] = rss
            runs.append(r)
            print(f"  {strategy}: load {r['load_s']:.1f} s, peak RSS {rss / 2**30:.2f} GiB, "
                  f"check {'ok' if r['check']['ok'] else 'FAILED'}", file=sys.stderr, flush=True)
        med = {k: statistics.median(r[k] for r in runs) for k in STEPS}
        results.append({
            "strategy": strategy + (" (numpy reference path)" if reference else ""),
            "loader": "numpy images + write_shards" if reference else "native, window by window",
            "median": med,
            "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in runs),
            "shards": runs[0]["shards"],
            "mram_bytes_total": runs[0]["mram_bytes_total"],
            "mram_bytes_per_dpu_max": runs[0]["mram_bytes_per_dpu_max"],
            "check_ok": all(r["check"]["ok"] for r in runs),
            "runs": runs,
        })
    doc = {
        "config": {"model": "kaggle", "row_scale": args.row_scale, "dpus": args.dpus, "dtype": args.dtype,
                   "repeats": args.repeats},
        "machine": {"started_utc": started, "loadavg_before": load_before, "loadavg_after": loadavg(),
                    "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "updlrm_host_threads": os.environ.get("UPDLRM_HOST_THREADS")},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")

    print(f"load time, Kaggle x {args.row_scale:g} on {args.dpus:,} emulated DPUs, {args.dtype} "
          f"(median of {args.repeats}; load average {load_before} -> {doc['machine']['loadavg_after']})")
    head = f"{'strategy':<24}" + "".join(f"{k[:-2]:>9}" for k in STEPS) + f"{'peak RSS':>11}{'MRAM':>10}  check"
    print(head)
    print("-" * len(head))
    for r in results:
        m = r["median"]
        print(f"{r['strategy'].replace(' (numpy reference path)', ' (numpy ref)'):<24}" + "".join(f"{m[k]:>8.2f}s" for k in STEPS)
              + f"{r['peak_rss_bytes_max'] / 2**30:>8.2f}GiB{r['mram_bytes_total'] / 2**30:>7.2f}GiB  "
              + ("ok" if r["check_ok"] else "FAILED"))
    print(f"wrote {args.out}")
    return 0 if all(r["check_ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
