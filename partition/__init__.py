"""updlrm.partition: placement of embedding tables and hot-row caches on DPUs.

Pure Python + numpy; knows nothing of DPUs beyond a :class:`Topology`. Installed as
``updlrm.partition`` (the source folder is ``partition/``).
"""

from .types import MIB, ELEM_BYTES, MRAM_ALIGN, Plan, RowGroup, Shard, TableSpec, Topology, row_bytes

__all__ = ["MIB", "ELEM_BYTES", "MRAM_ALIGN", "Plan", "RowGroup", "Shard", "TableSpec", "Topology", "row_bytes"]
