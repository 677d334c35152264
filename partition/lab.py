"""The strategy lab: compare placement strategies on one model + workload + DPU count, and sweep.

A *workload* is one synthetic Zipf trace drawn once and split in two disjoint sample ranges:
trace A (profiling) and trace B (held-out evaluation). Same distribution (same hot rows),
different draws; every report names both (source and content fingerprint).

    tables = kaggle_tables()
    wl = zipf_workload(tables, alpha=1.05, pooling=20, batch_size=2048, profile_batches=8, eval_batches=2)
    reports = compare(tables, Topology(2048), wl, batch_size=2048)
    print(format_reports(reports))

Traces come from ``updlrm.data.synthetic`` (Zipf over a seeded random permutation of each
table's rows, FBGEMM-style).
"""

from __future__ import annotations

import csv
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .cost import CostEstimator
from .errors import PlanError
from .planner import make_plan, strategy_names
from .profile import AccessProfile, TraceArrays, as_trace, profile_trace
from .types import TableSpec, Topology

#: Criteo Kaggle rows per table (dlrm preprocessing; shared DLRM.md).
KAGGLE_ROWS = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
               5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)

BASELINES = ("row_uniform", "table_wise", "column_wise")
#: Options the lab uses unless told otherwise: table_wise splits a table larger than one DPU
#: into the fewest row ranges that fit (else it cannot place Kaggle's big tables at all).
LAB_OPTIONS = {"table_wise": {"split_oversized": True}}


def kaggle_tables(row_scale: float = 1.0, dim: int = 16) -> list[TableSpec]:
    """The 26 Criteo Kaggle tables, rows scaled by ``row_scale`` (at least 1 row each)."""
    return [TableSpec(f"C{i + 1}", max(1, int(r * row_scale)), dim) for i, r in enumerate(KAGGLE_ROWS)]


@dataclass
class Workload:
    """Profiling trace A, its profile, and held-out evaluation trace B (disjoint samples)."""

    profile_trace: TraceArrays
    eval_trace: TraceArrays
    profile: AccessProfile
    description: str


def zipf_workload(tables: Sequence[TableSpec], alpha: float = 1.05, pooling: int = 20, batch_size: int = 2048,
                  profile_batches: int = 8, eval_batches: int = 2, seed: int = 0) -> Workload:
    """Draw ``(profile_batches + eval_batches) x batch_size`` samples of Zipf(alpha) lookups (fixed
    ``pooling`` per bag), split into trace A (first samples, profiled) and trace B (the rest)."""
    from updlrm.data.synthetic import TableWorkload, synthetic_trace

    if profile_batches < 1 or eval_batches < 1:
        raise PlanError(f"need >= 1 profile and >= 1 eval batch, got {profile_batches}, {eval_batches}")
    wl = [TableWorkload(rows=t.rows, alpha=alpha, pooling_factor=pooling, name=t.name) for t in tables]
    na, nb = profile_batches * batch_size, eval_batches * batch_size
    desc = f"zipf(alpha={alpha}, pooling={pooling}, seed={seed})"
    full = as_trace(synthetic_trace(wl, na + nb, seed=seed), desc)
    a = full.slice_samples(0, na, f"trace A: {desc} samples [0, {na:,})")
    b = full.slice_samples(na, na + nb, f"trace B: {desc} samples [{na:,}, {na + nb:,})")
    return Workload(a, b, profile_trace(a, tables), desc)


