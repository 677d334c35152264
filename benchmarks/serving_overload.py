"""Serving under normal load and overload, with the server's CPU per request, in one sitting.

One ``updlrm serve`` (cpu backend, Kaggle-shaped model, dynamic batching ``--max-batch 64
--max-wait-ms 2``, default ``--max-queue 1024``) is loaded by ``updlrm.serving.loadtest`` (closed
loop, keep-alive connections, bodies built before the clock starts, uvloop) in these scenarios,
alternated ``--repeats`` times so that background load on this shared machine hits all alike:

* ``64 x 1``: 64 clients, one sample per request (JSON sample);
* ``64 x 16``: 64 clients, 16 samples per request (JSON ``{"samples": [...]}``);
* ``64 x 16 msgpack``: the same samples as a columnar batch in MessagePack with raw arrays;
* ``16 x 2``: 16 clients, 2 samples per request (the reference for overload);
* ``1024 x 2``: 1,024 clients, 2 samples per request: 2,048 samples wanted against a queue of
  1,024, so about half the requests are refused; the clients do not back off.

Per run: successful req/s, client p50/p99 of successful requests, errors by kind, 503 answers
without Retry-After, the server's CPU seconds (utime + stime of all its threads, from /proc) per
answered request, the load generator's, mean batch size, and the 1-minute load average at the
start and end. Medians over repeats are printed as a Markdown table and saved with every run.

    .venv/bin/python benchmarks/serving_overload.py --repeats 3 --duration 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serving import Server, delta, machine_info, scrape, summarize_metrics  # noqa: E402
from serving_cpu_cost import proc_cpu_s  # noqa: E402

from updlrm.serving.loadtest import run_loadtest_async  # noqa: E402

#: name -> (clients, samples per request, body format)
SCENARIOS = {
    "64 x 1": (64, 1, "samples"),
    "64 x 16": (64, 16, "samples"),
    "64 x 16 msgpack": (64, 16, "msgpack"),
    "16 x 2": (16, 2, "samples"),
    "1024 x 2": (1024, 2, "samples"),
}


def one_run(server: Server, name: str, args) -> dict:
    clients, k, fmt = SCENARIOS[name]
    coro = run_loadtest_async(server.url, concurrency=clients, requests=10_000_000, duration_s=args.duration,
                              samples_per_request=k, warmup_requests=args.warmup, seed=args.seed, body_format=fmt,
                              timeout_s=60)
    load0 = os.getloadavg()[0]
    before = scrape(server.url)
    s0, c0 = proc_cpu_s(server.proc.pid), time.process_time()
    import uvloop

    report = uvloop.run(coro)
    s1, c1 = proc_cpu_s(server.proc.pid), time.process_time()
    metrics = summarize_metrics(delta(scrape(server.url), before))
    r = report.to_dict()
    answered = sum(report.outcomes.values()) + args.warmup  # the CPU window includes the warm-up
    return {"qps": r["qps"], "samples_per_s": r["samples_per_s"], "p50_ms": r["latency_ms"]["p50"],
            "p99_ms": r["latency_ms"]["p99"], "sent": r["sent"], "ok": r["ok"], "errors": r["errors"],
            "rejections_without_retry_after": r["rejections_without_retry_after"],
            "server_cpu_ms_per_request": 1e3 * (s1 - s0) / answered,
            "loadgen_cpu_ms_per_request": 1e3 * (c1 - c0) / answered,
            "mean_batch_size": metrics["mean_batch_size"], "loadavg_start": load0, "loadavg_end": os.getloadavg()[0],
            "every_request_answered_once": r["every_request_answered_once"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--row-scale", type=float, default=0.1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument("--out", default=str(HERE / "results" / "serving" / "serving_overload.json"))
    args = p.parse_args(argv)
    info = machine_info()
    server = Server(["--model", "kaggle", "--row-scale", str(args.row_scale), "--backend", "cpu",
                     "--max-batch", "64", "--max-wait-ms", "2"])
    runs: dict[str, list] = {s: [] for s in args.scenarios}
    t_start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    try:
        for rep in range(args.repeats):
            for name in args.scenarios:
                res = one_run(server, name, args)
                runs[name].append(res)
                print(f"rep {rep} {name}: {res['qps']:.0f} req/s ok, p50 {res['p50_ms']:.1f} p99 {res['p99_ms']:.1f} "
                      f"ms, server {res['server_cpu_ms_per_request']:.3f} CPU ms/request, errors {res['errors']}, "
                      f"load {res['loadavg_start']:.2f}", file=sys.stderr)
    finally:
        code = server.stop()
    med = statistics.median
    summary = {n: {k: med(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))
                   and not isinstance(rs[0][k], bool)} for n, rs in runs.items()}
    for n, rs in runs.items():
        kinds = sorted({k for r in rs for k in r["errors"]})
        summary[n]["error_kinds"] = kinds
        summary[n]["all_answered_once"] = all(r["every_request_answered_once"] for r in rs)
    out = {"machine": dict(info, loadavg_1m_at_end=os.getloadavg()[0]), "started": t_start, "args": vars(args),
           "runs": runs, "summary": summary, "server_exit_code": code}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\n## cpu backend, dynamic batching (max 64, wait 2 ms, queue 1024 samples), {args.repeats} x "
          f"{args.duration:g} s, medians; started {t_start}")
    print("| clients x samples/request | req/s (ok) | samples/s | p50 ms | p99 ms | server CPU ms/req | "
          "mean batch | refused (503) per s | 503 without Retry-After | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, s in summary.items():
        refused = med(sum(v for k, v in r["errors"].items() if k.startswith("503")) / args.duration for r in runs[n])
        print(f"| {n} | {s['qps']:.0f} | {s['samples_per_s']:.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
              f"{s['server_cpu_ms_per_request']:.3f} | {s['mean_batch_size']:.1f} | {refused:.0f} | "
              f"{int(sum(r['rejections_without_retry_after'] for r in runs[n]))} | "
              f"{min(r['loadavg_start'] for r in runs[n]):.2f}-{max(r['loadavg_end'] for r in runs[n]):.2f} |")
    if "16 x 2" in summary and "1024 x 2" in summary:
        ratio = summary["16 x 2"]["qps"] / max(summary["1024 x 2"]["qps"], 1e-9)
        print(f"\noverload: 1024 clients give {summary['1024 x 2']['qps']:.0f} ok req/s, 16 clients "
              f"{summary['16 x 2']['qps']:.0f}: 16-client figure / overload = {ratio:.2f} (target <= 2)")
    print(f"\nmachine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {info['http']}; load average at "
          f"start {info['loadavg_1m_at_start']:.2f}, at end {os.getloadavg()[0]:.2f}; server exit code {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
