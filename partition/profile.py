"""Access profiles: per-table row frequencies measured on a trace, for popularity-aware strategies.

A profile is made from one trace (trace A) and must be evaluated on another (trace B, held out,
same distribution): :class:`AccessProfile` carries ``source`` and ``fingerprint`` so that reports
can show both and tests can assert they differ.

Traces are table-major (EmbeddingBag / KeyedJaggedTensor layout): ``indices`` int64 [nnz],
``offsets`` int64 [T*S + 1], ``S`` samples; bag (t, s) is ``indices[offsets[t*S+s]:offsets[t*S+s+1]]``.
Any object with ``indices``, ``offsets`` and ``batch_size`` (= S, e.g. ``updlrm.data.Trace``) works.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .errors import PlanError
from .types import TableSpec


@dataclass(frozen=True)
class TraceArrays:
    """A trace reduced to what the partitioner reads: indices [nnz], offsets [T*S+1], S samples."""

    indices: np.ndarray
    offsets: np.ndarray
    samples: int
    name: str = "trace"

    @property
    def nr_tables(self) -> int:
        return (len(self.offsets) - 1) // self.samples if self.samples else 0

    def table_slice(self, t: int) -> tuple[int, int]:
        """(first, last) positions in ``indices`` of table ``t``'s lookups."""
        return int(self.offsets[t * self.samples]), int(self.offsets[(t + 1) * self.samples])

    def batches(self, batch_size: int):
        """Yield (indices, offsets, B) of consecutive batches of ``batch_size`` samples (last may be shorter).

        offsets of each batch are table-major [T*B + 1] starting at 0. Loop over batches, not lookups.
        """
        S, T = self.samples, self.nr_tables
        off2 = self.offsets[:-1].reshape(T, S)
        ends = self.offsets[1:].reshape(T, S)
        lo, hi = getattr(self, "_window", (0, S))
        for s0 in range(lo, hi, batch_size):
            s1 = min(hi, s0 + batch_size)
            starts = off2[:, s0:s1]
            stops = ends[:, s0:s1]
            lengths = (stops - starts).ravel()
            idx = np.concatenate([self.indices[off2[t, s0]: ends[t, s1 - 1]] for t in range(T)]) if T else self.indices[:0]
            off = np.zeros(T * (s1 - s0) + 1, dtype=np.int64)
            np.cumsum(lengths, out=off[1:])
            yield idx, off, s1 - s0

    def slice_samples(self, start: int, stop: int, name: Optional[str] = None) -> "TraceArrays":
        """Samples [start, stop) of every table as a new trace (copies the indices)."""
        start, stop = max(0, int(start)), min(self.samples, int(stop))
        if stop <= start:
            raise PlanError(f"empty sample range [{start}, {stop}) of a {self.samples}-sample trace")
        (idx, off, b), = list(_TraceWindow(self, start, stop).batches(stop - start))
        return TraceArrays(idx, off, b, name or f"{self.name}[{start}:{stop}]")

    def fingerprint(self) -> str:
        """16 hex digits identifying the trace's contents (blake2b of indices and offsets)."""
        h = hashlib.blake2b(digest_size=8)
        h.update(np.ascontiguousarray(self.offsets).view(np.uint8))
        h.update(np.ascontiguousarray(self.indices).view(np.uint8))
        return h.hexdigest()


class _TraceWindow(TraceArrays):
    """A view of samples [lo, hi) of a trace for :meth:`TraceArrays.batches` (internal)."""

    def __init__(self, tr: TraceArrays, lo: int, hi: int):
        object.__setattr__(self, "indices", tr.indices)
        object.__setattr__(self, "offsets", tr.offsets)
        object.__setattr__(self, "samples", tr.samples)
        object.__setattr__(self, "name", tr.name)
        object.__setattr__(self, "_window", (lo, hi))


