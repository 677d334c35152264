"""Interfaces of the partitioner's pluggable parts (torchrec-planner style): strategies and costs.

A :class:`Strategy` turns tables + topology (+ an optional access profile) into a
:class:`Placement` (row groups and shards, without MRAM offsets); the planner
(:mod:`partition.planner`) assigns offsets and validates. A cost estimator
(:mod:`partition.cost`) turns a plan and a trace into per-DPU loads and metrics; its latency term
is a :data:`LatencyFn` the caller may replace (e.g. with ``updlrm.timing_model``).

Adding a strategy is one small file: subclass :class:`Strategy`, set ``name``, implement
``place``, and call :func:`partition.planner.register_strategy` (see docs/partition.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Sequence

import numpy as np

from .types import RowGroup, Shard, TableSpec, Topology, row_bytes


@dataclass(frozen=True)
class Budget:
    """Per-DPU MRAM budget of a plan, bytes.

    ``table_bytes`` = topology heap - ``request_bytes`` - ``output_bytes``: what shards may use.
    ``dtype``: element type of the stored tables; strategies size rows with :meth:`row_bytes`.
    """

    heap_bytes: int
    request_bytes: int
    output_bytes: int
    dtype: str = "fp32"

    def row_bytes(self, nr_cols: int) -> int:
        """MRAM bytes of one stored row of ``nr_cols`` elements in this budget's dtype."""
        return row_bytes(nr_cols, self.dtype)

    @property
    def table_bytes(self) -> int:
        return self.heap_bytes - self.request_bytes - self.output_bytes


@dataclass
class Placement:
    """What a strategy returns: groups and shards (mram_offset left at -1) and report metadata."""

    groups: list[RowGroup]
    shards: list[Shard]
    meta: dict = field(default_factory=dict)


class Strategy(ABC):
    """A placement policy. Options go to the constructor; ``place`` must not modify its inputs.

    ``needs_profile``: the strategy reads an :class:`partition.profile.AccessProfile` (per-table
    row frequencies) and fails with a clear error without one.
    """

    name: ClassVar[str] = "custom"
    needs_profile: ClassVar[bool] = False

    def __init__(self) -> None:
        """Strategies without options take none; subclasses add keyword options."""

    @abstractmethod
    def place(
        self,
        tables: Sequence[TableSpec],
        topology: Topology,
        budget: Budget,
        profile: Optional[Any] = None,
    ) -> Placement:
        """Return the groups and shards of a plan for ``tables`` on ``topology`` within ``budget``."""

    def describe(self) -> dict:
        """Parameters for reports (JSON-serializable)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and _jsonable(v)}


#: Latency of one DPU for one batch, in microseconds, from its counters: called with
#: ``lookups [nr_dpus]`` (int64), ``mram_read_bytes [nr_dpus]`` (int64) and ``topology``;
#: returns float64 ``[nr_dpus]`` microseconds. The batch latency is the max over DPUs.
LatencyFn = Callable[[np.ndarray, np.ndarray, Topology], np.ndarray]


def _jsonable(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool, type(None))) or (
        isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, str, bool)) for x in v)
    )
