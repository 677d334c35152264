"""Plan layout and validation: shard arrays, MRAM offsets, and every rule a plan must satisfy.

This is the boundary of the partitioner: :func:`validate_plan` checks a plan once (coverage of
every row and column, DPU ids, MRAM offsets and capacity including the request and output
buffers, shard limits, table shapes) and raises :class:`PlanError` / :class:`PlanDoesNotFitError`
naming what is wrong. Everything is vectorized over shards with numpy; the only Python loops run
over tables or error cases.
"""

from __future__ import annotations

import operator
from typing import Optional, Sequence

import numpy as np

from .errors import PlanDoesNotFitError, PlanError, fmt_bytes
from .types import DTYPES, MRAM_ALIGN, Plan, TableSpec, Topology, dtype_bytes

#: Shard descriptors one DPU can hold (UPDLRM_MAX_SHARDS in dpu_kernels/include/updlrm_abi.h).
MAX_SHARDS_PER_DPU = 4096

GROUP_KINDS = ("base", "cache")


def row_bytes_array(nr_cols: np.ndarray, dtype: str = "fp32") -> np.ndarray:
    """Vectorized :func:`types.row_bytes`: bytes per stored row of ``dtype`` (padded to 8 B), int64 array."""
    nr_cols = np.asarray(nr_cols, dtype=np.int64)
    return (nr_cols * dtype_bytes(dtype) + MRAM_ALIGN - 1) // MRAM_ALIGN * MRAM_ALIGN


def table_budget_bytes(topology: Topology, request_bytes: int, output_bytes: int) -> int:
    """MRAM bytes per DPU left for table shards once the request and output buffers are reserved."""
    return int(topology.mram_heap_bytes) - int(request_bytes) - int(output_bytes)


def group_nr_rows(plan: Plan) -> np.ndarray:
    """Rows of every group, shape [nr_groups], int64."""
    return np.fromiter((g.nr_rows for g in plan.groups), dtype=np.int64, count=len(plan.groups))


def shard_arrays(plan: Plan) -> dict[str, np.ndarray]:
    """The plan's shards as parallel int64 arrays, each of shape [nr_shards].

    Keys: ``table``, ``group``, ``replica``, ``dpu``, ``col_lo``, ``col_hi``, ``mram_offset``
    (bytes), ``nr_rows`` (rows of the shard's group), ``row_bytes`` (bytes per stored row of
    ``plan.dtype``, 8-aligned), ``sum_bytes`` (bytes of one partial-sum row, 4 B per column, 8-aligned),
    ``nbytes`` (MRAM bytes of the shard = nr_rows * row_bytes).
    """
    n = len(plan.shards)
    fields = ("table", "group", "replica", "dpu", "col_lo", "col_hi", "mram_offset")
    get = operator.attrgetter(*fields)  # one C-level call per shard (a loop of getattr is 3x slower)
    raw = np.array(list(map(get, plan.shards)), dtype=np.int64).reshape(n, len(fields))
    out = {f: raw[:, i].copy() for i, f in enumerate(fields)}
    g_rows = group_nr_rows(plan)
    grp = out["group"]
    ok = (grp >= 0) & (grp < len(plan.groups))
    nr_rows = np.zeros(n, dtype=np.int64)
    nr_rows[ok] = g_rows[grp[ok]]
    out["nr_rows"] = nr_rows
    out["row_bytes"] = row_bytes_array(out["col_hi"] - out["col_lo"], plan.dtype)
    out["sum_bytes"] = row_bytes_array(out["col_hi"] - out["col_lo"], "fp32")
    out["nbytes"] = nr_rows * out["row_bytes"]
    return out


