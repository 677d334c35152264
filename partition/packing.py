"""Bin-packing and splitting helpers shared by the strategies (pure numpy / heapq, no DPU knowledge)."""

from __future__ import annotations

import heapq
from typing import Optional, Sequence

import numpy as np

from .errors import PlanDoesNotFitError, fmt_bytes


def even_bounds(n: int, parts: int) -> np.ndarray:
    """Boundaries of ``parts`` contiguous near-equal pieces of ``range(n)``: int64 [parts+1], first 0, last n."""
    return (np.arange(parts + 1, dtype=np.int64) * n) // parts


def column_bounds(dim: int, slices: int, granule: int = 2) -> np.ndarray:
    """Column boundaries of ``slices`` slices of ``[0, dim)``, each a multiple of ``granule`` elements
    (except possibly the last when ``dim`` is not a multiple). ``slices`` is capped at
    ceil(dim / granule). Returns int64 [slices'+1]."""
    units = -(-dim // granule)
    slices = max(1, min(slices, units))
    b = even_bounds(units, slices) * granule
    b[-1] = dim
    return np.minimum(b, dim)


def lpt_assign(
    sizes: np.ndarray,
    nr_bins: int,
    capacity: int,
    labels: Optional[Sequence[str]] = None,
    loads: Optional[np.ndarray] = None,
    weights: Optional[np.ndarray] = None,
    start_weights: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Longest-processing-time placement: items in decreasing ``weights`` (default ``sizes``) order,
    each onto the bin with the least weight so far among those with room for its ``sizes`` bytes.

    sizes: int64 [n] bytes per item; capacity: bytes per bin; loads: starting bytes per bin [nr_bins];
    labels[i] names item i in errors; start_weights: starting weight per bin [nr_bins]. Returns int64 [n] bin per item. Raises PlanDoesNotFitError
    when an item fits in no bin (naming it and the shortfall). Loop over items (not lookups).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    w = sizes if weights is None else np.asarray(weights, dtype=np.float64)
    used_np = np.zeros(nr_bins, dtype=np.int64) if loads is None else np.asarray(loads, dtype=np.int64)
    sw = np.zeros(nr_bins) if start_weights is None else np.asarray(start_weights, dtype=np.float64)
    # plain Python lists in the loop: indexing a numpy array per item costs more than the heap work
    used = used_np.tolist()
    size_l, w_l = sizes.tolist(), w.tolist()
    heap = [(float(s_) if weights is not None else float(u), u, b) for b, (s_, u) in enumerate(zip(sw.tolist(), used))]
    heapq.heapify(heap)
    out = [0] * len(size_l)
    order = np.argsort(-w, kind="stable")
    for i in order.tolist():
        need = size_l[i]
        skipped = []
        while heap:
            key, u, b = heapq.heappop(heap)
            if u != used[b]:
                continue  # stale
            if u + need <= capacity:
                break
            skipped.append((key, u, b))
        else:
            free = int(capacity - min(used))
            name = labels[i] if labels is not None else f"item {i}"
            raise PlanDoesNotFitError(
                f"{name} needs {fmt_bytes(need)} but the emptiest DPU has {fmt_bytes(free)} free for tables: "
                f"{fmt_bytes(need - free)} short",
                shortfall_bytes=need - free,
            )
        out[i] = b
        used[b] += need
        wk = key + w_l[i] if weights is not None else float(used[b])
        heapq.heappush(heap, (wk, used[b], b))
        for item in skipped:
            heapq.heappush(heap, item)
    return np.asarray(out, dtype=np.int64)


def weighted_cuts(load: np.ndarray, row_bytes_: int, load_unit: float, bytes_unit: float) -> np.ndarray:
    """Cut a table's rows into contiguous ranges each carrying about one unit of
    ``load / load_unit + bytes / bytes_unit`` (a row heavier than a unit gets a range of its own).

    load: float64 [rows] expected lookups per row; row_bytes_: bytes per stored row. Returns int64
    boundaries [k+1] (first 0, last rows), strictly increasing. Vectorized (cumsum + searchsorted).
    """
    rows = load.size
    u = load / load_unit + row_bytes_ / bytes_unit
    cu = np.cumsum(u)
    total = float(cu[-1])
    k = int(np.floor(total))
    if k < 1:
        return np.array([0, rows], dtype=np.int64)
    cut = np.searchsorted(cu, np.arange(1, k + 1, dtype=np.float64), side="left") + 1
    b = np.unique(np.concatenate(([0], np.minimum(cut, rows), [rows]))).astype(np.int64)
    return b
