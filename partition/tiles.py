"""Uniform tiles (UpDLRM level 1): ``tile_uniform``.

Every table is cut into equal tiles: ``row_parts`` equal row ranges x ``col_slices`` equal column
slices (widths multiples of 2 elements, so rows stay 8-byte aligned). Tiles are dealt to DPUs
round-robin, table after table, continuing where the previous table stopped.

The tile shape is chosen by the cost estimator: for each candidate number of column slices
(1, 2, 4, ... up to dim/2) with ``row_parts = ceil(nr_dpus / col_slices)`` (about one tile per DPU
and table), the expected per-DPU load of one batch is computed from the profile (or from uniform
access when there is none), turned into a latency by the latency model, and the fastest shape
that fits the MRAM budget wins. Column slices spread each hot row over several DPUs but cost more
partial sums (result bytes) and more small DMAs: the estimator weighs both.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import PlanDoesNotFitError, PlanError, fmt_bytes
from .interfaces import Placement, Strategy
from .packing import column_bounds, even_bounds
from .types import Plan, RowGroup, Shard
from .validate import shard_arrays


def _tiles(tables, n, col_slices: int):
    groups, shards = [], []
    pos = 0
    for t, spec in enumerate(tables):
        cb = column_bounds(spec.dim, col_slices).tolist()
        s = len(cb) - 1
        parts = min(spec.rows, max(1, -(-n // s)))
        rb = even_bounds(spec.rows, parts).tolist()
        for i in range(parts):
            gi = len(groups)
            groups.append(RowGroup(table=t, row_lo=rb[i], row_hi=rb[i + 1]))
            for j in range(s):
                shards.append(Shard(table=t, group=gi, replica=0, dpu=pos % n, col_lo=cb[j], col_hi=cb[j + 1]))
                pos += 1
    return groups, shards


class TileUniform(Strategy):
    """Equal row x column tiles; tile shape chosen by the estimator (see module doc).

    col_slices: force this many column slices per table (default: estimator's choice);
    batch_size: samples per batch the estimate is made for.
    """

    name = "tile_uniform"

    def __init__(self, col_slices: Optional[int] = None, batch_size: int = 2048, latency=None):
        if col_slices is not None and col_slices < 1:
            raise PlanError(f"tile_uniform col_slices must be >= 1, got {col_slices}")
        self.col_slices = col_slices
        self.batch_size = int(batch_size)
        self._latency = latency

    def place(self, tables, topology, budget, profile=None) -> Placement:
        from .cost import expected_cost  # cost imports strategies' modules lazily; avoid a cycle

        n = topology.nr_dpus
        max_s = max(-(-s.dim // 2) for s in tables)
        cands = [self.col_slices] if self.col_slices else [1 << k for k in range(0, 12) if (1 << k) <= max_s]
        best, tried = None, []
        for s in cands:
            groups, shards = _tiles(tables, n, s)
            plan = Plan(list(tables), topology, groups, shards, request_bytes=budget.request_bytes,
                        output_bytes=budget.output_bytes, dtype=budget.dtype)
            a = shard_arrays(plan)
            used = np.bincount(a["dpu"], weights=a["nbytes"], minlength=n)
            if used.max() > budget.table_bytes:
                tried.append({"col_slices": s, "fits": False, "short_bytes": int(used.max() - budget.table_bytes)})
                continue
            est = expected_cost(plan, profile, self.batch_size, self._latency)
            tried.append({"col_slices": s, "fits": True, "latency_us": est["latency_us"]})
            if best is None or est["latency_us"] < best[0]:
                best = (est["latency_us"], s, groups, shards)
        if best is None:
            short = min(x["short_bytes"] for x in tried)
            raise PlanDoesNotFitError(
                f"tile_uniform: no tile shape fits; the best ({[x['col_slices'] for x in tried]} column slices tried) "
                f"is {fmt_bytes(short)} short on its fullest DPU",
                shortfall_bytes=short,
            )
        _, s, groups, shards = best
        return Placement(groups, shards, {"col_slices": s, "candidates": tried})