def assign_offsets(plan: Plan) -> None:
    """Give every shard an MRAM offset: shards of each DPU packed from heap+0 in plan order.

    Shard sizes are multiples of 8 bytes (rows are padded to 8), so every offset is 8-aligned.
    Modifies ``plan.shards`` in place.
    """
    if not plan.shards:
        return
    a = shard_arrays(plan)
    dpu = a["dpu"]
    order = np.argsort(dpu, kind="stable")
    sizes = a["nbytes"][order]
    ends = np.cumsum(sizes)
    d_sorted = dpu[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = d_sorted[1:] != d_sorted[:-1]
    seg_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    base = (ends - sizes)[seg_start]
    offs = np.empty(len(order), dtype=np.int64)
    offs[order] = ends - sizes - base
    for s, o in zip(plan.shards, offs.tolist()):
        s.mram_offset = o


def per_dpu_table_bytes(plan: Plan, arrays: Optional[dict] = None) -> np.ndarray:
    """MRAM bytes of table shards on each DPU, shape [nr_dpus], int64 (ids out of range ignored)."""
    a = arrays if arrays is not None else shard_arrays(plan)
    n = plan.topology.nr_dpus
    ok = (a["dpu"] >= 0) & (a["dpu"] < n)
    return np.bincount(a["dpu"][ok], weights=a["nbytes"][ok], minlength=n).astype(np.int64)


def tables_end_bytes(plan: Plan) -> int:
    """Largest end (offset + size) of any shard on any DPU: where the request region may start.

    One push serves all DPUs at the same offset, so the request and output regions sit above the
    fullest DPU's shards on every DPU.
    """
    if not plan.shards:
        return 0
    a = shard_arrays(plan)
    return int((a["mram_offset"] + a["nbytes"]).max())


def check_model_fits(tables: Sequence[TableSpec], topology: Topology, request_bytes: int, output_bytes: int,
                     dtype: str = "fp32") -> None:
    """Raise PlanDoesNotFitError when the tables cannot fit in all DPUs together, whatever the plan.

    The message gives the total shortfall in bytes: tables (rows x dim x bytes of ``dtype``, rows
    padded to 8 B) against ``nr_dpus`` x (MRAM heap - request - output).
    """
    budget = table_budget_bytes(topology, request_bytes, output_bytes)
    heap = topology.mram_heap_bytes
    if budget <= 0:
        raise PlanDoesNotFitError(
            f"request buffer {fmt_bytes(request_bytes)} + output buffer {fmt_bytes(output_bytes)} "
            f"leave no room for tables in a DPU's {fmt_bytes(heap)} MRAM heap: "
            f"{fmt_bytes(1 - budget)} short",
            shortfall_bytes=1 - budget,
        )
    rows = np.array([t.rows for t in tables], dtype=np.int64)
    dims = np.array([t.dim for t in tables], dtype=np.int64)
    need = int((rows * row_bytes_array(dims, dtype)).sum())
    have = budget * topology.nr_dpus
    if need > have:
        smaller = [d for d in ("int16", "int8") if dtype_bytes(d) < dtype_bytes(dtype)]
        hint = f", a smaller dtype ({' or '.join(smaller)})" if smaller else ""
        raise PlanDoesNotFitError(
            f"the model's {len(tables)} tables in {dtype} need {fmt_bytes(need)} of MRAM but {topology.nr_dpus:,} DPUs "
            f"hold {fmt_bytes(have)} for tables ({topology.nr_dpus:,} x ({fmt_bytes(heap)} heap - request "
            f"{fmt_bytes(request_bytes)} - output {fmt_bytes(output_bytes)})): {fmt_bytes(need - have)} short; "
            f"use more DPUs, smaller buffers{hint}, or fewer rows",
            shortfall_bytes=need - have,
        )


def check_tables(tables: Sequence[TableSpec]) -> None:
    """Each table has a name, rows >= 1 and dim >= 1."""
    if len(tables) == 0:
        raise PlanError("a plan needs at least one table, got none")
    for t, spec in enumerate(tables):
        if not isinstance(spec, TableSpec):
            raise PlanError(f"table {t} is a {type(spec).__name__}, expected TableSpec")
        if spec.rows < 1 or spec.dim < 1:
            raise PlanError(f"table {t} {spec.name!r} has shape {spec.rows:,} x {spec.dim}: rows and dim must be >= 1")


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def validate_plan(plan: Plan, tables: Optional[Sequence[TableSpec]] = None) -> None:
    """Check every rule of a plan; raise PlanError / PlanDoesNotFitError naming the first violation.

    Rules: shapes equal ``tables`` (when given); groups name a valid table, kind and rows; every row
    of every table is in exactly one ``base`` group; a row is in at most one ``cache`` group; every
    group has replicas 0..R-1 and each replica covers columns [0, dim) exactly once; shard DPU ids
    in [0, nr_dpus); MRAM offsets 8-aligned and non-overlapping on each DPU; each DPU's tables plus
    ``request_bytes`` plus ``output_bytes`` fit its MRAM heap; at most 4,096 shards per DPU.
    Returns None; never modifies the plan.
    """
    check_tables(plan.tables)
    if plan.dtype not in DTYPES:
        raise PlanError(f"plan dtype {plan.dtype!r} is not one of {', '.join(DTYPES)}")
    if tables is not None:
        _check_shapes(plan, tables)
    topo = plan.topology
    if plan.request_bytes < 0 or plan.output_bytes < 0 or plan.request_bytes % MRAM_ALIGN or plan.output_bytes % MRAM_ALIGN:
        raise PlanError(
            f"request_bytes {plan.request_bytes:,} and output_bytes {plan.output_bytes:,} must be >= 0 and multiples of 8"
        )
    _check_groups(plan)
    if not plan.shards:
        raise PlanError("plan has no shards")
    a = shard_arrays(plan)
    _check_shards_refs(plan, a)
    _check_columns(plan, a)
    _check_dpus(plan, a, topo)


def _check_shapes(plan: Plan, tables: Sequence[TableSpec]) -> None:
    if len(tables) != len(plan.tables):
        raise PlanError(f"plan was made for {len(plan.tables)} tables but the model has {len(tables)}")
    for t, (p, m) in enumerate(zip(plan.tables, tables)):
        if p.rows != m.rows or p.dim != m.dim:
            raise PlanError(
                f"plan was made for table {t} {p.name!r} with {p.rows:,} x {p.dim} but the model has "
                f"{m.name!r} with {m.rows:,} x {m.dim}"
            )


def _check_groups(plan: Plan) -> None:
    tables = plan.tables
    nt = len(tables)
    if not plan.groups:
        raise PlanError("plan has no row groups")
    base_ranges: list[list[tuple[int, int, int]]] = [[] for _ in range(nt)]
    base_sets: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(nt)]
    cache_sets: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(nt)]
    for gi, g in enumerate(plan.groups):
        if not 0 <= g.table < nt:
            raise PlanError(f"group {gi} names table {g.table}, but the plan has tables 0..{nt - 1}")
        if g.kind not in GROUP_KINDS:
            raise PlanError(f"group {gi} of table {g.table} has kind {g.kind!r}; allowed: {', '.join(GROUP_KINDS)}")
        rows = tables[g.table].rows
        name = tables[g.table].name
        if g.rows is not None:
            r = np.asarray(g.rows)
            if r.ndim != 1 or r.size == 0 or not np.issubdtype(r.dtype, np.integer):
                raise PlanError(f"group {gi} of table {g.table} {name!r}: rows must be a non-empty 1-D integer array")
            if r[0] < 0 or r[-1] >= rows:
                bad = int(r[0]) if r[0] < 0 else int(r[-1])
                raise PlanError(f"group {gi} of table {g.table} {name!r} holds row {bad}, outside [0, {rows:,})")
            if r.size > 1 and not np.all(r[1:] > r[:-1]):
                pos = _first(r[1:] <= r[:-1]) + 1
                raise PlanError(
                    f"group {gi} of table {g.table} {name!r}: rows must be sorted and unique, "
                    f"but position {pos} holds {int(r[pos])} after {int(r[pos - 1])}"
                )
            (base_sets if g.kind == "base" else cache_sets)[g.table].append((gi, r))
        else:
            if not 0 <= g.row_lo < g.row_hi <= rows:
                raise PlanError(
                    f"group {gi} of table {g.table} {name!r} has rows [{g.row_lo:,}, {g.row_hi:,}); "
                    f"need 0 <= row_lo < row_hi <= {rows:,}"
                )
            if g.kind == "base":
                base_ranges[g.table].append((g.row_lo, g.row_hi, gi))
            else:
                cache_sets[g.table].append((gi, np.arange(g.row_lo, g.row_hi)))
    for t, spec in enumerate(tables):
        if not base_sets[t]:
            _check_ranges_partition(t, spec, base_ranges[t])
        else:
            _check_count_partition(t, spec, base_ranges[t], base_sets[t])
        if cache_sets[t]:
            allr = np.concatenate([r for _, r in cache_sets[t]])
            cnt = np.bincount(allr, minlength=spec.rows)
            if cnt.max() > 1:
                row = _first(cnt > 1)
                gs = [gi for gi, r in cache_sets[t] if np.any(r == row)]
                raise PlanError(f"table {t} {spec.name!r}: row {row} is in {int(cnt[row])} cache groups ({gs}); at most one allowed")


