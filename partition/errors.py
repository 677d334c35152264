"""Errors of the partitioner: a plan that is malformed (PlanError) or does not fit (PlanDoesNotFitError).

Both are ``ValueError`` subclasses (and ``updlrm.errors.UpdlrmError``), and every message names
the table, group, shard or DPU at fault and, for capacity, the shortfall in bytes.
"""

from __future__ import annotations

from ..errors import UpdlrmError


class PlanError(UpdlrmError, ValueError):
    """A plan is inconsistent: rows or columns not covered, bad DPU id, overlapping shards, wrong shapes."""


class PlanDoesNotFitError(PlanError):
    """A plan (or a model under a strategy) needs more MRAM than the DPUs have.

    ``shortfall_bytes`` is how many bytes are missing (on the named DPU, or in total);
    ``dpu`` is the DPU at fault, or -1 when the message is about the whole model or one table.
    """

    def __init__(self, message: str, shortfall_bytes: int = 0, dpu: int = -1, table: int = -1):
        super().__init__(message)
        self.shortfall_bytes = int(shortfall_bytes)
        self.dpu = int(dpu)
        self.table = int(table)


def fmt_bytes(n: int) -> str:
    """``70123520`` -> ``'70,123,520 B'``."""
    return f"{int(n):,} B"
