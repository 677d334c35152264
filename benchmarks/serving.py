"""Serving benchmark: dynamic batching vs batch-size-1 serving, 64 concurrent single-sample clients.

For each backend (cpu, pim on the emulator) it starts two ``updlrm serve`` processes on the same
Kaggle-shaped model: one with ``--max-batch 1`` (every request runs alone: the baseline) and one
with dynamic batching (``--max-batch 64 --max-wait-ms 2``), then alternates closed-loop load tests
(``updlrm.serving.loadtest``) between them, ``--repeats`` times each, so that background load on
this shared machine hits both alike. Reported per configuration: medians over repeats of QPS and
client-side p50/p90/p99 latency, and from the server's /metrics (delta over each run) the mean
batch size and mean batch service time, plus per-phase means by source (measured /
emulator-wall / modeled). Checks: dynamic QPS >= 5x batch-1 QPS; dynamic p99 <=
max-wait + 2 x mean batch service time.

    .venv/bin/python benchmarks/serving.py                       # cpu and pim, ~3 min
    .venv/bin/python benchmarks/serving.py --backend cpu --repeats 5 --duration 10

Results go to ``benchmarks/results/serving/serving_<backend>.json`` with the machine description.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from updlrm.client import Client
from updlrm.serving.loadtest import run_loadtest_async

HERE = Path(__file__).resolve().parent


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import importlib.util

    import uvicorn

    http = f"uvicorn {uvicorn.__version__} with " + " + ".join(
        name if importlib.util.find_spec(name) else f"no {name}" for name in ("httptools", "uvloop"))
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "python": platform.python_version(), "http": http,
            "torch": torch.__version__, "platform": platform.platform(),
            "loadavg_1m_at_start": os.getloadavg()[0]}


class Server:
    """``updlrm serve`` in a subprocess; parses the URL it announces."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen([sys.executable, "-m", "updlrm.cli", "serve", "--port", "0",
                                      "--log-level", "warning", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: list[str] = []
        self.url = None
        seen = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    self.url = m.group(1)
                    seen.set()
            seen.set()

        threading.Thread(target=read, daemon=True).start()
        if not seen.wait(300) or self.url is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))
        with Client(self.url) as c:
            c.wait_ready(timeout_s=600)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def scrape(url: str) -> dict:
    """Sums of every sample line of /metrics, by full series name (labels included)."""
    out: dict[str, float] = {}
    with Client(url) as c:
        for line in c.metrics().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
    return out


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def histogram_quantile(d: dict, name: str, q: float) -> float:
    """Quantile ``q`` of a Prometheus histogram from its bucket counts in ``d`` (linear inside the
    bucket, as Prometheus' histogram_quantile does), in the histogram's unit."""
    buckets = []
    for key, value in d.items():
        m = re.fullmatch(name + r'_bucket\{le="([^"]+)"\}', key)
        if m:
            buckets.append((float(m.group(1)), value))  # "+Inf" parses as inf
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_bound, prev_count = bound, count
    return prev_bound


def summarize_metrics(d: dict) -> dict:
    batches = d.get("updlrm_batch_size_samples_count", 0.0)
    out = {
        "batches": batches,
        "mean_batch_size": d.get("updlrm_batch_size_samples_sum", 0.0) / batches if batches else float("nan"),
        "mean_batch_service_ms": 1e3 * d.get("updlrm_batch_seconds_sum", 0.0) / batches if batches else float("nan"),
        "server_p50_ms": 1e3 * histogram_quantile(d, "updlrm_request_latency_seconds", 0.50),
        "server_p99_ms": 1e3 * histogram_quantile(d, "updlrm_request_latency_seconds", 0.99),
        "phases_ms": {},
    }
    for key, value in d.items():
        m = re.fullmatch(r'updlrm_phase_seconds_sum\{phase="(\w+)",source="([\w-]+)"\}', key)
        if m:
            n = d.get(key.replace("_sum{", "_count{"), 0.0)
            if n:
                out["phases_ms"][f"{m.group(1)} ({m.group(2)})"] = 1e3 * value / n
    return out


def load(url: str, args) -> tuple[dict, dict]:
    before = scrape(url)
    report = asyncio.run(run_loadtest_async(url, concurrency=args.concurrency, requests=10_000_000,
                                            duration_s=args.duration, warmup_requests=args.warmup,
                                            seed=args.seed))
    after = scrape(url)
    r = report.to_dict()
    return r, summarize_metrics(delta(after, before))


