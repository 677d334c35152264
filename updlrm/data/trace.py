"""Embedding-lookup traces: the :class:`Trace` type and the dlrm_datasets file layout.

A trace is the sparse half of a stream of samples: for every table and every sample, the list of
row ids the sample looks up (a *bag*). It is what the partitioner profiles and what the engine's
batches carry. Layout (the same flat, table-major layout as :class:`updlrm.batch.Batch` and as
facebookresearch/dlrm_datasets)::

    T tables, B samples.  offsets: int64 [T*B + 1], offsets[0] = 0, non-decreasing
    bag (table t, sample b) = indices[offsets[t*B + b] : offsets[t*B + b + 1]]
    table t = indices[offsets[t*B] : offsets[(t+1)*B]]   (row ids local to table t)

    e.g. T=2, B=3:  table 0: [4, 1] [] [7]   table 1: [0] [2, 2] [5]
         indices = [4, 1, 7, 0, 2, 2, 5]
         offsets = [0, 2, 2, 3, 4, 6, 7]      lengths = [[2, 0, 1], [1, 2, 1]]

On disk (:func:`save_trace` / :func:`load_trace`) a trace is what Meta's dlrm_datasets files hold:
``torch.save((indices, offsets, lengths))`` with int64 tensors ``indices [nnz]``, ``offsets
[T*B+1]`` and ``lengths [T, B]``, gzip-compressed when the name ends in ``.gz`` (reading detects
gzip by its magic bytes). The tuple stays exactly three tensors so other tools can read our files;
table names and row counts go into an optional side file ``<path>.meta.json``.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["Trace", "load_trace", "save_trace", "gather_segments"]

_GZIP_MAGIC = b"\x1f\x8b"
_META_SUFFIX = ".meta.json"
_META_FORMAT = "updlrm-trace-meta"


def gather_segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Positions ``[s_0, s_0+1, ..., s_0+l_0-1, s_1, ...]`` of the segments, int64 [sum(lengths)].

    Vectorised (no Python loop): the building block for cutting bags out of a flat layout.
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # Each output position is its segment's start plus its rank inside the segment.
    seg_first_out = np.cumsum(lengths) - lengths  # where each segment begins in the output
    shift = np.repeat(starts - seg_first_out, lengths)
    return shift + np.arange(total, dtype=np.int64)


def _as_int64(name: str, values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"Trace {name} must hold integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


@dataclass
class Trace:
    """A table-major embedding-lookup trace (see the module docstring for the layout).

    Attributes:
        indices: int64 ``[nnz]``, row ids local to their table, table-major.
        offsets: int64 ``[T*B + 1]``; bag (t, b) is ``indices[offsets[t*B+b]:offsets[t*B+b+1]]``.
        batch_size: ``B``, samples per table in this trace (all of them, not a serving batch).
        table_names: ``T`` names (default ``t0, t1, ...``).
        table_rows: ``T`` row counts; every index of table t is in ``[0, table_rows[t])``
            (default: max index + 1, at least 1).

    Construction validates everything (offset count, monotonicity, index range) and raises
    ``ValueError`` naming the table, the position and the value. Useful views:

    * ``trace.table(t) -> (indices_t, offsets_t)``: EmbeddingBag-style pieces for table t,
      ``offsets_t`` has ``B + 1`` entries starting at 0 (include_last_offset form).
    * ``trace.lengths() -> int64 [T, B]``: the pooling factor of every bag.
    * ``trace.batches(n) -> Iterator[Trace]``: consecutive slices of ``n`` samples (the last may be
      shorter unless ``drop_last``); together they cover every lookup exactly once.
    * ``trace.select(tables)``: a trace of a subset of tables (by position or name).
    * ``trace.to_batch(dense=None, n_dense=13)``: an :class:`updlrm.batch.Batch` for the engine;
      ``Trace.from_batch(batch)`` and ``Trace.concat(traces)`` go the other way (record traffic).

    For the partitioner, the per-table access profile is ``np.bincount(trace.table(t)[0],
    minlength=trace.table_rows[t])`` (see :func:`updlrm.data.stats.access_counts`).
    """

    indices: np.ndarray
    offsets: np.ndarray
    batch_size: int
    table_names: list[str] | None = None
    table_rows: list[int] | None = None

    def __post_init__(self) -> None:
        self.indices = _as_int64("indices", self.indices)
        self.offsets = _as_int64("offsets", self.offsets)
        self.batch_size = int(self.batch_size)
        if self.indices.ndim != 1 or self.offsets.ndim != 1:
            raise ValueError(
                f"Trace indices and offsets must be 1-D, got shapes {self.indices.shape} and {self.offsets.shape}"
            )
        if self.batch_size < 0:
            raise ValueError(f"Trace batch_size must be >= 0, got {self.batch_size}")
        n_off = self.offsets.size - 1
        if n_off < 0:
            raise ValueError("Trace offsets must have T*B + 1 entries, got an empty array")
        if self.batch_size == 0:
            if self.table_names is None and self.table_rows is None:
                raise ValueError("a Trace with batch_size 0 needs table_names or table_rows to know T")
            nr_tables = len(self.table_names if self.table_names is not None else self.table_rows)
        else:
            if n_off % self.batch_size:
                raise ValueError(
                    f"Trace offsets has {self.offsets.size} entries; need T*B + 1 with B = {self.batch_size} "
                    f"({self.offsets.size - 1} is not a multiple of {self.batch_size})"
                )
            nr_tables = n_off // self.batch_size
        if self.offsets[0] != 0:
            raise ValueError(f"Trace offsets[0] must be 0, got {int(self.offsets[0])}")
        if self.offsets[-1] != self.indices.size:
            raise ValueError(
                f"Trace offsets[-1] = {int(self.offsets[-1])} but there are {self.indices.size} indices"
            )
        steps = np.diff(self.offsets)
        if steps.size and steps.min() < 0:
            pos = int(np.argmax(steps < 0))
            t, b = divmod(pos, max(self.batch_size, 1))
            raise ValueError(
                f"Trace offsets decrease at position {pos + 1} (table {t}, sample {b}): "
                f"{int(self.offsets[pos])} -> {int(self.offsets[pos + 1])}"
            )
        if self.table_names is None:
            self.table_names = [f"t{t}" for t in range(nr_tables)]
        self.table_names = [str(n) for n in self.table_names]
        if len(self.table_names) != nr_tables:
            raise ValueError(f"Trace has {nr_tables} tables but {len(self.table_names)} table_names")
        if len(set(self.table_names)) != nr_tables:
            raise ValueError(f"Trace table_names must be unique, got {self.table_names}")
        max_per_table = self._max_index_per_table(nr_tables)
        if self.indices.size and self.indices.min() < 0:
            pos = int(np.argmax(self.indices < 0))
            t = self._table_of_position(pos)
            raise ValueError(f"Trace index at position {pos} (table {t}) is {int(self.indices[pos])}; must be >= 0")
        if self.table_rows is None:
            self.table_rows = [max(int(m) + 1, 1) for m in max_per_table]
        self.table_rows = [int(r) for r in self.table_rows]
        if len(self.table_rows) != nr_tables:
            raise ValueError(f"Trace has {nr_tables} tables but {len(self.table_rows)} table_rows")
        for t, (rows, mx) in enumerate(zip(self.table_rows, max_per_table)):
            if rows < 1:
                raise ValueError(f"Trace table {t} ({self.table_names[t]}) has table_rows {rows}; must be >= 1")
            if mx >= rows:
                seg = self.indices[self.offsets[t * self.batch_size] : self.offsets[(t + 1) * self.batch_size]]
                pos = int(np.argmax(seg >= rows)) + int(self.offsets[t * self.batch_size])
                raise ValueError(
                    f"Trace table {t} ({self.table_names[t]}): index {int(self.indices[pos])} at position {pos} "
                    f"is out of range [0, {rows})"
                )

    def _max_index_per_table(self, nr_tables: int) -> np.ndarray:
        out = np.full(nr_tables, -1, dtype=np.int64)
        if self.batch_size == 0 or self.indices.size == 0:
            return out
        bounds = self.offsets[:: self.batch_size]  # [T+1] table boundaries in indices
        nonempty = bounds[1:] > bounds[:-1]
        if nonempty.any():
            out[nonempty] = np.maximum.reduceat(self.indices, bounds[:-1][nonempty])
        return out

    def _table_of_position(self, pos: int) -> int:
        bounds = self.offsets[:: max(self.batch_size, 1)]
        return int(np.searchsorted(bounds, pos, side="right") - 1)

    # -- shape ----------------------------------------------------------------------------------
    @property
    def nr_tables(self) -> int:
        return len(self.table_names)

    @property
    def nr_lookups(self) -> int:
        return int(self.indices.size)

    def __len__(self) -> int:
        """Number of samples (``batch_size``)."""
        return self.batch_size

    def lengths(self) -> np.ndarray:
        """Pooling factor of every bag, int64 ``[T, B]``."""
        return np.diff(self.offsets).reshape(self.nr_tables, self.batch_size)

    def table_index(self, table: int | str) -> int:
        """Position of a table given by position or name (``ValueError`` when unknown)."""
        if isinstance(table, (int, np.integer)):
            t = int(table)
            if not 0 <= t < self.nr_tables:
                raise ValueError(f"table {t} is out of range [0, {self.nr_tables})")
            return t
        try:
            return self.table_names.index(str(table))
        except ValueError:
            raise ValueError(f"unknown table {table!r}; tables: {', '.join(self.table_names)}") from None

    def table(self, table: int | str) -> tuple[np.ndarray, np.ndarray]:
        """Table ``t``'s bags: ``(indices_t [nnz_t], offsets_t [B+1])``, offsets starting at 0.

        ``torch.nn.EmbeddingBag(..., include_last_offset=True)(indices_t, offsets_t)`` or
        ``offsets_t[:-1]`` for the default EmbeddingBag form. ``indices_t`` is a view.
        """
        t = self.table_index(table)
        B = self.batch_size
        off = self.offsets[t * B : (t + 1) * B + 1]
        return self.indices[off[0] : off[-1]], off - off[0]

    # -- cutting --------------------------------------------------------------------------------
    def slice_samples(self, start: int, stop: int) -> "Trace":
        """Samples ``[start, stop)`` of every table, as a new trace (same tables and rows)."""
        B = self.batch_size
        if not 0 <= start <= stop <= B:
            raise ValueError(f"sample range [{start}, {stop}) is outside [0, {B}]")
        n = stop - start
        T = self.nr_tables
        bag_starts = self.offsets[:-1].reshape(T, B)[:, start:stop]
        bag_lens = self.lengths()[:, start:stop]
        pos = gather_segments(bag_starts.reshape(-1), bag_lens.reshape(-1))
        offsets = np.zeros(T * n + 1, dtype=np.int64)
        np.cumsum(bag_lens.reshape(-1), out=offsets[1:])
        return Trace(self.indices[pos], offsets, n, list(self.table_names), list(self.table_rows))

    def batches(self, batch_size: int, drop_last: bool = False) -> Iterator["Trace"]:
        """Consecutive slices of ``batch_size`` samples; they cover the trace exactly once
        (the last one is shorter unless ``drop_last``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, self.batch_size, batch_size):
            stop = min(start + batch_size, self.batch_size)
            if drop_last and stop - start < batch_size:
                return
            yield self.slice_samples(start, stop)

    def select(self, tables: Sequence[int | str]) -> "Trace":
        """A trace holding only ``tables`` (positions or names), in the order given."""
        idx = [self.table_index(t) for t in tables]
        if not idx:
            raise ValueError("select needs at least one table")
        B = self.batch_size
        starts = np.array([self.offsets[t * B] for t in idx], dtype=np.int64)
        ends = np.array([self.offsets[(t + 1) * B] for t in idx], dtype=np.int64)
        pos = gather_segments(starts, ends - starts)
        lens = self.lengths()[idx]
        offsets = np.zeros(len(idx) * B + 1, dtype=np.int64)
        np.cumsum(lens.reshape(-1), out=offsets[1:])
        return Trace(
            self.indices[pos], offsets, B, [self.table_names[t] for t in idx], [self.table_rows[t] for t in idx]
        )

    @staticmethod
    def concat(traces: Sequence["Trace"]) -> "Trace":
        """Samples of several traces with the same tables, one after the other."""
        if not traces:
            raise ValueError("concat needs at least one trace")
        first = traces[0]
        for i, tr in enumerate(traces[1:], 1):
            if tr.table_names != first.table_names:
                raise ValueError(f"trace {i} has tables {tr.table_names}, expected {first.table_names}")
        T = first.nr_tables
        lens = np.concatenate([tr.lengths() for tr in traces], axis=1)  # [T, sum B]
        starts = np.concatenate(
            [tr.offsets[:-1].reshape(T, tr.batch_size) + base for tr, base in zip(traces, _bases(traces))], axis=1
        )
        all_indices = np.concatenate([tr.indices for tr in traces])
        pos = gather_segments(starts.reshape(-1), lens.reshape(-1))
        offsets = np.zeros(lens.size + 1, dtype=np.int64)
        np.cumsum(lens.reshape(-1), out=offsets[1:])
        rows = [max(r) for r in zip(*(tr.table_rows for tr in traces))]
        return Trace(all_indices[pos], offsets, lens.shape[1], list(first.table_names), rows)

    # -- conversion -----------------------------------------------------------------------------
    @classmethod
    def from_batch(cls, batch, table_names=None, table_rows=None) -> "Trace":
        """The sparse part of an :class:`updlrm.batch.Batch` (or anything with ``indices``,
        ``offsets`` and ``batch_size``) as a trace, e.g. to record served traffic; concatenate
        several with :meth:`concat`."""
        return cls(batch.indices, batch.offsets, int(batch.batch_size), table_names, table_rows)

    def to_batch(self, dense=None, n_dense: int = 13, seed: int = 0):
        """This trace as an :class:`updlrm.batch.Batch` (the engine's input).

        ``dense``: float32 ``[B, n_dense]``; when None, dense features are drawn from a seeded
        standard normal (traces carry no dense features).
        """
        from updlrm.batch import Batch  # lazy: the engine's module

        if dense is None:
            gen = torch.Generator().manual_seed(int(seed))
            dense = torch.randn(self.batch_size, n_dense, generator=gen)
        dense = torch.as_tensor(dense, dtype=torch.float32)
        if dense.shape[0] != self.batch_size:
            raise ValueError(f"dense has {dense.shape[0]} rows but the trace has {self.batch_size} samples")
        return Batch(dense, torch.from_numpy(self.indices.copy()), torch.from_numpy(self.offsets.copy()))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(indices, offsets, lengths)`` as int64 torch tensors, the dlrm_datasets tuple."""
        return (
            torch.from_numpy(self.indices.copy()),
            torch.from_numpy(self.offsets.copy()),
            torch.from_numpy(np.ascontiguousarray(self.lengths())),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        return (
            self.batch_size == other.batch_size
            and self.table_names == other.table_names
            and self.table_rows == other.table_rows
            and np.array_equal(self.offsets, other.offsets)
            and np.array_equal(self.indices, other.indices)
        )

    def __repr__(self) -> str:
        return f"Trace(tables={self.nr_tables}, samples={self.batch_size}, lookups={self.nr_lookups})"


def _bases(traces: Sequence[Trace]) -> list[int]:
    out, acc = [], 0
    for tr in traces:
        out.append(acc)
        acc += tr.indices.size
    return out


# -- files ----------------------------------------------------------------------------------------
def save_trace(trace: Trace, path: str | os.PathLike, meta: bool = True) -> Path:
    """Write ``trace`` in the dlrm_datasets layout: ``torch.save((indices, offsets, lengths))``,
    gzip'd when ``path`` ends in ``.gz``; with ``meta``, table names and rows go to
    ``<path>.meta.json``. Returns the path written."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(trace.tensors(), buf)
    data = buf.getvalue()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    if meta:
        info = {
            "format": _META_FORMAT,
            "version": 1,
            "batch_size": trace.batch_size,
            "table_names": trace.table_names,
            "table_rows": trace.table_rows,
        }
        Path(str(path) + _META_SUFFIX).write_text(json.dumps(info, indent=1))
    return path