def as_trace(trace: Any, name: Optional[str] = None) -> TraceArrays:
    """Accept ``TraceArrays``, an object with ``indices``/``offsets``/``batch_size`` (updlrm.data.Trace),
    or a tuple ``(indices, offsets, samples)``; check the layout; return TraceArrays (no copy of indices)."""
    if isinstance(trace, TraceArrays):
        return trace if name is None else TraceArrays(trace.indices, trace.offsets, trace.samples, name)
    if isinstance(trace, tuple) and len(trace) == 3:
        indices, offsets, samples = trace
    elif hasattr(trace, "indices") and hasattr(trace, "offsets") and hasattr(trace, "batch_size"):
        indices, offsets, samples = trace.indices, trace.offsets, trace.batch_size
    else:
        raise PlanError(f"a trace must be (indices, offsets, samples) or have indices/offsets/batch_size; got {type(trace).__name__}")
    indices = np.asarray(indices, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    samples = int(samples)
    if samples < 1 or offsets.ndim != 1 or (len(offsets) - 1) % samples:
        raise PlanError(f"trace offsets have {len(offsets)} entries; need T*S+1 with S = {samples} samples")
    if offsets[0] != 0 or offsets[-1] != len(indices) or np.any(np.diff(offsets) < 0):
        raise PlanError("trace offsets must start at 0, never decrease, and end at len(indices)")
    return TraceArrays(indices, offsets, samples, name or getattr(trace, "name", None) or "trace")


@dataclass
class AccessProfile:
    """Per-table row access counts measured on one trace.

    counts[t]: int64 [rows_t], lookups of each row of table t in the trace; ``samples``: bags per
    table in the trace; ``source``: what trace it came from (for reports); ``fingerprint``: the
    trace's content hash; ``coaccess[t]`` (optional): (hot_rows [K], counts [K, K]) bags holding
    both rows i and j among the table's K hottest rows.
    """

    counts: list[np.ndarray]
    samples: int
    source: str
    fingerprint: str
    coaccess: Optional[list[tuple[np.ndarray, np.ndarray]]] = None

    @property
    def nr_tables(self) -> int:
        return len(self.counts)

    def expected_lookups(self, t: int, batch_size: int) -> np.ndarray:
        """Expected lookups of each row of table t in one batch of ``batch_size`` samples: float64 [rows_t]."""
        return self.counts[t] * (batch_size / self.samples)

    def hot_coverage(self, t: int, k: int) -> float:
        """Share of table t's lookups taken by its ``k`` most accessed rows (0..1)."""
        c = self.counts[t]
        total = c.sum()
        if total == 0:
            return 0.0
        k = min(int(k), c.size)
        top = np.partition(c, c.size - k)[c.size - k:] if k > 0 else c[:0]
        return float(top.sum() / total)

    def check_tables(self, tables: Sequence[TableSpec]) -> None:
        """Raise PlanError unless the profile has one count array per table with that table's rows."""
        if len(tables) != len(self.counts):
            raise PlanError(f"profile from {self.source!r} has {len(self.counts)} tables but the model has {len(tables)}")
        for t, (spec, c) in enumerate(zip(tables, self.counts)):
            if c.size != spec.rows:
                raise PlanError(f"profile from {self.source!r}: table {t} {spec.name!r} has {c.size:,} rows there, {spec.rows:,} in the model")

    def sample_batch(self, batch_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
        """A synthetic batch drawn from the profile itself: per table, each bag gets the table's
        mean pooling (rounded) lookups, rows drawn i.i.d. from the profiled frequencies.
        Returns (indices [nnz], offsets [T*B+1], B), table-major. For strategies that tune
        themselves without touching any held-out trace. Vectorized (searchsorted on the CDF)."""
        rng = np.random.default_rng(seed)
        B = int(batch_size)
        parts, lengths = [], []
        for c in self.counts:
            total = float(c.sum())
            pool = int(round(total / self.samples)) if self.samples else 0
            n = pool * B
            if n == 0 or total == 0:
                parts.append(np.zeros(0, dtype=np.int64))
                lengths.append(np.zeros(B, dtype=np.int64))
                continue
            cdf = np.cumsum(c, dtype=np.float64)
            parts.append(np.minimum(np.searchsorted(cdf, rng.random(n) * total, side="right"), c.size - 1).astype(np.int64))
            lengths.append(np.full(B, pool, dtype=np.int64))
        off = np.zeros(len(self.counts) * B + 1, dtype=np.int64)
        np.cumsum(np.concatenate(lengths), out=off[1:])
        return np.concatenate(parts), off, B

    def summary(self, ks: Sequence[int] = (10, 1000)) -> dict:
        """For reports: source, fingerprint, samples, lookups, and hot-set coverage of the top k rows over all tables."""
        tot = sum(int(c.sum()) for c in self.counts)
        cov = {}
        for k in ks:
            hit = sum(self.hot_coverage(t, k) * float(c.sum()) for t, c in enumerate(self.counts))
            cov[f"top{k}_per_table"] = hit / tot if tot else 0.0
        return {"source": self.source, "fingerprint": self.fingerprint, "samples": self.samples, "lookups": tot, **cov}


def profile_trace(trace: Any, tables: Sequence[TableSpec], source: Optional[str] = None, coaccess_top: int = 0) -> AccessProfile:
    """Count row accesses per table in ``trace`` (see :func:`as_trace`). Vectorized (bincount per table).

    coaccess_top: if > 0, also count, for each table's ``coaccess_top`` hottest rows, how many bags
    hold each pair (a [K, K] matrix, diagonal = bags holding the row).
    Raises PlanError when the trace's table count or an index does not match ``tables``.
    """
    tr = as_trace(trace, source)
    if tr.nr_tables != len(tables):
        raise PlanError(f"trace {tr.name!r} has {tr.nr_tables} tables but the model has {len(tables)}")
    counts, co = [], []
    for t, spec in enumerate(tables):
        a, b = tr.table_slice(t)
        ids = tr.indices[a:b]
        if ids.size and (ids.min() < 0 or ids.max() >= spec.rows):
            pos = int(np.flatnonzero((ids < 0) | (ids >= spec.rows))[0])
            raise PlanError(f"trace {tr.name!r}: table {t} {spec.name!r} lookup {pos} is row {int(ids[pos])}, outside [0, {spec.rows:,})")
        c = np.bincount(ids, minlength=spec.rows).astype(np.int64)
        counts.append(c)
        if coaccess_top > 0:
            k = min(coaccess_top, spec.rows)
            hot = np.sort(np.argsort(-c, kind="stable")[:k])
            pos = np.searchsorted(hot, ids)
            pos = np.minimum(pos, k - 1)
            hit = hot[pos] == ids
            bag = np.repeat(np.arange(tr.samples), np.diff(tr.offsets[t * tr.samples:(t + 1) * tr.samples + 1]))
            m = np.zeros((tr.samples, k), dtype=np.float32)
            m[bag[hit], pos[hit]] = 1.0
            co.append((hot, (m.T @ m).astype(np.int64)))
    return AccessProfile(counts, tr.samples, tr.name, tr.fingerprint(), co if coaccess_top > 0 else None)
