"""Benchmark: streaming read of a ~1 GB Criteo-format text file with updlrm.data.CriteoReader.

Target: >= 50 MB/s sustained with bounded memory. The script

1. generates a Criteo-shaped file under /tmp (not in the repo): label, 13 integer fields (30 %
   empty, some negative, a few large), 26 eight-character hex ids (5 % empty), and one malformed
   line every 100,000 lines, ~275 bytes a line, by repeating a pool of random lines;
2. reads it ``--repeats`` times, each in a fresh subprocess (so that the peak RSS, VmHWM, is that
   of one read), with the torchrec convention and the Kaggle table sizes;
3. times a naive pandas baseline (``read_csv`` in chunks + ``int(x, 16)`` per id) on the first
   ``--baseline-mb`` MB in the same run, and reports our reader's speed-up on the same bytes;
4. prints a Markdown block with the medians and the machine; ``--out`` writes it to a file.

    .venv/bin/python benchmarks/criteo_read.py --size-gb 1 --repeats 3
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

import numpy as np

MALFORMED_EVERY = 100_000


def _random_lines(n: int, rng: np.random.Generator) -> list[str]:
    labels = rng.integers(0, 2, n)
    dense = rng.geometric(0.05, size=(n, 13)) - 1
    dense[rng.random((n, 13)) < 0.05] *= -1
    big = rng.random((n, 13)) < 0.01
    dense[big] = rng.integers(10**5, 10**9, size=int(big.sum()))
    dense_empty = rng.random((n, 13)) < 0.3
    cats = rng.integers(0, 2**32, size=(n, 26))
    cat_empty = rng.random((n, 26)) < 0.05
    lines = []
    for i in range(n):  # setup only: builds the pool of distinct lines
        d = ["" if dense_empty[i, j] else str(dense[i, j]) for j in range(13)]
        c = ["" if cat_empty[i, j] else f"{cats[i, j]:08x}" for j in range(26)]
        lines.append("\t".join([str(labels[i]), *d, *c]))
    return lines


def generate(path: Path, size_bytes: int, seed: int = 0) -> dict:
    """Write a Criteo-format file of ~size_bytes; returns lines / malformed counts."""
    rng = np.random.default_rng(seed)
    pool = np.array(_random_lines(50_000, rng), dtype=object)
    written = lines = malformed = 0
    with open(path, "w") as f:
        while written < size_bytes:
            pick = pool[rng.integers(0, pool.size, 100_000)].tolist()
            pick[rng.integers(0, len(pick))] = "1\t2\tnot-a-criteo-line"  # one malformed line per 100k
            text = "\n".join(pick) + "\n"
            f.write(text)
            written += len(text)
            lines += len(pick)
            malformed += 1
    return {"bytes": path.stat().st_size, "lines": lines, "malformed": malformed}


_CHILD = r"""
import json, sys, time
from updlrm.configs import KAGGLE_ROWS
from updlrm.data import CriteoReader
path, block, read_ahead = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t0, c0 = time.perf_counter(), time.process_time()
r = CriteoReader(path, "torchrec", table_rows=KAGGLE_ROWS, block_bytes=block, progress=False,
                 read_ahead=read_ahead == "on")
n = 0
checksum = 0
for chunk in r:
    n += len(chunk)
    checksum ^= int(chunk.sparse[-1, 0])
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": dt, "cpu_seconds": cpu, "read_ahead": read_ahead, "bytes": r.bytes_read, "samples": n, "malformed": r.malformed_count,
                  "first_malformed": r.malformed[0].line if r.malformed else None,
                  "peak_rss_mib": int(hwm) / 1024}))
