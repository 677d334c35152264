"""Cache-aware placement (UpDLRM level 3): ``cache_aware`` - hot rows replicated, cached and
regular traffic balanced together.

1. Expected load per row from the profile (smoothed, per sample). ``L`` = mean load per DPU.
2. Hot rows: rows whose expected load exceeds ``hot_threshold x L`` (a row that alone would tip a
   DPU's balance), then the next hottest until they take ``min_cached_share`` of all lookups
   (flexible traffic that levels one batch's random fluctuations), hottest first, while the
   replicas fit in ``cache_budget`` of each DPU's table budget. Each hot row gets
   ``R = 2^ceil(log2(load / (hot_threshold x L)))`` replicas (at least ``min_replicas``, at most
   the largest power of two <= nr_dpus) so that one replica's expected share stays under the
   threshold; with ``spread=True`` (default) every tier is then widened as far as the MRAM
   budget allows (replicas on more DPUs give the packer more room to absorb one batch's skew).
3. Rows with the same table and replica count R are dealt (snake order by load) into
   nr_dpus / R ``cache`` groups (row sets); a group's R replicas sit on R distinct DPUs spaced
   nr_dpus / R apart, consecutive groups starting on consecutive DPUs.
4. All rows (cached ones included: every row keeps one base copy) are cut into weighted ranges
   and dealt by LPT (see :mod:`partition.popularity`), with cached rows weighing nothing (their
   lookups go to the cache) and each DPU starting from its expected cached traffic - so cached
   and regular accesses are balanced together. By default the dealing goes table by table
   (:func:`partition.popularity.table_ordered_ranges`: each table cut into ~nr_dpus ranges of
   equal expected load, every DPU getting a slice of every table). The PIM packer now counts
   the whole batch's base load before it chooses any replica (Router order "base_first"), so
   the old reason for this order (a packer choosing online, table after table) is gone; it is
   kept because it still measured better than one global LPT under the new packer: equal at the
   issue-4 setting (full Kaggle, Zipf 1.05, 2,048 DPUs: imbalance 1.000 both) and clearly better
   at low skew on the 7 big Kaggle tables (Zipf 0.6: 1.07 vs 1.23; Zipf 0.9 without
   min_cached_share: 1.007 vs 1.186; benchmarks/results/partition/partition_ablation.json), probably because its
   finer, per-table pieces leave less expected imbalance for the cache to absorb. Global LPT
   plans faster (~3 s vs ~5 s at the issue-4 setting).

Per batch the packer counts every base lookup first, then sends each lookup of a cached row to
the least-loaded of its replicas (:class:`partition.routing.Router` reproduces the same per-DPU
counts in numpy for the estimator).
"""

from __future__ import annotations

import numpy as np

from .errors import PlanError
from .interfaces import Budget, Placement, Strategy
from .popularity import balanced_ranges, smoothed_load, table_ordered_ranges
from .types import RowGroup, Shard


#: (hot_threshold, min_cached_share) pairs tried by ``CacheAware(tune=True)``.
TUNE_GRID = ((0.01, 0.3), (0.02, 0.3), (0.05, 0.0), (0.05, 0.3), (0.05, 0.6), (0.2, 0.3))


