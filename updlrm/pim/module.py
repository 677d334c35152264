"""PIMEmbeddingBag: a torch module doing, for several tables at once, what one
``torch.nn.EmbeddingBag(mode="sum")`` per table does - with the lookups on (emulated) UPMEM DPUs.

    bag = PIMEmbeddingBag([w0, w1], nr_dpus=64, strategy="row_uniform")
    pooled = bag([idx0, idx1], [off0, off1])   # list of [B, D_t] float32 tensors

``offsets[t]`` are bag starts (B entries, like EmbeddingBag without include_last_offset); every
table must have the same B. The weights are copied into DPU MRAM at construction: later changes
to the tensors are not seen. Inference only (no autograd through the DPUs).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from updlrm.partition import Plan, TableSpec, Topology, make_plan

from .embedding import PimEmbedding


class PIMEmbeddingBag(torch.nn.Module):
    """Sum-pooled lookups of several tables on DPUs.

    Args:
        weights: one [rows_t, dim_t] float tensor (or array) per table.
        nr_dpus: DPUs to place the tables on (ignored when ``plan`` is given).
        strategy: partitioning strategy name for :func:`updlrm.partition.make_plan`.
        dtype: "fp32", "int32", "int16" or "int8" (integer tables; see :mod:`updlrm.pim.quant`).
        nr_tasklets: tasklets per DPU (the kernel is built or compiled for it).
        device: "emulator", "simulator" or "hw".
        plan: a ready Plan for these tables (overrides nr_dpus/strategy/nr_tasklets).
        max_bag_lookups: integer dtypes: the largest bag the scale allows.
        plan_options: extra keyword arguments for make_plan.
        quant, group_cols, calibrate_on: integer dtypes: scales per "table" or per "group" of
            ``group_cols`` columns, optionally calibrated on access counts (see PimEmbedding).
    """

    def __init__(
        self,
        weights: Sequence,
        nr_dpus: int = 64,
        strategy: str = "row_uniform",
        dtype: str = "fp32",
        nr_tasklets: int = 16,
        device: str = "emulator",
        plan: Plan | None = None,
        max_bag_lookups: int = 4096,
        plan_options: dict | None = None,
        quant: str = "table",
        group_cols: int = 4,
        calibrate_on=None,
    ):
        super().__init__()
        ws = [w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w) for w in weights]
        if plan is None:
            tables = [TableSpec(f"t{t}", int(w.shape[0]), int(w.shape[1])) for t, w in enumerate(ws)]
            opts = dict(plan_options or {})
            opts.setdefault("dtype", dtype)
            plan = make_plan(tables, Topology(nr_dpus=int(nr_dpus), nr_tasklets=int(nr_tasklets)), strategy, **opts)
        self.plan = plan
        self.pim = PimEmbedding(ws, plan, dtype=dtype, device=device, max_bag_lookups=max_bag_lookups,
                                quant=quant, group_cols=group_cols, calibrate_on=calibrate_on)

    @property
    def last_stats(self):
        return self.pim.last_stats

    def forward(self, indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        T = len(self.pim.dims)
        if len(indices) != T or len(offsets) != T:
            raise ValueError(f"expected {T} index and offset tensors, got {len(indices)} and {len(offsets)}")
        idx = [torch.as_tensor(i).reshape(-1).to(torch.int64).numpy() for i in indices]
        off = [torch.as_tensor(o).reshape(-1).to(torch.int64).numpy() for o in offsets]
        B = off[0].size
        for t in range(T):
            if off[t].size != B:
                raise ValueError(f"table {t} has {off[t].size} bags, table 0 has {B}: all tables need the same batch")
            if B and (off[t][0] != 0 or np.any(np.diff(off[t]) < 0) or off[t][-1] > idx[t].size):
                raise ValueError(f"table {t}: offsets must start at 0, not decrease, and stay <= {idx[t].size}")
            rows = self.plan.tables[t].rows
            if idx[t].size and (idx[t].min() < 0 or idx[t].max() >= rows):
                bad = int(np.flatnonzero((idx[t] < 0) | (idx[t] >= rows))[0])
                raise ValueError(f"table {t}: index {int(idx[t][bad])} at position {bad} is outside [0, {rows})")
        sizes = np.array([i.size for i in idx], dtype=np.int64)
        base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        flat_off = np.concatenate([o + b for o, b in zip(off, base)] + [[int(sizes.sum())]]).astype(np.int64)
        flat_idx = np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)
        pooled = self.pim.lookup_list(flat_idx, flat_off, B)
        return [torch.from_numpy(np.ascontiguousarray(p)) for p in pooled]

    def close(self) -> None:
        self.pim.close()
