"""Baseline strategies (issue 2): ``table_wise``, ``row_uniform`` and ``column_wise``.

They ignore access frequencies: the popularity-aware strategies of issue 4 are measured
against them.

* ``table_wise``: each whole table on one DPU, tables bin-packed by bytes (largest first onto the
  least-filled DPU). A table larger than one DPU's table budget is an error naming it, unless
  ``split_oversized=True``, which cuts it into the fewest equal row ranges that fit.
* ``row_uniform``: each table cut into ``min(rows, nr_dpus)`` equal contiguous row ranges, range i
  on DPU (start + i) mod nr_dpus, ``start`` advancing by the ranges of the tables before it so
  that small tables spread over different DPUs.
* ``column_wise``: every table cut into column slices of all its rows (slice widths multiples of
  2 elements, so rows stay 8-byte aligned without padding). Slices are handed out one at a time
  to the table whose slices are currently the largest until there are about ``nr_dpus`` slices,
  then bin-packed by bytes.
"""

from __future__ import annotations

import heapq
from typing import Optional

import numpy as np

from .errors import PlanDoesNotFitError, fmt_bytes
from .interfaces import Placement, Strategy
from .packing import column_bounds, even_bounds, lpt_assign
from .types import RowGroup, Shard


class TableWise(Strategy):
    """Whole tables bin-packed onto DPUs by bytes (see module doc)."""

    name = "table_wise"

    def __init__(self, split_oversized: bool = False):
        self.split_oversized = bool(split_oversized)

    def place(self, tables, topology, budget, profile=None) -> Placement:
        cap = budget.table_bytes
        groups: list[RowGroup] = []
        sizes, labels = [], []
        for t, spec in enumerate(tables):
            rb = budget.row_bytes(spec.dim)
            nbytes = spec.rows * rb
            parts = 1
            if nbytes > cap:
                if not self.split_oversized:
                    raise PlanDoesNotFitError(
                        f"table {t} {spec.name!r} ({spec.rows:,} x {spec.dim}) needs {fmt_bytes(nbytes)} but one DPU "
                        f"has {fmt_bytes(cap)} for tables ({fmt_bytes(budget.heap_bytes)} heap - request "
                        f"{budget.request_bytes:,} - output {budget.output_bytes:,}): {fmt_bytes(nbytes - cap)} short; "
                        f"use table_wise with split_oversized=True, row_uniform or column_wise",
                        shortfall_bytes=nbytes - cap,
                        table=t,
                    )
                rows_fit = cap // rb
                if rows_fit < 1:
                    raise PlanDoesNotFitError(
                        f"table {t} {spec.name!r}: one row of {rb:,} B exceeds the {fmt_bytes(cap)} a DPU has for tables",
                        shortfall_bytes=rb - cap,
                        table=t,
                    )
                parts = -(-spec.rows // rows_fit)
            b = even_bounds(spec.rows, parts)
            for i in range(parts):
                groups.append(RowGroup(table=t, row_lo=int(b[i]), row_hi=int(b[i + 1])))
                sizes.append(int(b[i + 1] - b[i]) * rb)
                labels.append(f"table {t} {spec.name!r}" + (f" rows [{b[i]:,}, {b[i + 1]:,})" if parts > 1 else ""))
        dpus = lpt_assign(np.array(sizes), topology.nr_dpus, cap, labels)
        shards = [
            Shard(table=g.table, group=gi, replica=0, dpu=int(d), col_lo=0, col_hi=tables[g.table].dim)
            for gi, (g, d) in enumerate(zip(groups, dpus))
        ]
        return Placement(groups, shards, {"split_oversized": self.split_oversized})


class RowUniform(Strategy):
    """Equal contiguous row ranges of every table over all DPUs (see module doc)."""

    name = "row_uniform"

    def place(self, tables, topology, budget, profile=None) -> Placement:
        n = topology.nr_dpus
        groups: list[RowGroup] = []
        shards: list[Shard] = []
        start = 0
        for t, spec in enumerate(tables):
            k = min(spec.rows, n)
            b = even_bounds(spec.rows, k).tolist()
            g0 = len(groups)
            groups.extend(RowGroup(table=t, row_lo=b[i], row_hi=b[i + 1]) for i in range(k))
            dpus = ((start + np.arange(k)) % n).tolist()
            shards.extend(
                Shard(table=t, group=g0 + i, replica=0, dpu=dpus[i], col_lo=0, col_hi=spec.dim) for i in range(k)
            )
            start = (start + k) % n
        return Placement(groups, shards, {})


class ColumnWise(Strategy):
    """Column slices of all rows, about one slice per DPU in all, bin-packed by bytes (see module doc).

    ``slices``: force this many slices per table (capped at ceil(dim/2)); default: chosen to fill
    the DPUs.
    """

    name = "column_wise"

    def __init__(self, slices: Optional[int] = None):
        self.slices = slices

    def place(self, tables, topology, budget, profile=None) -> Placement:
        n = topology.nr_dpus
        maxs = [-(-spec.dim // 2) for spec in tables]
        if self.slices is not None:
            counts = [max(1, min(int(self.slices), m)) for m in maxs]
        else:
            counts = [1] * len(tables)
            # give one more slice to the table whose slices are biggest, until ~nr_dpus slices
            heap = [(-tables[t].rows * budget.row_bytes(tables[t].dim), t) for t in range(len(tables)) if maxs[t] > 1]
            heapq.heapify(heap)
            total = len(tables)
            while heap and total < n:
                _, t = heapq.heappop(heap)
                counts[t] += 1
                total += 1
                if counts[t] < maxs[t]:
                    b = column_bounds(tables[t].dim, counts[t])
                    widest = int(np.diff(b).max())
                    heapq.heappush(heap, (-tables[t].rows * budget.row_bytes(widest), t))
        for t, spec in enumerate(tables):
            narrow = spec.rows * budget.row_bytes(int(np.diff(column_bounds(spec.dim, counts[t])).max()))
            if narrow > budget.table_bytes:
                raise PlanDoesNotFitError(
                    f"column_wise keeps all {spec.rows:,} rows of table {t} {spec.name!r} in every slice; its widest "
                    f"slice at {counts[t]} slices needs {fmt_bytes(narrow)} but one DPU has {fmt_bytes(budget.table_bytes)} "
                    f"for tables: {fmt_bytes(narrow - budget.table_bytes)} short; use row_uniform or tile_uniform",
                    shortfall_bytes=narrow - budget.table_bytes,
                    table=t,
                )
        groups = [RowGroup(table=t, row_lo=0, row_hi=spec.rows) for t, spec in enumerate(tables)]
        items, sizes, labels = [], [], []
        for t, spec in enumerate(tables):
            b = column_bounds(spec.dim, counts[t]).tolist()
            for i in range(len(b) - 1):
                items.append((t, b[i], b[i + 1]))
                sizes.append(spec.rows * budget.row_bytes(b[i + 1] - b[i]))
                labels.append(f"table {t} {spec.name!r} columns [{b[i]}, {b[i + 1]})")
        dpus = lpt_assign(np.array(sizes), n, budget.table_bytes, labels)
        shards = [Shard(table=t, group=t, replica=0, dpu=int(d), col_lo=lo, col_hi=hi) for (t, lo, hi), d in zip(items, dpus)]
        return Placement(groups, shards, {"slices_per_table": counts})