class CacheAware(Strategy):
    """Hot-row caches + popularity-balanced base ranges (see module doc).

    hot_threshold: a row is hot when its expected load > hot_threshold x mean DPU load;
    cache_budget: share of each DPU's table budget the caches may take (0..1);
    min_replicas: replicas of the coolest hot rows; spread: widen tiers to use the cache budget;
    max_hot_rows: cap on cached rows per table; granularity, smoothing: as popularity_balanced;
    min_cached_share: also cache the next hottest rows until the cache takes at least this share of
    the profiled lookups (MRAM permitting): flexible traffic the packer uses to level one batch's
    random fluctuations when no single row is hot (low skew);
    tune: choose hot_threshold and min_cached_share with the cost estimator instead: every pair of
    :data:`TUNE_GRID` is placed and evaluated on two batches drawn from the profile itself
    (:meth:`AccessProfile.sample_batch`, never the held-out trace); the lowest estimated latency
    wins (candidates recorded in ``plan.meta["tuning"]``). Several times slower to plan.
    table_order: deal base ranges table by table (default; measured better balanced than one
    global LPT at low skew under the packer's base-first replica choice, see module doc) instead
    of one global LPT (faster planning).
    """

    name = "cache_aware"
    needs_profile = True

    def __init__(self, hot_threshold: float = 0.05, cache_budget: float = 0.25, min_replicas: int = 2,
                 spread: bool = True, max_hot_rows: int = 65536, granularity: float = 4.0, smoothing: float = 0.1,
                 table_order: bool = True, min_cached_share: float = 0.3, tune: bool = False,
                 tune_batch_size: int = 2048):
        if not hot_threshold > 0 or not 0 <= cache_budget <= 1 or min_replicas < 2 or max_hot_rows < 0:
            raise PlanError(
                "cache_aware needs hot_threshold > 0, 0 <= cache_budget <= 1, min_replicas >= 2, max_hot_rows >= 0; "
                f"got {hot_threshold}, {cache_budget}, {min_replicas}, {max_hot_rows}"
            )
        self.hot_threshold = float(hot_threshold)
        self.cache_budget = float(cache_budget)
        self.min_replicas = int(min_replicas)
        self.spread = bool(spread)
        self.max_hot_rows = int(max_hot_rows)
        self.granularity = float(granularity)
        self.smoothing = float(smoothing)
        self.table_order = bool(table_order)
        if not 0 <= min_cached_share <= 1:
            raise PlanError(f"cache_aware min_cached_share must be in [0, 1], got {min_cached_share}")
        self.min_cached_share = float(min_cached_share)
        self.tune = bool(tune)
        self.tune_batch_size = int(tune_batch_size)

    def place(self, tables, topology, budget: Budget, profile=None) -> Placement:
        profile.check_tables(tables)
        if self.tune:
            return self._tuned(tables, topology, budget, profile)
        return self._place(tables, topology, budget, profile)

    def _tuned(self, tables, topology, budget, profile) -> Placement:
        from .cost import CostEstimator
        from .types import Plan
        from .validate import assign_offsets

        batches = [profile.sample_batch(self.tune_batch_size, seed=s) for s in (1, 2)]
        est = CostEstimator()
        best, tried = None, []
        for thr, share in TUNE_GRID:
            cand = CacheAware(hot_threshold=thr, cache_budget=self.cache_budget, min_replicas=self.min_replicas,
                              spread=self.spread, max_hot_rows=self.max_hot_rows, granularity=self.granularity,
                              smoothing=self.smoothing, table_order=self.table_order, min_cached_share=share)
            try:
                pl = cand._place(tables, topology, budget, profile)
            except PlanError as exc:
                tried.append({"hot_threshold": thr, "min_cached_share": share, "error": str(exc)})
                continue
            plan = Plan(list(tables), topology, pl.groups, pl.shards, request_bytes=budget.request_bytes,
                        output_bytes=budget.output_bytes, dtype=budget.dtype)
            assign_offsets(plan)
            lat = float(np.mean([est.batch_cost(plan, i, o, b).latency_us for i, o, b in batches]))
            tried.append({"hot_threshold": thr, "min_cached_share": share, "latency_us": lat})
            if best is None or lat < best[0]:
                best = (lat, thr, share, pl)
        if best is None:
            raise PlanError(f"cache_aware tuning: no candidate could be placed: {tried[0]['error']}")
        lat, thr, share, pl = best
        pl.meta.update({"tuning": tried, "hot_threshold": thr, "min_cached_share": share})
        return pl

    def _place(self, tables, topology, budget: Budget, profile) -> Placement:
        n = topology.nr_dpus
        loads = [smoothed_load(profile.counts[t], self.smoothing) for t in range(len(tables))]
        mean_dpu = sum(float(l.sum()) for l in loads) / n
        thr = self.hot_threshold * mean_dpu
        # hot candidates of every table (its max_hot_rows hottest rows), hottest first over all tables
        cand_t, cand_r, cand_w = [], [], []
        for t, l in enumerate(loads):
            k = min(self.max_hot_rows, l.size)
            if k == 0:
                continue
            top = np.argpartition(-l, k - 1)[:k] if k < l.size else np.arange(l.size)
            cand_t.append(np.full(top.size, t, dtype=np.int64))
            cand_r.append(top.astype(np.int64))
            cand_w.append(l[top])
        hot_t = np.concatenate(cand_t) if cand_t else np.zeros(0, dtype=np.int64)
        hot_r = np.concatenate(cand_r) if cand_r else np.zeros(0, dtype=np.int64)
        hot_w = np.concatenate(cand_w) if cand_w else np.zeros(0)
        order = np.argsort(-hot_w, kind="stable")
        hot_t, hot_r, hot_w = hot_t[order], hot_r[order], hot_w[order]
        # hot = above the threshold, plus the next hottest until min_cached_share of all lookups
        total_load = sum(float(l.sum()) for l in loads)
        share = np.cumsum(hot_w) / total_load if total_load > 0 else np.zeros(hot_w.size)
        sel = (hot_w > thr) | (np.concatenate(([0.0], share[:-1])) < self.min_cached_share)
        sel &= hot_w > 0
        hot_t, hot_r, hot_w = hot_t[sel], hot_r[sel], hot_w[sel]
        max_log = int(np.floor(np.log2(n))) if n >= 2 else 0
        if n < 2 or hot_w.size == 0:
            hot_t, hot_r, hot_w = hot_t[:0], hot_r[:0], hot_w[:0]
            log_r = np.zeros(0, dtype=np.int64)
        else:
            need = np.ceil(np.log2(np.maximum(hot_w / thr, 1.0))).astype(np.int64)
            log_r = np.clip(need, int(np.ceil(np.log2(self.min_replicas))), max_log)
        rbytes = np.array([budget.row_bytes(s.dim) for s in tables], dtype=np.int64)
        cache_cap = int(self.cache_budget * budget.table_bytes)
        # hottest first (already sorted); keep rows while the per-DPU cache bytes (row_bytes x R / n) fit

        def per_dpu_bytes(lr):
            # mean cache bytes per DPU (+ slack per table); validation checks the real worst DPU
            return int(np.ceil((rbytes[hot_t] * (2 ** lr) / n)).sum()) + len(tables) * 64

        cum = np.cumsum(np.ceil(rbytes[hot_t] * (2.0 ** log_r) / n))
        keep = int(np.searchsorted(cum, cache_cap, side="right"))
        hot_t, hot_r, hot_w, log_r = hot_t[:keep], hot_r[:keep], hot_w[:keep], log_r[:keep]
        if self.spread and keep:
            # widen every tier by the same factor while the budget allows
            while log_r.min() < max_log:
                wider = np.minimum(log_r + 1, max_log)
                if per_dpu_bytes(wider) > cache_cap:
                    break
                log_r = wider
        # cache groups: per (table, replica tier R), the tier's rows dealt (snake order by load)
        # into nr_dpus // R subgroups whose R replicas sit on distinct DPUs nr_dpus / R apart, the
        # subgroups' start DPUs consecutive: every DPU holds about one replica per (table, tier)
        groups: list[RowGroup] = []
        shards: list[Shard] = []
        start_loads = np.zeros(n)
        start_bytes = np.zeros(n, dtype=np.int64)
        cache_loads = [np.zeros(n) for _ in tables]  # expected cached load per table per DPU
        rot = 0
        tiers = sorted(set(zip(hot_t.tolist(), log_r.tolist())))
        for t, lr in tiers:
            m = np.flatnonzero((hot_t == t) & (log_r == lr))  # hottest first
            R = 2 ** lr
            nsub = max(1, min(m.size, n // R))
            k = np.arange(m.size)
            lap, pos = np.divmod(k, nsub)
            sub = np.where(lap % 2 == 0, pos, nsub - 1 - pos)
            for j in range(nsub):
                mj = m[sub == j]
                rows = np.sort(hot_r[mj])
                gi = len(groups)
                groups.append(RowGroup(table=t, rows=rows, kind="cache"))
                dpus = (rot + (np.arange(R) * n) // R) % n
                rot = (rot + 1) % n
                for r_i, d in enumerate(dpus.tolist()):
                    shards.append(Shard(table=t, group=gi, replica=r_i, dpu=d, col_lo=0, col_hi=tables[t].dim))
                w = float(hot_w[mj].sum()) / R
                start_loads[dpus] += w
                cache_loads[t][dpus] += w
                start_bytes[dpus] += rows.size * int(rbytes[t])
        # base ranges: cached rows weigh nothing (their lookups go to the cache)
        base_loads = []
        for t, l in enumerate(loads):
            bl = l.copy()
            bl[hot_r[hot_t == t]] = 0.0
            base_loads.append(bl)
        if self.table_order:
            bgroups, bshards, dpu_load = table_ordered_ranges(
                tables, topology, budget, base_loads, start_bytes=start_bytes, extra_loads=cache_loads)
        else:
            bgroups, bshards, dpu_load = balanced_ranges(
                tables, topology, budget, base_loads, self.granularity, start_loads=start_loads, start_bytes=start_bytes
            )
        off = len(groups)
        for s in bshards:
            s.group += off
        groups.extend(bgroups)
        shards.extend(bshards)
        total = sum(float(l.sum()) for l in loads)
        meta = {
            "hot_rows": int(hot_r.size),
            "cache_groups": sum(1 for g in groups if g.kind == "cache"),
            "cached_load_share": float(hot_w.sum() / total) if total > 0 else 0.0,
            "replicas_min": int(2 ** log_r.min()) if log_r.size else 0,
            "replicas_max": int(2 ** log_r.max()) if log_r.size else 0,
            "cache_bytes_per_dpu_max": int(start_bytes.max()) if n else 0,
        }
        return Placement(groups, shards, meta)
