"""Serving CPU budget: CPU seconds per request of the server and of the load generator, and whether
pinning or a cheaper load-generator event loop moves the 64-client dynamic-batching result.

Why: the serving p99 target for the cpu backend (max-wait + 2 x batch service, ~20 ms here) needs,
by Little's law with 64 closed-loop clients (mean latency = 64 / QPS), about 64 / 0.0197 s = 3,250
req/s, and the mean is below the p99. On a machine with ``C`` cores shared by server and load
generator the throughput cannot exceed ``C / (server CPU + load-generator CPU per request)``, so
the two CPU figures measured here say whether the bound is reachable on this machine at all.

One ``updlrm serve`` (cpu, Kaggle-shaped model at row scale 0.1, --max-batch 64 --max-wait-ms 2,
engine thread) is loaded by ``updlrm.serving.loadtest`` (64 keep-alive connections, single
samples) in this process, in three configurations, alternated ``--repeats`` times:

* ``asyncio``: the load generator on the standard asyncio loop (as ``benchmarks/serving.py`` ran);
* ``uvloop``: the same on uvloop (as ``updlrm loadtest`` runs);
* ``uvloop_pinned``: uvloop, the load generator pinned to CPU 1 and every server thread to CPU 0.

CPU time: the server's from ``/proc/<pid>/stat`` (utime + stime, all threads), the load
generator's from ``time.process_time()``; both divided by the requests answered in the run.

    .venv/bin/python benchmarks/serving_cpu_cost.py --repeats 3 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serving import Server, delta, machine_info, scrape, summarize_metrics  # noqa: E402

from updlrm.serving.loadtest import run_loadtest_async  # noqa: E402


def proc_cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin_all_threads(pid: int, cpus: str) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, capture_output=True)


def one_run(server: Server, loop_kind: str, args) -> dict:
    coro = run_loadtest_async(server.url, concurrency=args.concurrency, requests=10_000_000,
                              duration_s=args.duration, warmup_requests=args.warmup, seed=args.seed)
    before = scrape(server.url)
    s0, c0, t0 = proc_cpu_s(server.proc.pid), time.process_time(), time.perf_counter()
    if loop_kind == "asyncio":
        report = asyncio.run(coro)
    else:
        import uvloop

        report = uvloop.run(coro)
    s1, c1, t1 = proc_cpu_s(server.proc.pid), time.process_time(), time.perf_counter()
    metrics = summarize_metrics(delta(scrape(server.url), before))
    r = report.to_dict()
    # the CPU windows include the warm-up requests: count them too
    answered = sum(report.outcomes.values()) + args.warmup
    return {"qps": r["qps"], "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
            "server_cpu_ms_per_request": 1e3 * (s1 - s0) / answered,
            "loadgen_cpu_ms_per_request": 1e3 * (c1 - c0) / answered,
            "cpu_busy_cores": ((s1 - s0) + (c1 - c0)) / (t1 - t0),
            "mean_batch_size": metrics["mean_batch_size"], "mean_batch_service_ms": metrics["mean_batch_service_ms"],
            "every_request_answered_once": r["every_request_answered_once"], "errors": r["errors"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--row-scale", type=float, default=0.1)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "serving" / "serving_cpu_cost.json"))
    args = p.parse_args(argv)
    info = machine_info()
    server = Server(["--model", "kaggle", "--row-scale", str(args.row_scale), "--backend", "cpu",
                     "--max-batch", "64", "--max-wait-ms", "2", "--max-queue", "4096"])
    configs = ("asyncio", "uvloop", "uvloop_pinned")
    runs: dict[str, list] = {c: [] for c in configs}
    all_cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    try:
        for rep in range(args.repeats):
            for cfg in configs:
                pinned = cfg.endswith("_pinned")
                if pinned:
                    pin_all_threads(server.proc.pid, "0")
                    os.sched_setaffinity(0, {1})
                try:
                    res = one_run(server, "asyncio" if cfg == "asyncio" else "uvloop", args)
                finally:
                    if pinned:
                        pin_all_threads(server.proc.pid, all_cpus)
                        os.sched_setaffinity(0, {int(c) for c in all_cpus.split(",")})
                runs[cfg].append(res)
                print(f"rep {rep} {cfg}: {res['qps']:.0f} req/s, p99 {res['p99_ms']:.1f} ms, server "
                      f"{res['server_cpu_ms_per_request']:.3f} + loadgen {res['loadgen_cpu_ms_per_request']:.3f} "
                      f"CPU ms/request, {res['cpu_busy_cores']:.2f} cores busy", file=sys.stderr)
    finally:
        code = server.stop()
    med = statistics.median
    summary = {c: {k: med(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], float)}
               for c, rs in runs.items()}
    out = {"machine": dict(info, loadavg_1m_at_end=os.getloadavg()[0]), "args": vars(args), "runs": runs,
           "summary": summary, "server_exit_code": code}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\n## CPU per request, cpu backend, dynamic (max 64, wait 2 ms), {args.concurrency} clients, "
          f"{args.repeats} x {args.duration:g} s, medians")
    print("| load generator | req/s | p50 ms | p99 ms | server CPU ms/req | loadgen CPU ms/req | cores busy "
          "| CPU ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    for c, s in summary.items():
        srv, gen = s["server_cpu_ms_per_request"], s["loadgen_cpu_ms_per_request"]
        # unpinned: both share 2 cores; pinned: each has its own core, the busier one limits
        ceiling = min(1e3 / srv, 1e3 / gen) if c.endswith("_pinned") else 2e3 / (srv + gen)
        print(f"| {c} | {s['qps']:.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {srv:.3f} | {gen:.3f} "
              f"| {s['cpu_busy_cores']:.2f} | {ceiling:.0f} req/s |")
    print(f"\nmachine: {info['cpu']}, {info['logical_cpus']} logical CPUs, load average at start "
          f"{info['loadavg_1m_at_start']:.2f}, at end {os.getloadavg()[0]:.2f}; server exit code {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
