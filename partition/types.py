"""Value types of the partitioner: tables, the DPU topology, row groups, shards and the plan.

A *plan* places every embedding table of a model on DPUs. Its vocabulary:

* A **row group** is a set of rows of one table: a contiguous range ``[row_lo, row_hi)`` or an
  explicit sorted array of row ids (``rows``). Every row of a table belongs to exactly one
  ``base`` group; ``cache`` groups (hot-row caches) repeat rows that also sit in a base group.
* A **replica** of a row group is one complete copy of its rows, cut into column slices
  ``[col_lo, col_hi)`` that together cover ``[0, dim)``. Base groups usually have one replica;
  cache groups have several, and the packer chooses among them per batch and per lookup.
* A **shard** is one column slice of one replica of one row group, resident on one DPU at
  ``mram_offset`` bytes from that DPU's MRAM heap. Its local row ``i`` is the group's ``i``-th
  row (``row_lo + i`` for a range, ``rows[i]`` for a set).

Example: table 0 has 1,000 rows of dim 64, split in two row ranges, each cut in two column
halves, on four DPUs::

    groups = [RowGroup(table=0, row_lo=0, row_hi=500), RowGroup(table=0, row_lo=500, row_hi=1000)]
    shards = [Shard(table=0, group=0, replica=0, dpu=0, col_lo=0, col_hi=32),
              Shard(table=0, group=0, replica=0, dpu=1, col_lo=32, col_hi=64),
              Shard(table=0, group=1, replica=0, dpu=2, col_lo=0, col_hi=32),
              Shard(table=0, group=1, replica=0, dpu=3, col_lo=32, col_hi=64)]

Sizes carry their unit in the name (``mram_bytes``); all byte sizes are integers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

MIB = 1 << 20
KIB = 1 << 10

#: Bytes per fp32 / int32 element, and per element of a partial sum (fp32 or int32 for every dtype).
ELEM_BYTES = 4
#: Element types a table may be stored in (UPDLRM_DTYPE_* of dpu_kernels/include/updlrm_abi.h)
#: and the bytes of one stored element of each.
DTYPE_BYTES = {"fp32": 4, "int32": 4, "int16": 2, "int8": 1}
DTYPES = tuple(DTYPE_BYTES)
#: MRAM offsets and row strides are multiples of this (UPMEM DMA rule).
MRAM_ALIGN = 8


def dtype_bytes(dtype: str) -> int:
    """Bytes of one stored element of ``dtype`` (ValueError naming the allowed dtypes)."""
    try:
        return DTYPE_BYTES[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}") from None


def row_bytes(nr_cols: int, dtype: str = "fp32") -> int:
    """Bytes one stored row of ``nr_cols`` elements of ``dtype`` takes in MRAM (packed, padded to 8).

    Example: dim 16 is 64 B in fp32/int32, 32 B in int16, 16 B in int8; dim 3 in int8 is 8 B.
    """
    return (nr_cols * dtype_bytes(dtype) + MRAM_ALIGN - 1) // MRAM_ALIGN * MRAM_ALIGN


def sum_row_bytes(nr_cols: int) -> int:
    """Bytes of one partial-sum row the kernel writes for ``nr_cols`` columns (4-byte sums, padded to 8)."""
    return (nr_cols * ELEM_BYTES + MRAM_ALIGN - 1) // MRAM_ALIGN * MRAM_ALIGN


@dataclass(frozen=True)
class TableSpec:
    """Shape of one embedding table: ``rows`` x ``dim`` elements."""

    name: str
    rows: int
    dim: int


@dataclass(frozen=True)
class Topology:
    """The DPUs a plan may use.

    ``working_dpus_per_rank`` lists, rank by rank, how many DPUs work in that rank (real ranks
    often have 56-63 of 64); when empty, ranks are full (``dpus_per_rank`` each) and the last
    rank holds the remainder. DPU ids are global and dense: 0 .. nr_dpus-1.
    """

    nr_dpus: int
    mram_bytes: int = 64 * MIB  # per DPU (UPMEM: 64 MiB DRAM bank)
    wram_bytes: int = 64 * KIB  # per DPU (UPMEM v1A: 64 KiB scratchpad)
    nr_tasklets: int = 16
    dpus_per_rank: int = 64  # UPMEM: 8 chips x 8 DPUs
    clock_hz: float = 350e6  # UPMEM v1A (v1B: 400 MHz)
    working_dpus_per_rank: tuple[int, ...] = ()
    #: MRAM bytes reserved below the heap by the kernel's static MRAM variables (shard table).
    mram_static_bytes: int = 4096 * 32

    def __post_init__(self) -> None:
        if self.nr_dpus < 1:
            raise ValueError(f"Topology.nr_dpus must be >= 1, got {self.nr_dpus}")
        if self.working_dpus_per_rank and sum(self.working_dpus_per_rank) != self.nr_dpus:
            raise ValueError(
                f"Topology.working_dpus_per_rank sums to {sum(self.working_dpus_per_rank)}, "
                f"but nr_dpus is {self.nr_dpus}"
            )

    @property
    def rank_sizes(self) -> tuple[int, ...]:
        """Working DPUs in each rank."""
        if self.working_dpus_per_rank:
            return self.working_dpus_per_rank
        full, rest = divmod(self.nr_dpus, self.dpus_per_rank)
        return (self.dpus_per_rank,) * full + ((rest,) if rest else ())

    @property
    def nr_ranks(self) -> int:
        return len(self.rank_sizes)

    @property
    def mram_heap_bytes(self) -> int:
        """MRAM bytes available above the kernel's static MRAM variables."""
        return self.mram_bytes - self.mram_static_bytes