def _check_ranges_partition(t: int, spec: TableSpec, ranges: list[tuple[int, int, int]]) -> None:
    if not ranges:
        raise PlanError(f"table {t} {spec.name!r} has no base group: its {spec.rows:,} rows are not placed")
    r = np.array(sorted(ranges), dtype=np.int64)
    lo, hi, gi = r[:, 0], r[:, 1], r[:, 2]
    if lo[0] != 0:
        raise PlanError(f"table {t} {spec.name!r}: rows [0, {int(lo[0]):,}) are in no base group")
    if hi[-1] != spec.rows:
        hi_max = int(hi.max())
        if hi_max < spec.rows:
            raise PlanError(f"table {t} {spec.name!r}: rows [{hi_max:,}, {spec.rows:,}) are in no base group")
    if len(r) > 1:
        gap = hi[:-1] < lo[1:]
        over = hi[:-1] > lo[1:]
        if gap.any():
            i = _first(gap)
            raise PlanError(f"table {t} {spec.name!r}: rows [{int(hi[i]):,}, {int(lo[i + 1]):,}) are in no base group")
        if over.any():
            i = _first(over)
            raise PlanError(
                f"table {t} {spec.name!r}: row {int(lo[i + 1]):,} is in two base groups ({int(gi[i])} and {int(gi[i + 1])})"
            )


