"""Statistics of an embedding-lookup trace: skew, pooling, hot-set coverage, reuse; CDF plot.

What `updlrm trace stats FILE` prints, per table:

* ``rows``: declared table rows; ``touched``: distinct rows looked up (and their share of rows).
* pooling factor (lookups per bag): mean, p50, p99, max; share of empty bags.
* hot-set coverage: share of all lookups that hit the top 0.1 %, 1 %, 10 % most popular rows
  (``ceil(f * rows)`` rows, at least 1) - what a hot-row cache of that size would serve.
* ``alpha``: Zipf exponent fitted (MLE) on the counts of the top 1 % rows (at least 100 rows).
* reuse: *reuse interval* (lookups of the same table between two accesses to one row; exact, all
  lookups) median and p90, the *cold* share (first touches), and the *LRU stack distance*
  (distinct other rows between two accesses; exact on the first ``stack_sample`` lookups of the
  table) median, p90 and the hit rate of an LRU cache holding 1 % of the rows.

All computations are vectorised numpy (sorting, bincount, searchsorted); none loops over lookups.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from updlrm.data.trace import Trace

__all__ = [
    "TableStats",
    "access_counts",
    "hot_coverage",
    "reuse_intervals",
    "stack_distances",
    "table_stats",
    "trace_stats",
    "format_stats",
    "plot_access_cdf",
    "HOT_FRACTIONS",
]

#: Hot-set sizes reported, as fractions of a table's rows.
HOT_FRACTIONS = (0.001, 0.01, 0.1)


def access_counts(trace: Trace, table: int | str) -> np.ndarray:
    """Lookups per row of one table, int64 ``[table_rows[t]]`` (the partitioner's profile)."""
    t = trace.table_index(table)
    idx, _ = trace.table(t)
    return np.bincount(idx, minlength=trace.table_rows[t]).astype(np.int64)


def hot_coverage(counts: np.ndarray, fractions: Sequence[float] = HOT_FRACTIONS) -> list[float]:
    """Share of lookups that hit the ``ceil(f * rows)`` most popular rows, for each fraction f."""
    counts = np.asarray(counts)
    total = counts.sum()
    if total == 0:
        return [0.0 for _ in fractions]
    ordered = np.sort(counts)[::-1]
    cum = np.cumsum(ordered)
    out = []
    for f in fractions:
        k = min(max(1, math.ceil(f * counts.size)), counts.size)
        out.append(float(cum[k - 1] / total))
    return out


def reuse_intervals(indices: np.ndarray) -> tuple[np.ndarray, int]:
    """Reuse intervals of an access sequence: for every access to a row seen before, the number of
    positions since its previous access (1 = back to back). Returns (intervals int64, cold count)."""
    indices = np.asarray(indices)
    if indices.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    order = np.argsort(indices, kind="stable")  # positions grouped by row, ascending in time
    ids = indices[order]
    same = ids[1:] == ids[:-1]
    intervals = (order[1:] - order[:-1])[same]
    cold = int(indices.size - intervals.size)
    return intervals.astype(np.int64), cold


def previous_access(indices: np.ndarray) -> np.ndarray:
    """For each position, the position of the previous access to the same row, or -1; int64."""
    indices = np.asarray(indices)
    prev = np.full(indices.size, -1, dtype=np.int64)
    if indices.size:
        order = np.argsort(indices, kind="stable")
        ids = indices[order]
        same = np.flatnonzero(ids[1:] == ids[:-1])
        prev[order[same + 1]] = order[same]
    return prev


def stack_distances(indices: np.ndarray, block: int = 256) -> np.ndarray:
    """Exact LRU stack distances: for every access to a row seen before, the number of *distinct*
    other rows accessed since its previous access (0 = back to back); int64 ``[reuses]``, in order.

    Uses ``D_i = (i - p_i - 1) - #{j < i : p_j > p_i}`` (p = previous access, -1 if none): the
    accesses between p_i and i, minus those that repeat a row already seen after p_i. The count is
    done block by block: against all earlier blocks with one searchsorted on their sorted p
    values, inside a block with a ``block x block`` comparison. O(N^2 / block) memory traffic:
    meant for samples up to ~1e5 accesses.
    """
    prev = previous_access(indices)
    n = prev.size
    out = np.empty(n, dtype=np.int64)
    seen_sorted = np.zeros(0, dtype=np.int64)  # sorted p_j of all earlier blocks
    tri = np.tril(np.ones((block, block), dtype=bool), k=-1)  # tri[a, b]: b before a
    for start in range(0, n, block):  # loop over blocks of accesses, vectorised inside
        p = prev[start : start + block]
        m = p.size
        earlier = seen_sorted.size - np.searchsorted(seen_sorted, p, side="right")
        inside = ((p[None, :] > p[:, None]) & tri[:m, :m]).sum(axis=1)
        pos = np.arange(start, start + m)
        out[start : start + m] = (pos - p - 1) - earlier - inside
        seen_sorted = np.insert(seen_sorted, np.searchsorted(seen_sorted, np.sort(p)), np.sort(p))
    return out[prev >= 0]


@dataclass
class TableStats:
    """Statistics of one table of a trace (see the module docstring)."""

    name: str
    rows: int
    lookups: int
    samples: int
    touched: int
    touched_share: float
    pooling_mean: float
    pooling_p50: float
    pooling_p99: float
    pooling_max: int
    empty_bag_share: float
    hot_coverage: dict[str, float] = field(default_factory=dict)  # "0.1%" -> share of lookups
    alpha: float | None = None
    cold_share: float = 0.0
    reuse_interval_p50: float | None = None
    reuse_interval_p90: float | None = None
    stack_sample: int = 0
    stack_distance_p50: float | None = None
    stack_distance_p90: float | None = None
    lru_hit_rate_1pct: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _pct_label(f: float) -> str:
    return f"{f * 100:g}%"


def table_stats(trace: Trace, table: int | str, stack_sample: int = 100_000) -> TableStats:
    """Statistics of one table (``stack_sample`` = accesses used for LRU stack distances; 0 = skip)."""
    from updlrm.data.synthetic import fit_zipf_alpha  # same package; avoids an import cycle at load

    t = trace.table_index(table)
    idx, off = trace.table(t)
    rows = trace.table_rows[t]
    lens = np.diff(off)
    counts = np.bincount(idx, minlength=rows)
    touched = int(np.count_nonzero(counts))
    cover = hot_coverage(counts)
    alpha = None
    top = min(rows, max(100, rows // 100))
    if idx.size and np.count_nonzero(counts) >= 2:
        alpha = round(fit_zipf_alpha(counts, top=top), 4)
    intervals, cold = reuse_intervals(idx)
    st = TableStats(
        name=trace.table_names[t],
        rows=rows,
        lookups=int(idx.size),
        samples=trace.batch_size,
        touched=touched,
        touched_share=touched / rows,
        pooling_mean=float(lens.mean()) if lens.size else 0.0,
        pooling_p50=float(np.percentile(lens, 50)) if lens.size else 0.0,
        pooling_p99=float(np.percentile(lens, 99)) if lens.size else 0.0,
        pooling_max=int(lens.max()) if lens.size else 0,
        empty_bag_share=float(np.mean(lens == 0)) if lens.size else 0.0,
        hot_coverage={_pct_label(f): c for f, c in zip(HOT_FRACTIONS, cover)},
        alpha=alpha,
        cold_share=cold / idx.size if idx.size else 0.0,
    )
    if intervals.size:
        st.reuse_interval_p50 = float(np.percentile(intervals, 50))
        st.reuse_interval_p90 = float(np.percentile(intervals, 90))
    if stack_sample and idx.size:
        sample = idx[:stack_sample]
        dist = stack_distances(sample)
        st.stack_sample = int(sample.size)
        if dist.size:
            st.stack_distance_p50 = float(np.percentile(dist, 50))
            st.stack_distance_p90 = float(np.percentile(dist, 90))
        cache_rows = max(1, math.ceil(0.01 * rows))
        st.lru_hit_rate_1pct = float(np.count_nonzero(dist < cache_rows) / sample.size)
    return st


def trace_stats(trace: Trace, tables: Sequence[int | str] | None = None, stack_sample: int = 100_000) -> list[TableStats]:
    """:func:`table_stats` of every table (or of ``tables``)."""
    which = range(trace.nr_tables) if tables is None else [trace.table_index(t) for t in tables]
    return [table_stats(trace, t, stack_sample) for t in which]


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_stats(stats: Sequence[TableStats]) -> str:
    """A fixed-width text table of :func:`trace_stats` output, one line per table."""
    hot_labels = [_pct_label(f) for f in HOT_FRACTIONS]
    head = (
        f"{'table':<12} {'rows':>11} {'lookups':>11} {'touched':>8} {'pool':>6} {'p99':>5} "
        + " ".join(f"{'top' + h:>8}" for h in hot_labels)
        + f" {'alpha':>6} {'cold':>6} {'reuse50':>8} {'stack50':>8} {'stack90':>8} {'lru1%':>6}"
    )
    lines = [head, "-" * len(head)]
    for s in stats:
        lines.append(
            f"{s.name[:12]:<12} {s.rows:>11,} {s.lookups:>11,} {s.touched_share:>8.2%} {s.pooling_mean:>6.2f} "
            f"{s.pooling_p99:>5.0f} "
            + " ".join(f"{s.hot_coverage[h]:>8.2%}" for h in hot_labels)
            + f" {_fmt(s.alpha, '>6.3f')} {s.cold_share:>6.2%} {_fmt(s.reuse_interval_p50, '>8.0f')}"
            f" {_fmt(s.stack_distance_p50, '>8.0f')} {_fmt(s.stack_distance_p90, '>8.0f')}"
            f" {_fmt(s.lru_hit_rate_1pct, '>6.1%')}"
        )
    total = sum(s.lookups for s in stats)
    lines.append(f"{len(stats)} tables, {total:,} lookups; touched = share of rows looked up; pool = mean "
                 "lookups per bag; topX = share of lookups on the hottest X of rows; reuse50 = median reuse "
                 "interval (lookups); stack50/90 = LRU stack distance (distinct rows, first "
                 f"{max((s.stack_sample for s in stats), default=0):,} lookups); lru1% = LRU hit rate with 1% of rows cached")
    return "\n".join(lines)


def plot_access_cdf(trace: Trace, path, tables: Sequence[int | str] | None = None, max_tables: int = 8):
    """Plot the access CDF (share of lookups vs share of rows, hottest first; log x) to ``path``.

    Plots ``tables`` or the ``max_tables`` tables with most lookups. Returns the path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if tables is None:
        nnz = np.diff(trace.offsets[:: max(trace.batch_size, 1)])
        which = list(np.argsort(-nnz, kind="stable")[:max_tables])
    else:
        which = [trace.table_index(t) for t in tables]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for t in which:
        counts = access_counts(trace, int(t))
        if counts.sum() == 0:
            continue
        cum = np.cumsum(np.sort(counts)[::-1]) / counts.sum()
        x = np.arange(1, counts.size + 1) / counts.size
        # Thin very long curves to ~2k log-spaced points; the shape is what matters.
        keep = np.unique(np.geomspace(1, counts.size, num=min(counts.size, 2000)).astype(np.int64) - 1)
        ax.plot(x[keep], cum[keep], label=f"{trace.table_names[t]} ({trace.table_rows[t]:,} rows)")
    ax.set_xscale("log")
    ax.set_xlabel("share of rows (hottest first)")
    ax.set_ylabel("share of lookups")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Access CDF: {trace.batch_size:,} samples, {trace.nr_lookups:,} lookups")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
