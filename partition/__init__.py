"""updlrm.partition: placement of embedding tables and hot-row caches on DPUs.

Pure Python + numpy; knows nothing of DPUs beyond a :class:`Topology`. Installed as
``updlrm.partition`` (the source folder is ``partition/``).

    from updlrm.partition import TableSpec, Topology, make_plan, save_plan, load_plan
    plan = make_plan([TableSpec("C1", 1460, 16)], Topology(nr_dpus=64), "row_uniform")
"""

from .errors import PlanDoesNotFitError, PlanError
from .interfaces import Budget, Placement, Strategy
from .io import PLAN_FORMAT_VERSION, load_plan, rows_path, save_plan
from .planner import (
    DEFAULT_OUTPUT_BYTES,
    DEFAULT_REQUEST_BYTES,
    Planner,
    get_strategy,
    make_plan,
    register_strategy,
    strategy_names,
)
from .types import DTYPES, ELEM_BYTES, MIB, MRAM_ALIGN, Plan, RowGroup, Shard, TableSpec, Topology, dtype_bytes, row_bytes, sum_row_bytes
from .validate import MAX_SHARDS_PER_DPU, assign_offsets, per_dpu_table_bytes, shard_arrays, tables_end_bytes, validate_plan

__all__ = [
    "MIB", "ELEM_BYTES", "MRAM_ALIGN", "MAX_SHARDS_PER_DPU", "PLAN_FORMAT_VERSION",
    "DEFAULT_REQUEST_BYTES", "DEFAULT_OUTPUT_BYTES",
    "Plan", "RowGroup", "Shard", "TableSpec", "Topology", "row_bytes",
    "PlanError", "PlanDoesNotFitError", "Budget", "Placement", "Strategy", "Planner",
    "make_plan", "validate_plan", "save_plan", "load_plan", "rows_path", "assign_offsets",
    "shard_arrays", "per_dpu_table_bytes", "tables_end_bytes",
    "register_strategy", "get_strategy", "strategy_names",
]
