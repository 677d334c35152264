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
  straight from the weights (int32 fixed point when asked, rows padded to 8 bytes) while the driver
  pushes them; :meth:`PlanLayout.shard_spec` gives the per-shard descriptor fields (struct
  updlrm_shard is filled in C++, so the layout lives in updlrm_abi.h alone). :func:`shard_images`
  is the numpy reference of the same images.
* :class:`RowMapper` maps each lookup of a batch to (row group, local row): ``cache`` groups
  first, then the ``base`` group (row ranges by one searchsorted over all tables at once; row-set
  groups through a dense per-table map). No Python loop over lookups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from updlrm.partition import Plan
from updlrm.partition.types import ELEM_BYTES, MRAM_ALIGN

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
    shard_row_bytes: np.ndarray  # [S] bytes per stored row (padded to 8)
    shard_table: np.ndarray  # [S]
    shard_nr_rows: np.ndarray  # [S]
    shard_mram_offset: np.ndarray  # [S] bytes from the MRAM heap
    group_rep_ptr: np.ndarray  # [G+1] -> replicas
    rep_shard_ptr: np.ndarray  # [R+1] -> rep_shards
    rep_shards: np.ndarray  # shard ids, each replica's slices by col_lo
    nr_shards_on_dpu: np.ndarray  # [D]
    request_offset: int  # bytes from the heap, same on every DPU
    request_capacity: int
    output_offset: int
    output_capacity: int

    def native_spec(self, dtype: str, col_scale: np.ndarray, abi: "native.Abi | None" = None) -> dict:
        """The dict ``Runtime.set_plan`` takes."""
        abi = abi if abi is not None else native.abi()
        u32 = lambda a: np.ascontiguousarray(a, dtype=np.uint32)  # noqa: E731
        return {
            "nr_tables": int(self.dims.size),
            "width": int(self.width),
            "dtype": abi.dtype_codes[dtype],
            "shard_dpu": u32(self.shard_dpu),
            "shard_local": u32(self.shard_local),
            "shard_col": u32(self.shard_col),
            "shard_ncols": u32(self.shard_ncols),
            "shard_row_bytes": u32(self.shard_row_bytes),
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
    row_bytes = (ncols * ELEM_BYTES + MRAM_ALIGN - 1) // MRAM_ALIGN * MRAM_ALIGN
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

    tables_end = int((mram_offset + nr_rows * row_bytes).max()) if S else 0
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
        shard_row_bytes=row_bytes,
        shard_table=table,
        shard_nr_rows=nr_rows,
        shard_mram_offset=mram_offset,
        group_rep_ptr=group_rep_ptr,
        rep_shard_ptr=rep_shard_ptr,
        rep_shards=key,
        nr_shards_on_dpu=counts,
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
    shards of one group share its ids). ``scales`` [T] for fixed-point dtypes (ignored for fp32).

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


def shard_images(
    weights: list[np.ndarray], plan: Plan, layout: PlanLayout, dtype: str, scales: np.ndarray | None, limit: float
) -> list[np.ndarray]:
    """MRAM image of every DPU (uint8, heap + 0 onwards, length a multiple of 8), one numpy gather
    per shard: the reference the native loader (:func:`image_spec`) is tested against, and the
    input of ``Runtime.write_shards``. Holds every image in host memory at once (full Kaggle: as
    much again as the tables), so :class:`~updlrm.pim.PimEmbedding` loads with the native loader."""
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
        if dtype == "int32":
            block = quantize(block, float(scales[t]), limit)
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
        dst[:, : nc * ELEM_BYTES] = np.ascontiguousarray(block).view(np.uint8).reshape(nr, nc * ELEM_BYTES)
    return images


#: Tables up to this many rows map ids through a dense [rows] map (8 bytes per row).
DENSE_MAP_MAX_ROWS = 1 << 18