def _check_count_partition(t: int, spec: TableSpec, ranges, sets) -> None:
    cnt = np.zeros(spec.rows + 1, dtype=np.int64)
    if ranges:
        rr = np.array(ranges, dtype=np.int64)
        np.add.at(cnt, rr[:, 0], 1)
        np.add.at(cnt, rr[:, 1], -1)
        cnt = np.cumsum(cnt)
    cnt = cnt[: spec.rows]
    cnt += np.bincount(np.concatenate([r for _, r in sets]), minlength=spec.rows)[: spec.rows]
    if np.any(cnt != 1):
        row = _first(cnt != 1)
        how = "no base group" if cnt[row] == 0 else f"{int(cnt[row])} base groups"
        raise PlanError(f"table {t} {spec.name!r}: row {row:,} is in {how}; every row must be in exactly one")


def _check_shards_refs(plan: Plan, a: dict) -> None:
    ng = len(plan.groups)
    grp = a["group"]
    bad = (grp < 0) | (grp >= ng)
    if bad.any():
        i = _first(bad)
        raise PlanError(f"shard {i} names group {int(grp[i])}, but the plan has groups 0..{ng - 1}")
    g_table = np.fromiter((g.table for g in plan.groups), dtype=np.int64, count=ng)
    bad = g_table[grp] != a["table"]
    if bad.any():
        i = _first(bad)
        raise PlanError(f"shard {i} says table {int(a['table'][i])} but its group {int(grp[i])} is of table {int(g_table[grp[i]])}")
    missing = np.bincount(grp, minlength=ng) == 0
    if missing.any():
        gi = _first(missing)
        raise PlanError(f"group {gi} of table {plan.groups[gi].table} has no shard: its rows are on no DPU")
    dims = np.array([s.dim for s in plan.tables], dtype=np.int64)[a["table"]]
    bad = (a["col_lo"] < 0) | (a["col_hi"] <= a["col_lo"]) | (a["col_hi"] > dims)
    if bad.any():
        i = _first(bad)
        raise PlanError(
            f"shard {i} (table {int(a['table'][i])}, group {int(grp[i])}) has columns [{int(a['col_lo'][i])}, "
            f"{int(a['col_hi'][i])}); need 0 <= col_lo < col_hi <= dim {int(dims[i])}"
        )
    bad = a["replica"] < 0
    if bad.any():
        i = _first(bad)
        raise PlanError(f"shard {i} (group {int(grp[i])}) has replica {int(a['replica'][i])}; replicas are numbered from 0")


