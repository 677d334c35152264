"""From a Plan to what the DPUs and the native packer need: flat plan arrays, MRAM images, row maps.

* :func:`plan_layout` flattens a plan for the native packer (``updlrm._native._emu.Runtime.set_plan``):
  per shard its DPU, local descriptor index, result columns and row bytes; per group its replicas;
  per replica its column-slice shards; and the MRAM layout shared by every DPU::

      heap + 0                 table shards (plan.mram_offset of each)
      heap + request_offset    request: bags then local row ids      (<= plan.request_bytes)
      heap + output_offset     per-bag partial sums                  (<= plan.output_bytes)

  ``request_offset`` is the end of the fullest DPU's shards (one push serves every DPU at the same
  offset).
* :func:`image_spec` describes every shard's source rows and columns for the native loader
  (``Runtime.load_tables``, host/python/loader.cpp), which builds the MRAM images window by window
  straight from the weights (integer dtypes quantized with per-column scales, rows padded to 8 bytes) while the driver
  pushes them; :meth:`PlanLayout.shard_spec` gives the per-shard descriptor fields (struct
  updlrm_shard is filled in C++, so the layout lives in updlrm_abi.h alone). :func:`shard_images`
  is the numpy reference of the same images.
* Row mapping (lookup -> row group, local row) lives in the native PlanIndex
  (host/python/plan_index.h), built from :meth:`PlanLayout.native_spec`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from updlrm.partition import Plan
from updlrm.partition.types import MRAM_ALIGN
from updlrm.partition.validate import row_bytes_array

from . import native


def _align8(x: int) -> int:
    return (int(x) + MRAM_ALIGN - 1) // MRAM_ALIGN * MRAM_ALIGN


@dataclass
class PlanLayout:
    """A plan flattened into arrays (S shards, G groups, R replicas, D DPUs, T tables)."""

    nr_dpus: int
    dims: np.ndarray  # [T] table dims
    col_offsets: np.ndarray  # [T] first result column of each table (result row width = width)
    width: int
    shard_dpu: np.ndarray  # [S]
    shard_local: np.ndarray  # [S] index of the shard's descriptor on its DPU
    shard_col: np.ndarray  # [S] first result column (col_offsets[table] + col_lo)
    shard_ncols: np.ndarray  # [S]
    shard_row_bytes: np.ndarray  # [S] bytes per stored row in the plan's dtype (padded to 8)
    shard_sum_bytes: np.ndarray  # [S] bytes per partial-sum row (4 B per column, padded to 8)
    shard_table: np.ndarray  # [S]
    shard_nr_rows: np.ndarray  # [S]
    shard_mram_offset: np.ndarray  # [S] bytes from the MRAM heap
    group_rep_ptr: np.ndarray  # [G+1] -> replicas
    rep_shard_ptr: np.ndarray  # [R+1] -> rep_shards
    rep_shards: np.ndarray  # shard ids, each replica's slices by col_lo
    nr_shards_on_dpu: np.ndarray  # [D]
    table_rows: np.ndarray  # [T]
    group_table: np.ndarray  # [G]
    group_kind: np.ndarray  # [G] 0 base range, 1 base row set, 2 cache row set
    group_lo: np.ndarray  # [G] ranges: first row
    group_hi: np.ndarray  # [G] ranges: end row
    group_rows_ptr: np.ndarray  # [G+1] row sets: group g's rows are group_rows[ptr[g]:ptr[g+1]]
    group_rows: np.ndarray  # sorted row ids of every row-set group, concatenated
    request_offset: int  # bytes from the heap, same on every DPU
    request_capacity: int
    output_offset: int
    output_capacity: int

    def native_spec(self, dtype: str, col_scale: np.ndarray, abi: "native.Abi | None" = None) -> dict:
        """The dict ``Runtime.set_plan`` takes."""
        abi = abi if abi is not None else native.abi()
        u32 = lambda a: np.ascontiguousarray(a, dtype=np.uint32)  # noqa: E731
        i64 = lambda a: np.ascontiguousarray(a, dtype=np.int64)  # noqa: E731
        return {
            "dtype": abi.dtype_codes[dtype],
            "table_rows": np.ascontiguousarray(self.table_rows, dtype=np.uint64),
            "table_dim": u32(self.dims),
            "group_table": u32(self.group_table),
            "group_kind": u32(self.group_kind),
            "group_lo": i64(self.group_lo),
            "group_hi": i64(self.group_hi),
            "group_rows_ptr": np.ascontiguousarray(self.group_rows_ptr, dtype=np.uint64),
            "group_rows": i64(self.group_rows),
            "shard_dpu": u32(self.shard_dpu),
            "shard_local": u32(self.shard_local),
            "shard_col": u32(self.shard_col),
            "shard_ncols": u32(self.shard_ncols),
            "shard_row_bytes": u32(self.shard_sum_bytes),  # the packer sizes output slots with it
            "shard_table": u32(self.shard_table),
            "group_rep_ptr": u32(self.group_rep_ptr),
            "rep_shard_ptr": u32(self.rep_shard_ptr),
            "rep_shards": u32(self.rep_shards),
            "nr_shards_on_dpu": u32(self.nr_shards_on_dpu),
            "col_scale": np.ascontiguousarray(col_scale, dtype=np.float64),
            "request_offset": int(self.request_offset),
            "request_capacity": int(self.request_capacity),
            "output_offset": int(self.output_offset),
            "output_capacity": int(self.output_capacity),
        }


    def shard_spec(self, dtype: str, abi: "native.Abi | None" = None) -> dict:
        """The per-shard descriptor fields ``Runtime.write_shards`` takes (uint32 [S] arrays)."""
        abi = abi if abi is not None else native.abi()
        u32 = lambda a: np.ascontiguousarray(a, dtype=np.uint32)  # noqa: E731
        return {
            "dpu": u32(self.shard_dpu),
            "local": u32(self.shard_local),
            "mram_offset": u32(self.shard_mram_offset),
            "nr_rows": u32(self.shard_nr_rows),
            "nr_cols": u32(self.shard_ncols),
            "row_bytes": u32(self.shard_row_bytes),
            "table": u32(self.shard_table),
            "dtype": abi.dtype_codes[dtype],
        }


def plan_layout(plan: Plan, abi: "native.Abi | None" = None) -> PlanLayout:
    """Flatten ``plan`` (already validated) for the native packer. Raises ValueError on a plan whose
    shards have no MRAM offsets, a DPU with more shards than the kernel's UPDLRM_MAX_SHARDS, or
    buffers beyond the MRAM heap / UPDLRM_MRAM_BYTES. ``abi``: default :func:`native.abi`."""
    abi = abi if abi is not None else native.abi()
    tables = plan.tables
    dims = np.array([t.dim for t in tables], dtype=np.int64)
    col_offsets = np.concatenate([[0], np.cumsum(dims)[:-1]]).astype(np.int64)
    n_dpus = plan.topology.nr_dpus
    shards = plan.shards
    S = len(shards)
    f = lambda name: np.fromiter((getattr(s, name) for s in shards), dtype=np.int64, count=S)  # noqa: E731
    table, group, replica, dpu = f("table"), f("group"), f("replica"), f("dpu")
    col_lo, col_hi, mram_offset = f("col_lo"), f("col_hi"), f("mram_offset")
    if S and mram_offset.min() < 0:
        bad = int(np.argmax(mram_offset < 0))
        raise ValueError(f"shard {bad} of the plan has no MRAM offset (mram_offset=-1): run validate/assign offsets")
    ncols = col_hi - col_lo
    shard_rb = row_bytes_array(ncols, plan.dtype)  # stored rows, in the plan's dtype
    shard_sb = row_bytes_array(ncols, "fp32")  # partial sums: 4 B per column for every dtype
    g_rows = np.fromiter((g.nr_rows for g in plan.groups), dtype=np.int64, count=len(plan.groups))
    nr_rows = g_rows[group] if S else np.zeros(0, dtype=np.int64)

    # Descriptor index of each shard on its DPU: rank in plan order among the DPU's shards.
    order = np.argsort(dpu, kind="stable")
    counts = np.bincount(dpu, minlength=n_dpus) if S else np.zeros(n_dpus, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    local = np.empty(S, dtype=np.int64)
    local[order] = np.arange(S) - starts[dpu[order]]
    if counts.size and counts.max() > abi.max_shards:
        d = int(np.argmax(counts))
        raise ValueError(f"DPU {d} holds {int(counts[d])} shards, the kernel allows {abi.max_shards}")

    # Replicas: (group, replica) pairs in order; each replica's shards sorted by col_lo.
    key = np.lexsort((col_lo, replica, group))
    g_sorted, r_sorted = group[key], replica[key]
    new_rep = np.ones(S, dtype=bool)
    new_rep[1:] = (g_sorted[1:] != g_sorted[:-1]) | (r_sorted[1:] != r_sorted[:-1])
    rep_first = np.flatnonzero(new_rep)
    rep_shard_ptr = np.append(rep_first, S)
    rep_group = g_sorted[rep_first]
    G = len(plan.groups)
    reps_per_group = np.bincount(rep_group, minlength=G)
    if G and reps_per_group.min() == 0:
        bad = int(np.argmin(reps_per_group))
        raise ValueError(f"row group {bad} (table {plan.groups[bad].table}) has no shard")
    group_rep_ptr = np.concatenate([[0], np.cumsum(reps_per_group)])
    gtab = np.fromiter((g.table for g in plan.groups), dtype=np.int64, count=G)
    gkind = np.fromiter((2 if g.kind == "cache" else (1 if g.rows is not None else 0) for g in plan.groups),
                        dtype=np.int64, count=G)
    glo = np.fromiter((g.row_lo if g.rows is None else 0 for g in plan.groups), dtype=np.int64, count=G)
    ghi = np.fromiter((g.row_hi if g.rows is None else 0 for g in plan.groups), dtype=np.int64, count=G)
    sets = [g.global_rows() for g, k in zip(plan.groups, gkind.tolist()) if k > 0]
    glen = np.zeros(G, dtype=np.int64)
    glen[gkind > 0] = [r.size for r in sets]
    grows_ptr = np.concatenate([[0], np.cumsum(glen)]).astype(np.int64)
    grows = np.concatenate(sets) if sets else np.zeros(0, dtype=np.int64)

    tables_end = int((mram_offset + nr_rows * shard_rb).max()) if S else 0
    request_offset = _align8(tables_end)
    request_capacity = int(plan.request_bytes) // MRAM_ALIGN * MRAM_ALIGN
    output_capacity = int(plan.output_bytes) // MRAM_ALIGN * MRAM_ALIGN
    output_offset = request_offset + request_capacity
    heap = int(plan.topology.mram_heap_bytes)
    if output_offset + output_capacity > min(heap, abi.mram_bytes):
        raise ValueError(
            f"shards end at {tables_end} B and request+output need {request_capacity + output_capacity} B more: "
            f"{output_offset + output_capacity} B exceed the {heap} B MRAM heap"
        )
    return PlanLayout(
        nr_dpus=n_dpus,
        dims=dims,
        col_offsets=col_offsets,
        width=int(dims.sum()),
        shard_dpu=dpu,
        shard_local=local,
        shard_col=col_offsets[table] + col_lo if S else col_lo,
        shard_ncols=ncols,
        shard_row_bytes=shard_rb,
        shard_sum_bytes=shard_sb,
        shard_table=table,
        shard_nr_rows=nr_rows,
        shard_mram_offset=mram_offset,
        group_rep_ptr=group_rep_ptr,
        rep_shard_ptr=rep_shard_ptr,
        rep_shards=key,
        nr_shards_on_dpu=counts,
        table_rows=np.array([t.rows for t in tables], dtype=np.int64),
        group_table=gtab,
        group_kind=gkind,
        group_lo=glo,
        group_hi=ghi,
        group_rows_ptr=grows_ptr,
        group_rows=grows,
        request_offset=request_offset,
        request_capacity=request_capacity,
        output_offset=output_offset,
        output_capacity=output_capacity,
    )


def fixed_point_scales(weights: list[np.ndarray] | None, max_bag_lookups: int, max_abs=None) -> np.ndarray:
    """Per-table int32 scale: ``floor((2**31 - 1) / max_bag_lookups) / max|w_t|`` ([T] float64).

    Every quantized element ``q = rint(w * scale_t)`` then satisfies ``|q| <= floor((2**31-1) / M)``
    (M = max_bag_lookups), so a sum of up to M of them - a whole bag or any partial sum of it -
    never overflows int32. This is ``floor((2**31 - 1) / (M * max|w_t|))`` with the floor moved so
    that rounding cannot push an element over the limit and tables with large weights keep a
    usable (non-zero) scale. A table of zeros gets ``floor((2**31-1)/M)``. ``max_abs`` ([T]
    max|w_t|, e.g. from the native ``table_stats``) spares the pass over ``weights``.
    """
    limit = float((2**31 - 1) // int(max_bag_lookups))
    if max_abs is None:
        max_abs = [max(float(w.max()), -float(w.min())) if w.size else 0.0 for w in weights]
    return np.asarray([limit / float(m) if m > 0 else limit for m in max_abs], dtype=np.float64)


def quantize(block: np.ndarray, scale: float, limit: float) -> np.ndarray:
    """int32 fixed point of ``block``: rint(block * scale), clipped to +-limit (a no-op when scale
    comes from :func:`fixed_point_scales`; guards float rounding at the edge)."""
    q = np.rint(block.astype(np.float64) * scale)
    np.clip(q, -limit, limit, out=q)
    return q.astype(np.int32)


def image_spec(plan: Plan, layout: PlanLayout, dtype: str, scales: np.ndarray | None, limit: float,
               abi: "native.Abi | None" = None) -> dict:
    """What the native loader (``Runtime.load_tables`` / ``image_window``) needs to build every
    DPU's MRAM image from the weights: per shard (arrays [S]) its DPU, table, first column, columns,
    row bytes, MRAM offset and rows; a row-range shard's first table row (``row_lo``), a row-set
    shard's row ids at ``rows[rows_at : rows_at + nr_rows]`` (``rows_at`` -1 for ranges; the
    shards of one group share its ids). ``scales`` [W] per result column and ``limit`` (the
    element bound L) for integer dtypes (see :class:`~updlrm.pim.quant.Quantization`), ignored for fp32.

    Example: table 0 split in rows [0, 500) on DPU 0 and a cached row set {3, 9} on DPUs 1 and 2
    gives ``row_lo = [0, 0, 0]``, ``rows_at = [-1, 0, 0]``, ``rows = [3, 9]``.
    """
    abi = abi if abi is not None else native.abi()
    groups = plan.groups
    G = len(groups)
    S = int(layout.shard_dpu.size)
    group = np.fromiter((sh.group for sh in plan.shards), dtype=np.int64, count=S)
    g_lo = np.fromiter((g.row_lo for g in groups), dtype=np.int64, count=G)
    g_sets = [gi for gi, g in enumerate(groups) if g.rows is not None]
    g_at = np.full(G, -1, dtype=np.int64)
    if g_sets:
        sizes = np.array([groups[gi].rows.size for gi in g_sets], dtype=np.int64)
        g_at[g_sets] = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rows = np.concatenate([np.asarray(groups[gi].rows, dtype=np.int64) for gi in g_sets])
    else:
        rows = np.zeros(0, dtype=np.int64)
    table = layout.shard_table
    u32 = lambda a: np.ascontiguousarray(a, dtype=np.uint32)  # noqa: E731
    u64 = lambda a: np.ascontiguousarray(a, dtype=np.uint64)  # noqa: E731
    return {
        "dpu": u32(layout.shard_dpu),
        "table": u32(table),
        "col_lo": u32(layout.shard_col - layout.col_offsets[table] if S else table),
        "nr_cols": u32(layout.shard_ncols),
        "row_bytes": u32(layout.shard_row_bytes),
        "mram_offset": u64(layout.shard_mram_offset),
        "nr_rows": u64(layout.shard_nr_rows),
        "row_lo": np.ascontiguousarray(g_lo[group] if S else group, dtype=np.int64),
        "rows_at": np.ascontiguousarray(g_at[group] if S else group, dtype=np.int64),
        "rows": rows,
        "scales": np.ascontiguousarray(scales if scales is not None else np.zeros(0), dtype=np.float64),
        "dtype": abi.dtype_codes[dtype],
        "limit": float(limit),
    }


def shard_images(weights: list[np.ndarray], plan: Plan, layout: PlanLayout, dtype: str, quant=None) -> list[np.ndarray]:
    """MRAM image of every DPU (uint8, heap + 0 onwards, length a multiple of 8). The shard
    descriptors come from :meth:`PlanLayout.shard_spec`. ``quant``: the
    :class:`~updlrm.pim.quant.Quantization` of an integer ``dtype`` (None for fp32)."""
    n = layout.nr_dpus
    S = layout.shard_dpu.size
    ends = np.zeros(n, dtype=np.int64)
    if S:
        np.maximum.at(ends, layout.shard_dpu, layout.shard_mram_offset + layout.shard_nr_rows * layout.shard_row_bytes)
    images = [np.zeros(int(e), dtype=np.uint8) for e in ends]
    for s, shard in enumerate(plan.shards):
        t = shard.table
        g = plan.groups[shard.group]
        w = weights[t]
        if g.rows is None:  # a row range: a view, no copy
            block = w[g.row_lo : g.row_hi, shard.col_lo : shard.col_hi]
        else:  # a row set: one fancy-index gather
            block = w[np.asarray(g.rows, dtype=np.int64), shard.col_lo : shard.col_hi]
        if dtype != "fp32":
            block = quant.quantize(t, block, shard.col_lo, shard.col_hi)
        else:
            block = np.asarray(block, dtype=np.float32)
        nr, nc = block.shape
        if nr != int(layout.shard_nr_rows[s]) or nc != int(layout.shard_ncols[s]):
            raise ValueError(f"shard {s}: block {nr}x{nc} differs from the layout's "
                             f"{int(layout.shard_nr_rows[s])}x{int(layout.shard_ncols[s])}")
        rb = int(layout.shard_row_bytes[s])
        d = int(layout.shard_dpu[s])
        off = int(layout.shard_mram_offset[s])
        dst = images[d][off : off + nr * rb].reshape(nr, rb)
        eb = block.dtype.itemsize
        dst[:, : nc * eb] = np.ascontiguousarray(block).view(np.uint8).reshape(nr, nc * eb)
    return images