def run_backend(backend: str, args) -> dict:
    common = ["--model", "kaggle", "--row-scale", str(args.row_scale), "--backend", backend,
              "--max-queue", "4096"]
    if backend == "pim":
        common += ["--nr-dpus", str(args.nr_dpus)]
    if args.engine_process:
        common += ["--engine-process"]
    modes = {
        "batch1": ["--max-batch", "1", "--max-wait-ms", "0"],
        "dynamic": ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)],
    }
    servers = {}
    try:
        for mode, extra in modes.items():
            t0 = time.perf_counter()
            servers[mode] = Server(common + extra)
            print(f"[{backend}] {mode} server ready in {time.perf_counter() - t0:.1f} s at {servers[mode].url}",
                  file=sys.stderr)
        runs = {mode: [] for mode in modes}
        for rep in range(args.repeats):
            for mode in modes:
                r, m = load(servers[mode].url, args)
                runs[mode].append({"loadtest": r, "server": m})
                print(f"[{backend}] rep {rep} {mode}: {r['qps']:.1f} req/s, p99 {r['latency_ms']['p99']:.1f} ms, "
                      f"mean batch {m['mean_batch_size']:.1f}, service {m['mean_batch_service_ms']:.2f} ms, "
                      f"errors {r['errors']}", file=sys.stderr)
    finally:
        codes = {mode: s.stop() for mode, s in servers.items()}
    summary = {}
    for mode, rs in runs.items():
        med = statistics.median
        summary[mode] = {
            "qps": med(x["loadtest"]["qps"] for x in rs),
            "p50_ms": med(x["loadtest"]["latency_ms"]["p50"] for x in rs),
            "p90_ms": med(x["loadtest"]["latency_ms"]["p90"] for x in rs),
            "p99_ms": med(x["loadtest"]["latency_ms"]["p99"] for x in rs),
            "server_p50_ms": med(x["server"]["server_p50_ms"] for x in rs),
            "server_p99_ms": med(x["server"]["server_p99_ms"] for x in rs),
            "mean_batch_size": med(x["server"]["mean_batch_size"] for x in rs),
            "mean_batch_service_ms": med(x["server"]["mean_batch_service_ms"] for x in rs),
            "phases_ms": {k: med(x["server"]["phases_ms"].get(k, float("nan")) for x in rs)
                          for k in rs[0]["server"]["phases_ms"]},
            "errors": sum(sum(x["loadtest"]["errors"].values()) for x in rs),
            "every_request_answered_once": all(x["loadtest"]["every_request_answered_once"] for x in rs),
        }
    ratios = [d["loadtest"]["qps"] / b["loadtest"]["qps"] for d, b in zip(runs["dynamic"], runs["batch1"])]
    dyn = summary["dynamic"]
    p99_bound = args.max_wait_ms + 2 * dyn["mean_batch_service_ms"]
    return {
        "backend": backend, "server_exit_codes": codes, "runs": runs, "summary": summary,
        "throughput_ratio_median": statistics.median(ratios), "throughput_ratios": ratios,
        "p99_bound_ms": p99_bound,
        "checks": {"ratio_ge_5": statistics.median(ratios) >= 5.0, "p99_le_bound": dyn["p99_ms"] <= p99_bound,
                   "server_p99_le_bound": dyn["server_p99_ms"] <= p99_bound},
    }


def print_table(res: dict, args) -> None:
    s = res["summary"]
    mode = ", engine in its own process" if args.engine_process else ""
    print(f"\n## {res['backend']} backend{mode} (kaggle, row scale {args.row_scale:g}, {args.concurrency} clients, "
          f"single samples, {args.repeats} x {args.duration:g} s, medians)")
    print("| serving | req/s | p50 ms | p90 ms | p99 ms | server p50 ms | server p99 ms | mean batch "
          "| batch service ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, label in (("batch1", "batch size 1"),
                        ("dynamic", f"dynamic (max {args.max_batch}, wait {args.max_wait_ms:g} ms)")):
        m = s[mode]
        print(f"| {label} | {m['qps']:.0f} | {m['p50_ms']:.1f} | {m['p90_ms']:.1f} | {m['p99_ms']:.1f} | "
              f"{m['server_p50_ms']:.1f} | {m['server_p99_ms']:.1f} | "
              f"{m['mean_batch_size']:.1f} | {m['mean_batch_service_ms']:.2f} |")
    print(f"\nthroughput ratio dynamic / batch-1: {res['throughput_ratio_median']:.2f}x "
          f"(per repeat: {', '.join(f'{r:.2f}' for r in res['throughput_ratios'])}) -> "
          f"{'PASS' if res['checks']['ratio_ge_5'] else 'FAIL'} (target >= 5x)")
    print(f"dynamic p99 vs max-wait + 2 x service = {res['p99_bound_ms']:.1f} ms: client-side "
          f"{s['dynamic']['p99_ms']:.1f} ms -> {'PASS' if res['checks']['p99_le_bound'] else 'FAIL'}; "
          f"server-side {s['dynamic']['server_p99_ms']:.1f} ms -> "
          f"{'PASS' if res['checks']['server_p99_le_bound'] else 'FAIL'}")
    for mode in ("batch1", "dynamic"):
        phases = ", ".join(f"{k} {v:.3f}" for k, v in sorted(s[mode]["phases_ms"].items()))
        print(f"{mode} per-batch phase means (ms): {phases}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", nargs="+", default=["cpu", "pim"], choices=("cpu", "cuda", "pim"))
    p.add_argument("--row-scale", type=float, default=0.1, help="kaggle table row scale (demo default 0.1)")
    p.add_argument("--nr-dpus", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per load test")
    p.add_argument("--warmup", type=int, default=256, help="untimed requests before each load test")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--engine-process", action="store_true", help="serve with the engine in its own process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "serving"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    for backend in args.backend:
        res = run_backend(backend, args)
        res["machine"] = dict(info, loadavg_1m_at_end=os.getloadavg()[0])
        res["args"] = vars(args)
        suffix = "_engine_process" if args.engine_process else ""
        (out / f"serving_{backend}{suffix}.json").write_text(json.dumps(res, indent=2))
        print_table(res, args)
    print(f"\nmachine: {info['cpu']}, {info['logical_cpus']} logical CPUs, torch {info['torch']}, {info['http']}, "
          f"load average at start {info['loadavg_1m_at_start']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