def _check_columns(plan: Plan, a: dict) -> None:
    grp, rep, lo, hi = a["group"], a["replica"], a["col_lo"], a["col_hi"]
    dims = np.array([s.dim for s in plan.tables], dtype=np.int64)[a["table"]]
    order = np.lexsort((lo, rep, grp))
    g, r, l, h, d = grp[order], rep[order], lo[order], hi[order], dims[order]
    n = len(order)
    new = np.ones(n, dtype=bool)
    new[1:] = (g[1:] != g[:-1]) | (r[1:] != r[:-1])
    last = np.ones(n, dtype=bool)
    last[:-1] = new[1:]
    bad_first = new & (l != 0)
    bad_last = last & (h != d)
    cont = np.zeros(n, dtype=bool)
    cont[1:] = ~new[1:] & (l[1:] != h[:-1])
    for mask, what in ((bad_first, "start"), (cont, "join"), (bad_last, "end")):
        if mask.any():
            i = _first(mask)
            gi, ri = int(g[i]), int(r[i])
            sl = np.flatnonzero((g == gi) & (r == ri))
            cols = ", ".join(f"[{int(l[j])}, {int(h[j])})" for j in sl[:8])
            raise PlanError(
                f"group {gi} (table {plan.groups[gi].table}) replica {ri}: column slices {cols} do not cover "
                f"[0, {int(d[i])}) exactly once"
            )
    # replicas of each group numbered 0..R-1
    pair_new = new
    gp, rp = g[pair_new], r[pair_new]
    gstart = np.ones(len(gp), dtype=bool)
    gstart[1:] = gp[1:] != gp[:-1]
    idx = np.arange(len(gp))
    first_idx = np.maximum.accumulate(np.where(gstart, idx, 0))
    expect = idx - first_idx
    bad = rp != expect
    if bad.any():
        i = _first(bad)
        gi = int(gp[i])
        have = sorted(set(rp[gp == gi].tolist()))
        raise PlanError(f"group {gi} (table {plan.groups[gi].table}) has replicas {have}; they must be numbered 0..R-1")


def _check_dpus(plan: Plan, a: dict, topo: Topology) -> None:
    dpu = a["dpu"]
    bad = (dpu < 0) | (dpu >= topo.nr_dpus)
    if bad.any():
        i = _first(bad)
        raise PlanError(f"shard {i} (table {int(a['table'][i])}) is on DPU {int(dpu[i])}, but the topology has DPUs 0..{topo.nr_dpus - 1}")
    counts = np.bincount(dpu, minlength=topo.nr_dpus)
    if counts.max() > MAX_SHARDS_PER_DPU:
        d = int(counts.argmax())
        raise PlanError(f"DPU {d} holds {int(counts[d]):,} shards but the kernel takes at most {MAX_SHARDS_PER_DPU:,} per DPU")
    heap = int(topo.mram_heap_bytes)
    req, out = int(plan.request_bytes), int(plan.output_bytes)
    used = per_dpu_table_bytes(plan, a)
    need = used + req + out
    if need.max() > heap:
        d = int(need.argmax())
        short = int(need[d]) - heap
        raise PlanDoesNotFitError(
            f"DPU {d} needs {fmt_bytes(need[d])} of MRAM (tables {int(used[d]):,} + request {req:,} + output {out:,}) "
            f"but has {fmt_bytes(heap)}: {fmt_bytes(short)} short",
            shortfall_bytes=short,
            dpu=d,
        )
    off = a["mram_offset"]
    bad = (off < 0) | (off % MRAM_ALIGN != 0)
    if bad.any():
        i = _first(bad)
        raise PlanError(
            f"shard {i} (table {int(a['table'][i])}) on DPU {int(dpu[i])} has MRAM offset {int(off[i])}; "
            f"need a multiple of {MRAM_ALIGN} >= 0 (call assign_offsets)"
        )
    end = off + a["nbytes"]
    limit = heap - req - out
    bad = end > limit
    if bad.any():
        i = _first(bad)
        raise PlanDoesNotFitError(
            f"shard {i} (table {int(a['table'][i])}) on DPU {int(dpu[i])} ends at MRAM byte {int(end[i]):,}, "
            f"into the request/output region that starts at {limit:,}: {fmt_bytes(int(end[i]) - limit)} short",
            shortfall_bytes=int(end[i]) - limit,
            dpu=int(dpu[i]),
        )
    order = np.lexsort((off, dpu))
    d_s, o_s, e_s = dpu[order], off[order], end[order]
    ov = (d_s[1:] == d_s[:-1]) & (o_s[1:] < e_s[:-1])
    if ov.any():
        i = _first(ov)
        s1, s2 = int(order[i]), int(order[i + 1])
        raise PlanError(
            f"DPU {int(d_s[i])}: shard {s1} at MRAM [{int(o_s[i]):,}, {int(e_s[i]):,}) overlaps shard {s2} at "
            f"[{int(o_s[i + 1]):,}, {int(e_s[i + 1]):,})"
        )