def compare(tables: Sequence[TableSpec], topology: Topology, workload: Workload, batch_size: int,
            strategies: Optional[Sequence[str]] = None, estimator: Optional[CostEstimator] = None,
            options: Optional[dict] = None, keep_plans: bool = False, progress=None, dtype: str = "fp32") -> list[dict]:
    """Make a plan per strategy (profile from trace A), evaluate it on trace B; one row per strategy.

    A strategy that cannot place the model (e.g. column_wise with a table larger than a DPU) gets a
    row with ``error`` set instead of metrics. ``options``: {strategy: {option: value}} (default
    :data:`LAB_OPTIONS`).
    Returns dicts (PlanReport fields + plan_seconds, eval_seconds, error, plan when keep_plans, dtype,
    ``mram_use_max``: the fullest DPU's MRAM share, tables + request + output buffers).
    ``progress``: optional callable taking one line of text per strategy. ``dtype``: the element type
    the tables are stored in (``"int8"`` plans hold 4x the rows of ``"fp32"`` ones per DPU).
    """
    est = estimator or CostEstimator()
    names = list(strategies or strategy_names())
    options = LAB_OPTIONS if options is None else options
    rows = []
    for s in names:
        row: dict[str, Any] = {"strategy": s, "nr_dpus": topology.nr_dpus, "batch_size": batch_size, "dtype": dtype}
        if progress:
            progress(f"{s}: planning on {topology.nr_dpus:,} DPUs and evaluating on {workload.eval_trace.name}")
        t0 = time.perf_counter()
        try:
            plan = make_plan(tables, topology, s, profile=workload.profile, dtype=dtype, **options.get(s, {}))
        except PlanError as exc:
            row["error"] = str(exc)
            rows.append(row)
            continue
        t1 = time.perf_counter()
        rep = est.evaluate(plan, workload.eval_trace, batch_size, profile=workload.profile)
        t2 = time.perf_counter()
        row.update(rep.as_dict())
        row.update({"plan_seconds": t1 - t0, "eval_seconds": t2 - t1, "error": "",
                    "mram_use_max": row["mram_bytes_max"] / topology.mram_bytes})
        if keep_plans:
            row["plan"] = plan
        rows.append(row)
    base = next((r for r in rows if r["strategy"] == "row_uniform" and not r.get("error")), None)
    for r in rows:
        if base and not r.get("error"):
            r["speedup_vs_row_uniform"] = base["latency_us"] / r["latency_us"]
    return rows


COLUMNS = [("strategy", "{}", "strategy"), ("imbalance", "{:.3f}", "imbalance*"), ("imbalance_max", "{:.3f}", "imb worst batch"),
           ("latency_us", "{:,.0f}", "latency us*"), ("kernel_us", "{:,.0f}", "kernel us*"),
           ("cpu_to_dpu_us", "{:,.0f}", "cpu->dpu us*"), ("dpu_to_cpu_us", "{:,.0f}", "dpu->cpu us*"),
           ("speedup_vs_row_uniform", "{:.2f}x", "vs row_uniform*"), ("replica_hit_rate", "{:.1%}", "replica hits*"),
           ("request_bytes_padded", "{:,.0f}", "req B (padded)*"), ("output_bytes_padded", "{:,.0f}", "out B (padded)*"),
           ("mram_bytes_max", "{:,}", "MRAM max B"), ("mram_use_max", "{:.1%}", "MRAM max %"), ("nr_shards", "{:,}", "shards")]
#: COLUMNS keys that are means over the evaluation batches (marked ``*`` in the header).
MEAN_COLUMNS = ("imbalance", "latency_us", "kernel_us", "cpu_to_dpu_us", "dpu_to_cpu_us", "speedup_vs_row_uniform",
                "replica_hit_rate", "request_bytes_padded", "output_bytes_padded")


def format_reports(rows: Sequence[dict]) -> str:
    """A fixed-width table of :func:`compare` rows, then the traces and the latency model used.

    Columns marked ``*`` are means over the evaluation batches (a footer line says how many);
    ``imb worst batch`` is the largest per-batch imbalance; MRAM and shards describe the plan.
    """
    head = [c[2] for c in COLUMNS]
    body = [[fmt.format(r[k]) if r.get(k) is not None else "-" for k, fmt, _ in COLUMNS] for r in rows if not r.get("error")]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(cells, widths)))
    lines = [line(head)]
    for r in rows:
        if r.get("error"):
            lines.append(r["strategy"].ljust(widths[0]) + "  cannot place the model: " + r["error"])
        else:
            lines.append(line([fmt.format(r[k]) if r.get(k) is not None else "-" for k, fmt, _ in COLUMNS]))
    ok = [r for r in rows if not r.get("error")]
    if ok:
        r = ok[0]
        nb = sorted({int(x["batches"]) for x in ok})
        nbs = " or ".join(str(x) for x in nb)
        lines.append(f"* mean over {nbs} batch{'es' if nb != [1] else ''} of the evaluation trace "
                     f"('imb worst batch': the largest per-batch imbalance)")
        lines.append(f"profiled on: {r['profile_source']} (fingerprint {r['profile_fingerprint']})")
        lines.append(f"evaluated on: {r['eval_source']} (fingerprint {r['eval_fingerprint']}), {r['batches']} batch(es) of {r['batch_size']:,}")
        lines.append(f"latency model: {r['latency_model']}; imbalance = max/mean lookups per DPU; padded bytes = largest DPU x {r['nr_dpus']:,} DPUs")
        lines.append(f"tables stored as {r.get('dtype', 'fp32')}; MRAM max = the fullest DPU: tables + request + output buffers")
    return "\n".join(lines)


