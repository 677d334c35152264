"""Where each lookup of a batch goes under a plan: the evaluation-side twin of the PIM packer.

Rule (docs/CONTRACTS.md): a lookup of row r of table t goes to the ``cache`` group holding r if
any, else to the ``base`` group holding r; each column slice of the chosen replica gets one entry
(one row-slice read on that shard's DPU). The PIM packer (host/python/packer.cpp) chooses among a
cache group's replicas per *unit* - the lookups of one bag in one group, which then meet on one
replica and cost one partial sum - by "bag fill": all single-replica lookups of the batch are
counted first; then group by group (increasing group id), the group's units in bag order are
spread over its replicas by water-filling the replicas' busiest column-slice DPU loads, each unit
taking the replica whose share holds the unit's midpoint. :class:`Router` reproduces that choice
exactly (same per-DPU entries and partial sums), vectorized per group.

:class:`RowLocator` (the row -> group / local row map) is also what a packer needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import PlanError
from .types import Plan
from .validate import shard_arrays


class RowLocator:
    """Vectorized map from (table, row) to the base group and the cache group holding it.

    Built once per plan. ``base_group(t, rows)`` -> int64 group ids; ``cache_group(t, rows)`` ->
    int64 group ids or -1; ``local_row(groups, rows)`` -> int64 row position inside each group.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        nt = len(plan.tables)
        self._range_lo: list[Optional[np.ndarray]] = [None] * nt
        self._range_gid: list[Optional[np.ndarray]] = [None] * nt
        self._dense: list[Optional[np.ndarray]] = [None] * nt
        self._cache_rows: list[Optional[np.ndarray]] = [None] * nt
        self._cache_gid: list[Optional[np.ndarray]] = [None] * nt
        base: list[list[int]] = [[] for _ in range(nt)]
        cache: list[list[int]] = [[] for _ in range(nt)]
        for gi, g in enumerate(plan.groups):
            (base if g.kind == "base" else cache)[g.table].append(gi)
        self.group_lo = np.array([g.row_lo if g.rows is None else -1 for g in plan.groups], dtype=np.int64)
        for t in range(nt):
            gs = base[t]
            if all(plan.groups[gi].rows is None for gi in gs):
                lo = np.array([plan.groups[gi].row_lo for gi in gs], dtype=np.int64)
                order = np.argsort(lo)
                self._range_lo[t] = lo[order]
                self._range_gid[t] = np.array(gs, dtype=np.int64)[order]
            else:
                dense = np.empty(plan.tables[t].rows, dtype=np.int32)
                for gi in gs:
                    g = plan.groups[gi]
                    dense[g.global_rows()] = gi
                self._dense[t] = dense
            if cache[t]:
                rows = [plan.groups[gi].global_rows() for gi in cache[t]]
                allr = np.concatenate(rows)
                gid = np.repeat(np.array(cache[t], dtype=np.int64), [r.size for r in rows])
                order = np.argsort(allr, kind="stable")
                self._cache_rows[t] = allr[order]
                self._cache_gid[t] = gid[order]

    def has_cache(self, t: int) -> bool:
        return self._cache_rows[t] is not None

    def base_group(self, t: int, rows: np.ndarray) -> np.ndarray:
        """Base group of each row of table t: int64 [n]. ``rows`` must be valid (trusted)."""
        if self._dense[t] is not None:
            return self._dense[t][rows].astype(np.int64)
        lo = self._range_lo[t]
        return self._range_gid[t][np.searchsorted(lo, rows, side="right") - 1]

    def cache_group(self, t: int, rows: np.ndarray) -> np.ndarray:
        """Cache group of each row of table t, or -1 when the row is not cached: int64 [n]."""
        cr = self._cache_rows[t]
        if cr is None:
            return np.full(rows.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(cr, rows), cr.size - 1)
        return np.where(cr[pos] == rows, self._cache_gid[t][pos], -1)

    def group_of(self, t: int, rows: np.ndarray) -> np.ndarray:
        """The group a lookup of each row goes to under the packer rule (cache first): int64 [n]."""
        g = self.base_group(t, rows)
        if self.has_cache(t):
            c = self.cache_group(t, rows)
            g = np.where(c >= 0, c, g)
        return g

    def local_row(self, groups: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Position of each row inside its group (the shard's local row): int64 [n]."""
        out = rows - self.group_lo[groups]
        sets = self.group_lo[groups] < 0
        if sets.any():
            for gi in np.unique(groups[sets]).tolist():
                m = groups == gi
                out[m] = np.searchsorted(self.plan.groups[gi].global_rows(), rows[m])
        return out


@dataclass
class Routed:
    """Entries of one batch: one per (lookup, column slice of the chosen replica).

    shard, dpu, bag: int64 [nr_entries] (bag = t*B + b, the EmbeddingBag bag index);
    cached: bool [nr_lookups], whether each lookup went to a cache group;
    lookups_per_dpu: int64 [nr_dpus] entries per DPU.
    """

    shard: np.ndarray
    dpu: np.ndarray
    bag: np.ndarray
    cached: np.ndarray
    lookups_per_dpu: np.ndarray


class Router:
    """Routes batches under one plan (precomputes the plan's arrays once).

    order: the replica-choice rule.

    * ``"bag_fill"`` (default) is the PIM packer's rule (host/python/packer.cpp): one replica per
      (bag, cache group) unit, so a bag's lookups of one group cost one partial sum. Every lookup
      of a single-replica (base) group is counted first, on every DPU of its column slices; then,
      group by group in increasing id, the group's C lookups are water-filled over its replicas'
      busiest-slice loads (quotas q_j, as :func:`water_fill`), and the units in bag order take
      the replica j whose quota interval [Q_{j-1}, Q_j) holds the unit's midpoint
      ``P + c // 2`` (P: lookups of the group's earlier units, c: the unit's lookups); the chosen
      replicas' DPUs then carry what they got. Per-DPU entries, partial sums and bytes equal the
      packer's exactly (tests check them against the emulator's counters).
    * ``"base_first"``: the packer before one partial sum per bag (one replica per lookup):
      base lookups counted first, then each cached lookup in lookup order to the replica whose
      busiest column-slice DPU has the fewest entries so far, the lowest replica on ties. A bag's
      cached lookups then land on several replicas, each a partial sum to pull and merge.
    * ``"table"``: the packer before d5d8e66, which met lookups table by table: per table, its
      single-replica lookups are counted, then its cached lookups are chosen as above (the old
      packer interleaved the two inside a table; this is its table-granular model). Kept to
      measure what the two-pass packer gained (benchmarks/partition_strategies.py --ablation).

    Implementation: cached lookups are cut into runs of consecutive lookups of the same group;
    a run whose replicas sit on pairwise distinct DPUs is placed at once by :func:`water_fill`
    on the replicas' busiest-slice loads (identical to choosing lookup by lookup, order of the
    chosen replicas included); only runs of a group whose replicas share a DPU are chosen
    lookup by lookup. The Python loops run over tables and runs, not over lookups.
    """

    ORDERS = ("bag_fill", "base_first", "table")

    def __init__(self, plan: Plan, order: str = "bag_fill"):
        if order not in self.ORDERS:
            raise PlanError(f"router order must be one of {self.ORDERS}, got {order!r}")
        self.order = order
        self.plan = plan
        self.locator = RowLocator(plan)
        a = shard_arrays(plan)
        self.shards = a
        ng = len(plan.groups)
        # slots: one per (group, replica) in (group, replica) order - the packer's replica order;
        # each slot lists its shards (column slices) by col_lo, CSR
        key = a["group"] * (a["replica"].max() + 1 if len(a["replica"]) else 1) + a["replica"]
        so = np.lexsort((a["col_lo"], key))
        k_sorted = key[so]
        uniq, first, count = np.unique(k_sorted, return_index=True, return_counts=True)
        self.slot_shards = so  # shards grouped by slot
        self.slot_start = first
        self.slot_count = count
        slot_group = a["group"][so[first]]
        self.replicas = np.bincount(slot_group, minlength=ng)
        self.group_slot0 = np.zeros(ng, dtype=np.int64)
        np.cumsum(self.replicas[:-1], out=self.group_slot0[1:])
        self.multi_groups = np.flatnonzero(self.replicas > 1)
        # per multi-replica group: DPUs of its slices (slot order), slice starts, whether its
        # replicas' DPUs are pairwise distinct (then a run is one water-fill)
        self._gdpu: dict[int, np.ndarray] = {}
        self._gcut: dict[int, Optional[np.ndarray]] = {}
        self._gdisjoint: dict[int, bool] = {}
        for gi in self.multi_groups.tolist():
            s0, r = int(self.group_slot0[gi]), int(self.replicas[gi])
            lo = int(self.slot_start[s0])
            hi = int(self.slot_start[s0 + r - 1] + self.slot_count[s0 + r - 1])
            d = a["dpu"][so[lo:hi]].astype(np.int64)
            self._gdpu[gi] = d
            cnt = self.slot_count[s0:s0 + r]
            self._gcut[gi] = None if cnt.max() == 1 else (self.slot_start[s0:s0 + r] - lo)
            self._gdisjoint[gi] = np.unique(d).size == d.size

    def route(self, indices: np.ndarray, offsets: np.ndarray, batch_size: int) -> Routed:
        """Entries of one batch (table-major indices [nnz], offsets [T*B+1]); inputs trusted."""
        plan = self.plan
        T = len(plan.tables)
        B = int(batch_size)
        if len(offsets) != T * B + 1:
            raise PlanError(f"offsets have {len(offsets)} entries; need T*B+1 = {T * B + 1}")
        lengths = np.diff(offsets)
        bag = np.repeat(np.arange(T * B, dtype=np.int64), lengths)
        group = np.empty(len(indices), dtype=np.int64)
        for t in range(T):
            a, b = int(offsets[t * B]), int(offsets[(t + 1) * B])
            if b > a:
                group[a:b] = self.locator.group_of(t, indices[a:b])
        reps = self.replicas[group]
        cached = reps > 1
        n = self.plan.topology.nr_dpus
        slot = self.group_slot0[group]  # replica 0 until chosen
        load = np.zeros(n, dtype=np.int64)
        if self.order == "bag_fill":
            load += self._entry_load(slot[~cached], n)
            if cached.any():
                self._bag_fill(group, bag, cached, slot, load)
            shard_idx, lookup_idx = self._expand(slot)
            dpu = self.shards["dpu"][shard_idx]
            return Routed(shard_idx, dpu, bag[lookup_idx], cached, np.bincount(dpu, minlength=n))
        if self.order == "base_first":
            phases = [(0, len(indices))]
        else:  # table by table, as the old packer met lookups in table-major order
            phases = [(int(offsets[t * B]), int(offsets[(t + 1) * B])) for t in range(T)]
        for a, b in phases:
            if b <= a:
                continue
            seg_c = cached[a:b]
            load += self._entry_load(slot[a:b][~seg_c], n)
            if seg_c.any():
                pos = np.flatnonzero(seg_c) + a
                slot[pos] = self._choose(group[pos], load)
        shard_idx, lookup_idx = self._expand(slot)
        dpu = self.shards["dpu"][shard_idx]
        return Routed(shard_idx, dpu, bag[lookup_idx], cached, np.bincount(dpu, minlength=n))

    def _bag_fill(self, group: np.ndarray, bag: np.ndarray, cached: np.ndarray, slot: np.ndarray,
                  load: np.ndarray) -> None:
        """The "bag_fill" choice for the cached lookups: sets ``slot`` of each, adds to ``load``."""
        ci = np.flatnonzero(cached)
        g = group[ci]
        o = np.argsort(g, kind="stable")  # by group, bag order kept inside a group
        ci, g = ci[o], g[o]
        bg = bag[ci]
        new = np.ones(ci.size, dtype=bool)
        new[1:] = (g[1:] != g[:-1]) | (bg[1:] != bg[:-1])
        ustart = np.flatnonzero(new)
        ucount = np.diff(np.append(ustart, ci.size))
        ugroup = g[ustart]
        uid = np.cumsum(new) - 1  # unit of each cached lookup
        urep = np.empty(ustart.size, dtype=np.int64)
        gcut = np.flatnonzero(np.concatenate(([True], ugroup[1:] != ugroup[:-1])))
        gend = np.append(gcut[1:], ustart.size)
        for u0, u1 in zip(gcut.tolist(), gend.tolist()):
            gi = int(ugroup[u0])
            c = ucount[u0:u1]
            bins = self._bins(gi, load)
            q = np.cumsum(water_fill(bins, int(c.sum())))
            mid = np.cumsum(c) - c + c // 2
            j = np.searchsorted(q, mid, side="right")
            urep[u0:u1] = j
            got = np.bincount(j, weights=c, minlength=bins.size).astype(np.int64)
            s0, r = int(self.group_slot0[gi]), int(self.replicas[gi])
            np.add.at(load, self._gdpu[gi], np.repeat(got, self.slot_count[s0:s0 + r]))
        slot[ci] = self.group_slot0[ugroup[uid]] + urep[uid]

    def _choose(self, cg: np.ndarray, load: np.ndarray) -> np.ndarray:
        """Replicas for lookups of multi-replica groups ``cg`` [m] (in lookup order), each to the
        replica whose busiest slice DPU has the least ``load`` so far (lowest replica on ties);
        ``load`` [D] is updated in place. Returns the chosen slot per lookup, int64 [m]."""
        m = len(cg)
        out = np.empty(m, dtype=np.int64)
        if m == 0:
            return out
        cuts = np.flatnonzero(cg[1:] != cg[:-1]) + 1
        starts = np.concatenate(([0], cuts)).tolist()
        ends = np.concatenate((cuts, [m])).tolist()
        gids = cg[starts].tolist()
        for s, e, gi in zip(starts, ends, gids):
            out[s:e] = self.group_slot0[gi] + self._run(gi, e - s, load)
        return out

    def _bins(self, gi: int, load: np.ndarray) -> np.ndarray:
        """Load of each replica of group gi: its busiest slice DPU's entries, int64 [R]."""
        v = load[self._gdpu[gi]]
        cut = self._gcut[gi]
        return v if cut is None else np.maximum.reduceat(v, cut)

    def _run(self, gi: int, c: int, load: np.ndarray) -> np.ndarray:
        """Replica numbers of ``c`` consecutive lookups of group gi, chosen one at a time by the
        packer's rule; adds their entries to ``load``. int64 [c]."""
        d = self._gdpu[gi]
        s0, r = int(self.group_slot0[gi]), int(self.replicas[gi])
        per_slot = self.slot_count[s0:s0 + r]
        if self._gdisjoint[gi]:
            bins = self._bins(gi, load)
            take = water_fill(bins, c)
            rep = np.repeat(np.arange(r, dtype=np.int64), take)
            # the k-th lookup given to replica j was placed when j's load was bins[j] + k; lookup by
            # lookup, choices go in increasing (load, replica) order
            k = np.arange(c, dtype=np.int64) - np.repeat(np.cumsum(take) - take, take)
            seq = rep[np.lexsort((rep, bins[rep] + k))]
            load[d] += np.repeat(take, per_slot)  # distinct DPUs: plain fancy add is exact
            return seq
        seq = np.empty(c, dtype=np.int64)
        bounds = np.concatenate(([0], np.cumsum(per_slot)))
        for i in range(c):  # replicas share a DPU: each choice moves the others' loads
            j = int(np.argmin(self._bins(gi, load)))
            np.add.at(load, d[bounds[j]:bounds[j + 1]], 1)
            seq[i] = j
        return seq

    def _expand(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shards of each slot, flattened: (shard ids [E], index into ``slots`` of each [E])."""
        cnt = self.slot_count[slots]
        if cnt.size and cnt.max() == 1:
            return self.slot_shards[self.slot_start[slots]], np.arange(len(slots))
        owner = np.repeat(np.arange(len(slots)), cnt)
        first = np.repeat(self.slot_start[slots] - np.cumsum(cnt) + cnt, cnt)
        return self.slot_shards[first + np.arange(len(owner))], owner

    def _entry_load(self, slots: np.ndarray, n: int) -> np.ndarray:
        sh, _ = self._expand(slots)
        return np.bincount(self.shards["dpu"][sh], minlength=n).astype(np.int64)


def water_fill(loads: np.ndarray, count: int) -> np.ndarray:
    """Split ``count`` unit items over bins with current ``loads`` [R] so that the lowest bins rise
    to a common level (greedy least-loaded, one item at a time, has the same outcome).

    Returns int64 [R] items per bin, summing to ``count``; identical to handing the items one by
    one to ``argmin(loads)`` (lowest index on ties).
    """
    loads = np.asarray(loads, dtype=np.int64)
    r = loads.size
    if count <= 0 or r == 0:
        return np.zeros(r, dtype=np.int64)
    order = np.argsort(loads, kind="stable")
    s = loads[order]
    csum = np.cumsum(s)
    # raising the k lowest bins to level s[k-1] costs k*s[k-1] - csum[k-1]
    k_idx = np.arange(1, r + 1)
    cost = k_idx * s - csum
    k = int(np.searchsorted(cost, count, side="right"))  # bins that get filled: the k lowest (k >= 1)
    k = max(k, 1)
    level, rem = divmod(count + int(csum[k - 1]), k)
    out = np.zeros(r, dtype=np.int64)
    out[order[:k]] = level - s[:k]
    # the remainder: one more each to the lowest-index bins among them (greedy's tie rule)
    out[np.sort(order[:k])[:rem]] += 1
    return out