"""

_BASELINE_RSS = r"""
import json
import updlrm.data, updlrm.configs
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"peak_rss_mib": int(hwm) / 1024}))
"""


def _run_child(code: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pandas_baseline(path: Path, nbytes: int) -> tuple[float, float]:
    """Naive pandas read of the first ``nbytes`` (whole lines): (seconds, our seconds) on the same bytes.

    The baseline is what a user would write first: read_csv in chunks, to_numeric, int(x, 16) per
    id. It does not detect malformed lines (short lines become NaN -> 0)."""
    import pandas as pd

    from updlrm.configs import KAGGLE_ROWS
    from updlrm.data import CriteoReader

    head = path.with_name(path.name + ".head")
    with open(path, "rb") as src:
        data = src.read(nbytes)
    head.write_bytes(data[: data.rfind(b"\n") + 1])
    try:
        rows = np.asarray(KAGGLE_ROWS, dtype=np.int64)
        t0 = time.perf_counter()
        for df in pd.read_csv(head, sep="\t", header=None, chunksize=100_000, dtype=str, on_bad_lines="skip",
                              keep_default_na=False):
            dense = df.iloc[:, 1:14].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy()
            np.log(np.maximum(dense, -2) + 3)
            cats = df.iloc[:, 14:].apply(
                lambda col: col.map(lambda x: int(x, 16) if isinstance(x, str) and x else 0)
            ).to_numpy()
            cats % rows
        t_pandas = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in CriteoReader(head, "torchrec", table_rows=KAGGLE_ROWS, progress=False):
            pass
        t_ours = time.perf_counter() - t0
    finally:
        head.unlink()
    return t_pandas, t_ours


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_avg_at_start": os.getloadavg()[0],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block-mib", type=float, default=0.25)
    ap.add_argument("--baseline-mb", type=float, default=30.0)
    ap.add_argument("--read-ahead", choices=("on", "off"), default="off",
                    help="background read/decompress thread (default off)")
    ap.add_argument("--path", default="/tmp/updlrm_criteo_bench.txt")
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    ap.add_argument("--out", default=None, help="write the Markdown result block here")
    args = ap.parse_args()
    info = machine()
    path = Path(args.path)
    t0 = time.perf_counter()
    gen = generate(path, int(args.size_gb * 1e9))
    print(f"generated {path}: {gen['bytes'] / 1e9:.2f} GB, {gen['lines']:,} lines in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    block = int(args.block_mib * (1 << 20))
    try:
        runs = []
        for i in range(args.repeats):
            load = os.getloadavg()[0]
            r = _run_child(_CHILD, path, block, args.read_ahead)
            r["mb_s"] = r["bytes"] / r["seconds"] / 1e6
            r["cpu_mb_s"] = r["bytes"] / r["cpu_seconds"] / 1e6
            r["load"] = load
            runs.append(r)
            print(f"run {i + 1}: {r['mb_s']:.1f} MB/s wall, {r['cpu_mb_s']:.1f} MB per CPU-second, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                  f"{r['samples']:,} samples, {r['malformed']} malformed", file=sys.stderr)
            assert r["samples"] == gen["lines"] - gen["malformed"], "samples lost or invented"
            assert r["malformed"] == gen["malformed"], "malformed lines not all reported"
        idle = _run_child(_BASELINE_RSS)
        t_pandas, t_ours = pandas_baseline(path, int(args.baseline_mb * 1e6))
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
    speeds = [r["mb_s"] for r in runs]
    med = statistics.median(speeds)
    block_md = "\n".join([
        f"### Criteo text read ({gen['bytes'] / 1e9:.2f} GB generated file, torchrec convention, "
        f"{args.block_mib:g} MiB blocks)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| throughput, median of {len(runs)} runs | **{med:.1f} MB/s** (runs: {', '.join(f'{s:.1f}' for s in speeds)}) |",
        f"| bytes per CPU-second (process CPU time, all threads; median) | "
        f"{statistics.median(r['cpu_mb_s'] for r in runs):.1f} MB/s |",
        f"| read-ahead thread / machine load average before each run | {runs[0]['read_ahead']} / "
        + ", ".join(f"{r['load']:.1f}" for r in runs) + " |",
        f"| samples per second (median) | {statistics.median(r['samples'] / r['seconds'] for r in runs):,.0f} |",
        f"| peak RSS of the reading process | {max(r['peak_rss_mib'] for r in runs):.0f} MiB "
        f"(imports alone: {idle['peak_rss_mib']:.0f} MiB; file: {gen['bytes'] / 2**20:,.0f} MiB) |",
        f"| malformed lines reported | {runs[0]['malformed']} of {gen['malformed']} planted "
        f"(first at line {runs[0]['first_malformed']:,}) |",
        f"| naive pandas baseline, first {args.baseline_mb:g} MB | {t_pandas:.2f} s vs ours {t_ours:.2f} s: "
        f"**{t_pandas / t_ours:.1f}x** faster |",
        f"| target >= 50 MB/s | {'met' if med >= 50 else 'NOT met'} |",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores (shared with other jobs; load average "
        f"{info['load_avg_at_start']:.2f} at start), Python {info['python']}, numpy {info['numpy']}, "
        f"{info['platform']}.",
    ])
    print(block_md)
    if args.out:
        Path(args.out).write_text(block_md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