@dataclass
class RowGroup:
    """A set of rows of one table: ``[row_lo, row_hi)`` or, when ``rows`` is set, those rows."""

    table: int
    row_lo: int = 0
    row_hi: int = 0
    rows: Optional[np.ndarray] = None  # sorted unique int64 row ids; overrides the range
    kind: str = "base"  # "base" (partition of the table) or "cache" (hot-row replica set)

    @property
    def nr_rows(self) -> int:
        return int(self.rows.size) if self.rows is not None else self.row_hi - self.row_lo

    def global_rows(self) -> np.ndarray:
        """Global row id of every local row, shape [nr_rows], int64."""
        if self.rows is not None:
            return np.asarray(self.rows, dtype=np.int64)
        return np.arange(self.row_lo, self.row_hi, dtype=np.int64)


@dataclass
class Shard:
    """One column slice of one replica of one row group, on one DPU."""

    table: int
    group: int  # index into Plan.groups
    replica: int  # 0 .. replicas of the group - 1
    dpu: int
    col_lo: int
    col_hi: int
    mram_offset: int = -1  # bytes from the DPU's MRAM heap; -1 until Plan.assign_offsets()

    @property
    def nr_cols(self) -> int:
        return self.col_hi - self.col_lo


@dataclass
class Plan:
    """Placement of every table of a model on ``topology``'s DPUs.

    ``strategy`` names the policy that made it and ``meta`` carries its parameters (for reports).
    ``request_bytes`` / ``output_bytes`` are the per-DPU MRAM capacities reserved for one launch's
    request (bags + lookups) and partial sums; the engine cuts larger batches into several launches.
    ``dtype`` is the element type the tables are stored in (:data:`DTYPES`): it sets every shard's
    row bytes, hence MRAM offsets and capacity. fp32 and int32 plans are interchangeable (both
    4 bytes per element); an int8 plan holds four times the rows of an fp32 one per DPU.
    """

    tables: list[TableSpec]
    topology: Topology
    groups: list[RowGroup]
    shards: list[Shard]
    strategy: str = "custom"
    request_bytes: int = 4 * MIB
    output_bytes: int = 4 * MIB
    meta: dict = field(default_factory=dict)
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        dtype_bytes(self.dtype)  # ValueError naming the allowed dtypes

    def assign_offsets(self) -> None:
        """Pack each DPU's shards from heap+0 in plan order (see :func:`partition.validate.assign_offsets`)."""
        from .validate import assign_offsets

        assign_offsets(self)

    def validate(self, tables: Optional[list[TableSpec]] = None) -> None:
        """Raise PlanError / PlanDoesNotFitError if the plan breaks a rule (see :func:`partition.validate.validate_plan`)."""
        from .validate import validate_plan

        validate_plan(self, tables)

    def shards_on(self, dpu: int) -> list[Shard]:
        return [s for s in self.shards if s.dpu == dpu]

    def replace(self, **changes) -> "Plan":
        return dataclasses.replace(self, **changes)
