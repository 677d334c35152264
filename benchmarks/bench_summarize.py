"""Summarize `updlrm bench` JSON files as a Markdown table for benchmarks/RESULTS.md.

For every ok pim run next to the cpu run of the same batch size it prints: CPU embedding layer
(measured), PIM DPU side (modeled: CPU->DPU + launch + kernel + DPU->CPU), PIM host pack+merge
(measured, this machine's packer), and the speedups of the DPU side alone, of the whole embedding
layer, and end to end (p50 latencies; the MLPs are measured in both).

Run: ``.venv/bin/python benchmarks/bench_summarize.py benchmarks/results/bench/*/bench.json``
"""

from __future__ import annotations

import json
import sys

DPU_PHASES = ("cpu_to_dpu", "launch", "kernel", "dpu_to_cpu")


def summarize(path: str) -> list[str]:
    data = json.load(open(path))
    runs = [r for r in data["runs"] if r["status"] == "ok"]
    cpu = {r["batch_size"]: r for r in runs if r["backend"] == "cpu"}
    m = data["model"]
    lines = [f"**{path}** - {m['name']}, {m['nr_tables']} tables x dim {m['embedding_dim']}, "
             f"{m['total_rows']:,} rows ({m['embedding_bytes'] / 2**20:.1f} MiB), pooling {m['pooling']}; "
             f"torch threads {data['machine'].get('torch_threads')}, {data['machine'].get('date_utc')}", "",
             "| PIM point | B | CPU embed ms p50 (best) (meas) | PIM DPU side ms (model) | PIM pack+merge ms (meas) "
             "| DPU side x CPU embed | embedding layer x CPU | end to end x CPU | kernel limiter | modeled/bound |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if r["backend"] != "pim":
            continue
        ph = r["phases"]
        dpu = sum(ph[p]["p50_s"] for p in DPU_PHASES) * 1e3
        host = (ph.get("pack", {}).get("p50_s", 0) + ph.get("merge", {}).get("p50_s", 0)) * 1e3
        c = cpu.get(r["batch_size"])
        ce = c["phases"]["embed"]["p50_s"] * 1e3 if c else None
        ce_best = c["phases"]["embed"].get("min_s", c["phases"]["embed"]["p50_s"]) * 1e3 if c else None

        def x(v):
            return f"{v:.2f}" if v is not None else "-"

        lines.append(
            f"| {r['nr_dpus']} DPUs {r['strategy']} {r['dtype']} | {r['batch_size']} | {x(ce)} ({x(ce_best)}) "
            f"| {dpu:.2f} | {host:.1f} "
            f"| {x(ce / dpu if ce else None)} | {x(r.get('embedding_speedup_over_cpu'))} "
            f"| {x(r.get('speedup_over_cpu'))} | {r['kernel_model'].get('limiter', '-').split(' (')[0]} "
            f"| {r['modeled_over_bound']:.1f} |"
        )
    return lines


def main(paths: list[str]) -> int:
    for p in paths:
        print("\n".join(summarize(p)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