def machine_info() -> dict:
    """Where a benchmark ran (for results files)."""
    return {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "system": platform.system()}


def sweep(tables_fn, dpus: Iterable[int], alphas: Iterable[float], batch_sizes: Iterable[int],
          strategies: Optional[Sequence[str]] = None, pooling: int = 20, profile_batches: int = 4,
          eval_batches: int = 1, seed: int = 0, estimator: Optional[CostEstimator] = None, options: Optional[dict] = None,
          progress=None, dtype: str = "fp32") -> list[dict]:
    """Compare strategies over a grid of DPU counts x Zipf alphas x batch sizes.

    tables_fn() -> the model's tables. One workload per (alpha, batch size), reused for every DPU
    count. ``options`` as in :func:`compare`. Returns the :func:`compare` rows with ``alpha`` added.
    """
    tables = tables_fn()
    est = estimator or CostEstimator()
    out = []
    for alpha in alphas:
        for b in batch_sizes:
            wl = zipf_workload(tables, alpha, pooling, b, profile_batches, eval_batches, seed)
            for n in dpus:
                rows = compare(tables, Topology(nr_dpus=int(n)), wl, b, strategies, est, options, dtype=dtype)
                for r in rows:
                    r["alpha"] = alpha
                    r["pooling"] = pooling
                out.extend(rows)
                if progress:
                    progress(f"alpha={alpha} batch={b} dpus={n}: done")
    return out


CSV_FIELDS = ["strategy", "dtype", "nr_dpus", "alpha", "batch_size", "pooling", "imbalance", "imbalance_max", "latency_us",
              "kernel_us", "cpu_to_dpu_us", "dpu_to_cpu_us", "speedup_vs_row_uniform", "replica_hit_rate",
              "request_bytes_padded", "request_bytes_useful", "output_bytes_padded", "output_bytes_useful",
              "mram_bytes_max", "mram_bytes_mean", "mram_use_max", "nr_shards", "batches", "plan_seconds", "eval_seconds",
              "latency_model", "profile_source", "profile_fingerprint", "eval_source", "eval_fingerprint", "error"]


def write_csv(rows: Sequence[dict], path) -> None:
    """Write sweep/compare rows (CSV_FIELDS columns; missing values empty)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})


def plot_sweep(rows: Sequence[dict], path_prefix) -> list[str]:
    """Plots of imbalance and of estimated latency per strategy vs DPU count: one panel per
    (batch size, alpha). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    if not ok:
        return []
    strategies = list(dict.fromkeys(r["strategy"] for r in ok))
    alphas = sorted(set(r["alpha"] for r in ok))
    bsz = sorted(set(r["batch_size"] for r in ok))
    files = []
    for metric, label in (("imbalance", "imbalance (max/mean lookups per DPU)"),
                          ("latency_us", "estimated batch latency (us)")):
        fig, axes = plt.subplots(len(bsz), len(alphas), figsize=(4.2 * len(alphas), 3.4 * len(bsz)), squeeze=False)
        for i, b in enumerate(bsz):
            for ax, a in zip(axes[i], alphas):
                for s in strategies:
                    pts = sorted((r["nr_dpus"], r[metric]) for r in ok
                                 if r["strategy"] == s and r["alpha"] == a and r["batch_size"] == b)
                    if pts:
                        ax.plot(*zip(*pts), marker="o", label=s)
                ax.set_title(f"alpha={a}, batch={b:,}", fontsize=9)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
            axes[i][0].set_ylabel(label, fontsize=8)
        for ax in axes[-1]:
            ax.set_xlabel("DPUs")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        f = f"{path_prefix}_{metric}.png"
        fig.savefig(f, dpi=100)
        plt.close(fig)
        files.append(f)
    return files
