"""Scale-out benchmark: one model across H Ray shard servers (updlrm.distributed).

Three parts, written to ``benchmarks/results/ray/ray.json`` and one figure ``ray.png``:

1. **Measured here**: throughput and p50/p99 batch latency of ``ShardedEngine.predict`` with
   H = 1, 2, 4 shard servers (Ray actors, cpu or pim-emulator shard backend) on a scaled Kaggle
   model, against single-process ``Engine.predict`` on the same batches in the same process (the
   baseline), repeats alternated so that background load hits every configuration alike; plus
   the bare round trip of one Ray actor call. This machine has 2 cores shared with other work:
   H shard servers share those cores with the front end, so this measures the overhead of the
   fan-out, not the scaling that separate hosts would give. The load average is recorded.
2. **Modeled**: full Kaggle and Terabyte on 1-8 UPMEM hosts (``--dpus-per-host`` each,
   replicas 1 and 2), uniform access, batch 2,048: per-host DPU latency from the timing model on
   each host's DPU plan, plus the network hop (``partition.hosts.NetworkModel``: assumed 100 Gb/s,
   50 us round trip).
3. **Plan lab, host level**: full Kaggle at H = 2, 4, 8 on a Zipf trace (profile on trace A,
   evaluate on held-out trace B), per-host lookups, bytes returned and modeled latency.

    .venv/bin/python benchmarks/ray_scaling.py                 # all three parts (~3-5 min here)
    .venv/bin/python benchmarks/ray_scaling.py --skip-measured --skip-modeled    # a skipped part
                                                                   # keeps its last figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "ray"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import ray

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__, "system": platform.system()}


# -- 1. measured -------------------------------------------------------------------------------

def measured(args) -> dict:
    import ray

    from updlrm import configs
    from updlrm.batch import random_batch
    from updlrm.distributed import ShardedEngine, connect, shutdown
    from updlrm.engine import Engine
    from updlrm.model import DLRM
    from updlrm.partition.hosts import make_host_plan

    torch.set_num_threads(1)
    cfg = configs.get("kaggle", row_scale=args.row_scale)
    model = DLRM(cfg).eval()
    batches = [random_batch(cfg, args.batch_size, pooling=args.pooling, seed=i) for i in range(args.batches)]
    connect("local", num_cpus=os.cpu_count(), object_store_bytes=256 << 20)
    load_before = loadavg()
    engines = {"single process": Engine(model, backend=args.backend,
                                        **({"nr_dpus": args.dpus_per_host} if args.backend == "pim" else {}))}
    for h in args.hosts:
        plan = make_host_plan(list(cfg.tables), h, args.dpus_per_host, 1,
                              dpu_strategy="row_uniform" if args.backend == "pim" else None)
        engines[f"H={h}"] = ShardedEngine(model, plan, backend=args.backend)
    # bare actor round trip (what one network hop costs here, without any work)
    probe = engines[f"H={args.hosts[0]}"]
    rtt = []
    for _ in range(200):
        t0 = time.perf_counter()
        ray.get(probe.actors[0].ping.remote())
        rtt.append(time.perf_counter() - t0)
    for e in engines.values():  # warm up
        e.predict(batches[0])
    lat = {k: [] for k in engines}
    thr = {k: [] for k in engines}
    for rep in range(args.repeats):
        for name, e in engines.items():  # alternate configurations within each repeat
            t0 = time.perf_counter()
            for b in batches:
                t1 = time.perf_counter()
                e.predict(b)
                lat[name].append(time.perf_counter() - t1)
            thr[name].append(len(batches) * args.batch_size / (time.perf_counter() - t0))
        print(f"repeat {rep + 1}/{args.repeats} done, load {loadavg()}", file=sys.stderr)
    load_after = loadavg()
    base = statistics.median(thr["single process"])
    rows = []
    for name in engines:
        a = np.array(lat[name]) * 1e3
        rows.append({"config": name, "samples_per_s": statistics.median(thr[name]),
                     "samples_per_s_repeats": thr[name], "p50_ms": float(np.percentile(a, 50)),
                     "p99_ms": float(np.percentile(a, 99)), "vs_single": statistics.median(thr[name]) / base})
    for e in engines.values():
        e.close()
    shutdown()
    return {"model": f"kaggle row_scale={args.row_scale} ({cfg.total_rows:,} rows)", "backend": args.backend,
            "batch_size": args.batch_size, "pooling": args.pooling, "batches_per_repeat": args.batches,
            "repeats": args.repeats, "ray_call_rtt_us_median": float(np.median(rtt) * 1e6),
            "ray_call_rtt_us_p99": float(np.percentile(rtt, 99) * 1e6), "load_before": load_before,
            "load_after": load_after, "rows": rows}


# -- 2. modeled --------------------------------------------------------------------------------

def modeled(args) -> dict:
    from updlrm import configs
    from updlrm.partition.hosts import NetworkModel, make_host_plan, uniform_host_cost

    net = NetworkModel()
    out = {"batch_size": 2048, "pooling": args.pooling, "dpus_per_host": args.model_dpus, "rows": []}
    for name in ("kaggle", "terabyte"):
        tables = list(configs.get(name).tables)
        # replicas 2 for the first strategy only: with the rotation a host serves half of twice the
        # shards, so R=2 costs MRAM, not latency, and the slower planners need not repeat it
        grid = [(s, r, h) for k, s in enumerate(args.model_strategies) for r in ((1, 2) if k == 0 else (1,))
                for h in (1, 2, 4, 8)]
        for strategy, r, h in grid:
                if r > h:
                    continue
                try:
                    plan = make_host_plan(tables, h, args.model_dpus, r, dpu_strategy=strategy)
                except Exception as exc:  # noqa: BLE001 - a model that does not fit: say so
                    out["rows"].append({"model": name, "strategy": strategy, "hosts": h, "replicas": r,
                                        "error": str(exc)[:160]})
                    continue
                rep = uniform_host_cost(plan, 2048, args.pooling, network=net)
                hosts = rep["hosts"]
                out["rows"].append({
                    "model": name, "strategy": strategy, "hosts": h, "replicas": r, "latency_us": rep["latency_us"],
                    "dpu_us_max": max(x["dpu_us"] for x in hosts), "network_us_max": max(x["network_us"] for x in hosts),
                    "returned_kb_max": max(x["response_bytes"] for x in hosts) / 1e3,
                    "lookups_max": max(x["lookups"] for x in hosts),
                    "imbalance": max(x["lookups"] for x in hosts) / np.mean([x["lookups"] for x in hosts]),
                    "split_tables": len(plan.summary()["split_tables"]), "latency_model": rep["latency_model"]})
                print(f"modeled {name} {strategy} H={h} R={r}: {rep['latency_us']:,.0f} us", file=sys.stderr)
    out["network"] = {"bytes_per_s": net.bytes_per_s, "rtt_us": net.rtt_us, "source": net.source}
    return out


# -- 3. plan lab at host level -----------------------------------------------------------------

def lab(args) -> dict:
    from updlrm.partition.hosts import host_lab
    from updlrm.partition.lab import kaggle_tables, zipf_workload

    tables = kaggle_tables()
    print("drawing the full-Kaggle Zipf workload", file=sys.stderr)
    wl = zipf_workload(tables, alpha=1.05, pooling=args.pooling, batch_size=2048, profile_batches=args.lab_profile_batches,
                       eval_batches=args.lab_eval_batches)
    rows = []
    for strategy, h, r in [(s, h, r) for s in args.lab_strategies for h in (1, 2, 4, 8) for r in (1, 2) if r <= h]:
            t0 = time.perf_counter()
            plan, rep = host_lab(tables, h, args.model_dpus, r, wl, 2048, strategy)
            hosts = rep["hosts"]
            rows.append({"strategy": strategy, "hosts": h, "replicas": r, "latency_us": rep["latency_us"], "hosts_detail": hosts,
                         "dpu_us_max": max(x["dpu_us"] for x in hosts), "network_us_max": max(x["network_us"] for x in hosts),
                         "lookups_max": max(x["lookups"] for x in hosts),
                         "imbalance": max(x["lookups"] for x in hosts) / np.mean([x["lookups"] for x in hosts]),
                         "returned_kb_max": max(x["response_bytes"] for x in hosts) / 1e3,
                         "mram_mb_max": max(x["mram_bytes_max"] for x in hosts) / 1e6,
                         "table_mb_max": max(x["table_bytes"] for x in hosts) / 1e6,
                         "seconds": time.perf_counter() - t0, "latency_model": rep["latency_model"],
                         "batches": rep["batches"]})
            print(f"lab kaggle {strategy} H={h} R={r}: {rep['latency_us']:,.0f} us", file=sys.stderr)
    return {"workload": wl.description, "eval_source": wl.eval_trace.name, "dpus_per_host": args.model_dpus,
            "batch_size": 2048, "rows": rows}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    ax = axes[0]
    parts = [k for k in ("measured", "measured_pim") if k in res]
    for i, key in enumerate(parts):
        m = res[key]
        names = [r["config"] for r in m["rows"]]
        x = np.arange(len(names)) + (i - (len(parts) - 1) / 2) * 0.38
        ax.bar(x, [r["samples_per_s"] for r in m["rows"]], width=0.36, color=f"C{i}",
               label=f"{m['backend']} shards (load {m['load_before'][0]}-{m['load_after'][0]})")
        ax.set_xticks(np.arange(len(names)), names)
    if parts:
        m = res[parts[0]]
        ax.set_ylabel("samples/s (median of repeats)")
        ax.set_title(f"measured on this {res['machine']['cores']}-core machine (all processes share it)\n"
                     f"{m['model']}, B={m['batch_size']}", fontsize=8)
        ax.legend(fontsize=7)
    ax = axes[1]
    strategies = list(dict.fromkeys(x["strategy"] for x in res["modeled"]["rows"]))
    for name, style in (("kaggle", "-"), ("terabyte", "--")):
        for k, strategy in enumerate(strategies):
            pts = [(x["hosts"], x["latency_us"] / 1e3) for x in res["modeled"]["rows"]
                   if x["model"] == name and x["strategy"] == strategy and x["replicas"] == 1 and "error" not in x]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", color=f"C{k}", label=f"{name}, {strategy} in each host, R=1")
    if "lab" in res:  # the trace-driven plan lab (Zipf, held-out trace), full Kaggle
        for k, strategy in enumerate(dict.fromkeys(x["strategy"] for x in res["lab"]["rows"])):
            pts = [(x["hosts"], x["latency_us"] / 1e3) for x in res["lab"]["rows"]
                   if x["strategy"] == strategy and x["replicas"] == 1]
            ax.plot(*zip(*pts), ":", marker="s", color=f"C{k + 2}", label=f"kaggle, Zipf trace, {strategy} (plan lab), R=1")
    ax.set_xlabel("UPMEM hosts")
    ax.set_ylabel("modeled batch latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"modeled: full models, {res['modeled']['dpus_per_host']} DPUs/host, B=2048, "
                 f"{res['modeled']['network']['bytes_per_s'] * 8 / 1e9:g} Gb/s, {res['modeled']['network']['rtt_us']:g} us RTT",
                 fontsize=8)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    p.add_argument("--backend", default="cpu", choices=("cpu", "pim"))
    p.add_argument("--row-scale", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--pooling", type=int, default=20)
    p.add_argument("--batches", type=int, default=20, help="batches per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dpus-per-host", type=int, default=8, help="measured part, pim: DPUs per shard server")
    p.add_argument("--model-dpus", type=int, default=2048, help="modeled parts: DPUs per UPMEM host")
    p.add_argument("--model-strategies", type=lambda s: s.split(","), default=["row_uniform", "tile_uniform"],
                   help="modeled part: DPU strategies within each host")
    p.add_argument("--lab-strategies", type=lambda s: s.split(","), default=["row_uniform", "cache_aware"],
                   help="plan lab part: DPU strategies within each host")
    p.add_argument("--lab-profile-batches", type=int, default=4)
    p.add_argument("--lab-eval-batches", type=int, default=2)
    p.add_argument("--skip-measured", action="store_true")
    p.add_argument("--skip-modeled", action="store_true")
    p.add_argument("--skip-lab", action="store_true")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    previous = json.loads((OUT / "ray.json").read_text()) if (OUT / "ray.json").exists() else {}
    measured_key = "measured" if args.backend == "cpu" else f"measured_{args.backend}"
    for key in [k for k in previous if k.startswith("measured") and k != measured_key]:
        res[key] = previous[key]  # the other shard backend's measured figures stay
    for part, skip, fn in ((measured_key, args.skip_measured, measured), ("modeled", args.skip_modeled, modeled),
                           ("lab", args.skip_lab, lab)):
        if not skip:
            res[part] = fn(args)
            res[part]["run"] = res["started"]
        elif part in previous:  # a skipped part keeps its figures from the last run (with its date)
            res[part] = previous[part]
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    (OUT / "ray.json").write_text(json.dumps(res, indent=1, default=float))
    plot(res, OUT / "ray.png")
    print(json.dumps({k: v for k, v in res.items() if k != "lab"}, indent=1, default=float)[:6000])
    if "lab" in res:
        for r in res["lab"]["rows"]:
            print({k: v for k, v in r.items() if k != "hosts_detail"})
    print(f"wrote {OUT / 'ray.json'} and {OUT / 'ray.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