class RowMapper:
    """Maps the lookups of a batch to (row group id, local row) under a plan.

    Per table, base groups are resolved by the cheapest exact rule: one group (an offset); row-set
    groups, or row ranges of a table of at most DENSE_MAP_MAX_ROWS rows (a dense [rows] map); other
    row ranges (a division into buckets as wide as the smallest range, then one compare;
    searchsorted over the range starts when that would need too many buckets). Cache groups (sorted row sets, searchsorted)
    then override the base group where they hold the row. Python loops run over tables only.
    """

    def __init__(self, plan: Plan):
        T = len(plan.tables)
        rows = np.array([t.rows for t in plan.tables], dtype=np.int64)
        cache: dict[int, list[tuple[int, np.ndarray]]] = {}
        by_table: dict[int, list[int]] = {t: [] for t in range(T)}
        for gi, g in enumerate(plan.groups):
            if g.kind == "cache":
                cache.setdefault(g.table, []).append((gi, np.asarray(g.global_rows(), dtype=np.int64)))
            else:
                by_table[g.table].append(gi)
        # rule per table: ("one", gid, lo) | ("bucket", width, first, ends, starts, gids)
        #                 | ("search", starts, gids) | ("dense", gmap, lmap)
        self.rules: list[tuple] = []
        for t in range(T):
            groups = [(gi, plan.groups[gi]) for gi in by_table[t]]
            if any(g.rows is not None for _, g in groups):
                gmap = np.full(rows[t], -1, dtype=np.int32)
                lmap = np.zeros(rows[t], dtype=np.uint32)
                for gi, g in groups:
                    r = g.global_rows()
                    gmap[r] = gi
                    lmap[r] = np.arange(r.size, dtype=np.uint32)
                self.rules.append(("dense", gmap, lmap))
                continue
            if rows[t] <= DENSE_MAP_MAX_ROWS and len(groups) > 1:
                # small table: two gathers from an 8 B/row map beat any arithmetic on the ids
                gmap = np.empty(rows[t], dtype=np.int32)
                lmap = np.empty(rows[t], dtype=np.uint32)
                for gi, g in groups:
                    gmap[g.row_lo : g.row_hi] = gi
                    lmap[g.row_lo : g.row_hi] = np.arange(g.row_hi - g.row_lo, dtype=np.uint32)
                self.rules.append(("dense", gmap, lmap))
                continue
            groups.sort(key=lambda x: x[1].row_lo)
            starts = np.array([g.row_lo for _, g in groups], dtype=np.int64)
            gids = np.array([gi for gi, _ in groups], dtype=np.int32)
            sizes = np.array([g.row_hi - g.row_lo for _, g in groups], dtype=np.int64)
            if len(groups) == 1:
                self.rules.append(("one", int(gids[0]), int(starts[0])))
                continue
            # Buckets of the smallest range's width: a bucket meets at most two ranges, so the
            # range of row r is first_range[r // width], or the next one when r passed its start.
            width = max(1, int(sizes.min()))
            nr_buckets = -(-int(rows[t]) // width)
            if nr_buckets <= max(1 << 20, 8 * len(groups)):
                first = (np.searchsorted(starts, np.arange(nr_buckets, dtype=np.int64) * width, side="right") - 1)
                ends = np.append(starts[1:], np.iinfo(np.int64).max)
                self.rules.append(("bucket", width, first.astype(np.int32), ends, starts, gids))
            else:
                self.rules.append(("search", starts, gids))
        self.cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for t, lst in cache.items():
            r = np.concatenate([x[1] for x in lst])
            g = np.concatenate([np.full(x[1].size, x[0], dtype=np.int32) for x in lst])
            loc = np.concatenate([np.arange(x[1].size, dtype=np.uint32) for x in lst])
            o = np.argsort(r, kind="stable")
            self.cache[t] = (r[o], g[o], loc[o])
        self.nr_tables = T

    def map(self, indices: np.ndarray, offsets: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """indices int64 [N] (table-major), offsets int64 [T*B+1] -> (group int32 [N], local row uint32 [N])."""
        T, B = self.nr_tables, int(batch_size)
        bounds = offsets[np.arange(T + 1) * B]
        n = indices.size
        grp = np.empty(n, dtype=np.int32)
        lrow = np.empty(n, dtype=np.uint32)
        for t, rule in enumerate(self.rules):
            a, e = int(bounds[t]), int(bounds[t + 1])
            if a == e:
                continue
            seg = indices[a:e]
            kind = rule[0]
            if kind == "one":
                grp[a:e] = rule[1]
                np.subtract(seg, rule[2], out=lrow[a:e], casting="unsafe")
            elif kind == "bucket":
                _, width, first, ends, starts, gids = rule
                pos = first[seg // width]
                pos += seg >= ends[pos]
                grp[a:e] = gids[pos]
                np.subtract(seg, starts[pos], out=lrow[a:e], casting="unsafe")
            elif kind == "search":
                pos = np.searchsorted(rule[1], seg, side="right") - 1
                grp[a:e] = rule[2][pos]
                np.subtract(seg, rule[1][pos], out=lrow[a:e], casting="unsafe")
            else:
                grp[a:e] = rule[1][seg]
                lrow[a:e] = rule[2][seg]
            c = self.cache.get(t)
            if c is not None and c[0].size:
                crow, cgid, cloc = c
                p = np.minimum(np.searchsorted(crow, seg), crow.size - 1)
                hit = crow[p] == seg
                if hit.any():
                    sel = np.flatnonzero(hit)
                    grp[a + sel] = cgid[p[sel]]
                    lrow[a + sel] = cloc[p[sel]]
        return grp, lrow