def _load_tuple(path: Path):
    """torch.load of a plain file (memory-mapped) or a gzip'd one (streamed, never holding both the
    compressed and the decompressed bytes)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    try:
        if magic == _GZIP_MAGIC:
            with gzip.open(path, "rb") as f:
                return torch.load(f, weights_only=True, map_location="cpu")
        try:
            return torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        except RuntimeError:  # legacy (non-zip) torch files cannot be memory-mapped
            return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises several types for a bad pickle
        raise ValueError(f"{path}: not a torch-saved (indices, offsets, lengths) trace: {exc}") from exc


def load_trace(
    path: str | os.PathLike,
    tables: Sequence[int | str] | None = None,
    table_rows: Sequence[int] | None = None,
    table_names: Sequence[str] | None = None,
) -> Trace:
    """Read a dlrm_datasets-layout trace (plain or gzip'd torch file of (indices, offsets, lengths)).

    ``lengths`` may be ``[T, B]`` or flat ``[T*B]``; T and B come from its shape, or from
    ``<path>.meta.json`` / ``table_rows`` / ``table_names`` when it is flat. Files holding only
    ``(indices, offsets)`` need one of those to know T. ``tables`` keeps a subset (positions or
    names, in that order). Row counts: ``table_rows`` if given, else the meta file's, else
    max index + 1. Every inconsistency raises ``ValueError`` naming the file and what is wrong.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trace file not found: {path}")
    obj = _load_tuple(path)
    if isinstance(obj, dict):
        obj = tuple(obj.get(k) for k in ("indices", "offsets", "lengths") if obj.get(k) is not None)
    if not isinstance(obj, (tuple, list)) or len(obj) not in (2, 3):
        raise ValueError(f"{path}: expected a tuple (indices, offsets[, lengths]), got {type(obj).__name__}")
    indices = _as_int64("indices", obj[0])
    offsets = _as_int64("offsets", obj[1])
    lengths = _as_int64("lengths", obj[2]) if len(obj) == 3 else None

    meta_path = Path(str(path) + _META_SUFFIX)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta and meta.get("format") != _META_FORMAT:
        raise ValueError(f"{meta_path}: not an updlrm trace meta file")
    names = list(table_names) if table_names is not None else meta.get("table_names")
    rows = list(table_rows) if table_rows is not None else meta.get("table_rows")

    if lengths is not None and lengths.ndim == 2:
        T, B = lengths.shape
    else:
        T = len(names) if names is not None else (len(rows) if rows is not None else None)
        if T is None:
            raise ValueError(
                f"{path}: cannot tell the number of tables (lengths is not [T, B]); pass table_rows or table_names"
            )
        if T < 1 or (offsets.size - 1) % T:
            raise ValueError(f"{path}: offsets has {offsets.size} entries, not T*B + 1 for T = {T}")
        B = (offsets.size - 1) // T
    if offsets.size != T * B + 1:
        raise ValueError(f"{path}: offsets has {offsets.size} entries; lengths [T={T}, B={B}] needs {T * B + 1}")
    if lengths is not None and not np.array_equal(lengths.reshape(-1), np.diff(offsets)):
        pos = int(np.argmax(lengths.reshape(-1) != np.diff(offsets)))
        raise ValueError(
            f"{path}: lengths disagree with offsets at bag {pos} (table {pos // max(B, 1)}, sample {pos % max(B, 1)})"
        )
    trace = Trace(indices, offsets, B, names, rows)
    if tables is not None:
        trace = trace.select(list(tables))
    return trace


def replace(trace: Trace, **changes) -> Trace:
    """A copy of ``trace`` with some fields replaced (re-validated)."""
    return dataclasses.replace(trace, **changes)
