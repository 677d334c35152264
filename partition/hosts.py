"""Two-level plans: embedding shards on H hosts (one PIM server each), then DPUs within each host.

Level 1, hosts. Every table becomes one or more *host shards*: the whole table, or a row range
``[row_lo, row_hi)`` of it that may also carry a copy of the table's hot rows. Each host shard has
``replicas`` copies on distinct hosts. Level 2, DPUs. The host shards on one host are the tables
of an ordinary :class:`partition.types.Plan` for that host's DPUs, made with the existing
strategies (:func:`partition.planner.make_plan`). A :class:`HostPlan` holds both levels, and one
file (:func:`save_host_plan` / :func:`load_host_plan`) stores and validates all of it::

    table C3 (10M rows) -> shards C3[0:5M] (+hot), C3[5M:10M] (+hot)   hosts: shard j, replica r
    table C1 (1,460)    -> shard  C1                                   -> plan.shards[j].hosts[r]
    host h: its shards, in plan order, are the tables of plan.host_plans[h] (a DPU plan)

Routing a batch (:class:`HostRouter`, used by the serving front end and by the cost model alike):
a lookup of a split table goes to the range holding its row; a lookup of a hot row goes to the
range of the first cold lookup in its bag (one partial sum per bag on one host), or, in a bag
with only hot lookups, to range ``bag mod k``. Local row ids: ``row - row_lo`` in the range,
``(row_hi - row_lo) + rank of the row among the hot rows`` for a hot copy.

Costs (:func:`evaluate_host_plan`, :func:`uniform_host_cost`): per host, the lookups it serves,
the bytes it returns (pooled ``[B, shards served, d]`` float32), its DPUs' modeled latency (the
existing cost model on its own DPU plan) and one network hop (:class:`NetworkModel`: the RPC round
trip plus request and response bytes at the link bandwidth). Replica ``(n + j) mod R`` of shard j
serves batch n (the front end's rotation), so each copy carries 1/R of its shard's batches.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .errors import PlanDoesNotFitError, PlanError, fmt_bytes
from .io import _jsonify, plan_from_doc, plan_to_doc, read_plan_file, rows_path
from .packing import even_bounds
from .planner import DEFAULT_OUTPUT_BYTES, DEFAULT_REQUEST_BYTES, make_plan
from .types import ELEM_BYTES, Plan, TableSpec, Topology, row_bytes
from .validate import check_tables, table_budget_bytes, validate_plan

HOST_PLAN_FORMAT = "updlrm-host-plan"
HOST_PLAN_FORMAT_VERSION = 1

#: Link bandwidth between the front end and one shard server, bytes/s. Assumed: one 100 Gb/s
#: Ethernet NIC per UPMEM server (the UPMEM server reference design has no fixed NIC).
NETWORK_BYTES_PER_S = 100e9 / 8
#: Round trip of one RPC between the front end and a shard server, microseconds. Assumed: a
#: same-rack TCP round trip (~10-30 us) plus serialization and scheduling of an actor call in
#: Ray; the measured local Ray call on this machine is in benchmarks/results/ray/ray.md.
NETWORK_RTT_US = 50.0
#: Bytes per lookup id and per bag offset in a request to a shard server (int64 in our wire format).
WIRE_ID_BYTES = 8

#: A table is cut into row ranges when one copy would carry more than this share of a host's
#: lookups (at a balanced load) or of a host's table MRAM, so that hosts can be balanced.
SPLIT_SHARE = 0.5


@dataclass(frozen=True)
class NetworkModel:
    """One network hop: ``rtt_us + (request + response bytes) / bytes_per_s`` per host, and the
    front end's own link receiving every host's response. Defaults: :data:`NETWORK_BYTES_PER_S`,
    :data:`NETWORK_RTT_US` (both assumed, see there)."""

    bytes_per_s: float = NETWORK_BYTES_PER_S
    rtt_us: float = NETWORK_RTT_US
    source: str = "assumed: 100 Gb/s link, 50 us RPC round trip"

    def hop_us(self, request_bytes: float, response_bytes: float) -> float:
        return self.rtt_us + (float(request_bytes) + float(response_bytes)) / self.bytes_per_s * 1e6


@dataclass
class HostShard:
    """Rows ``[row_lo, row_hi)`` of table ``table``, plus copies of ``hot_rows`` (sorted int64 row
    ids of the same table, or None), on hosts ``hosts`` (replica r on ``hosts[r]``)."""

    table: int
    row_lo: int
    row_hi: int
    hot_rows: Optional[np.ndarray] = None
    hosts: tuple = ()

    @property
    def nr_hot(self) -> int:
        return 0 if self.hot_rows is None else int(self.hot_rows.size)

    @property
    def nr_local_rows(self) -> int:
        return self.row_hi - self.row_lo + self.nr_hot

    def local_rows(self) -> np.ndarray:
        """Global row id of each local row: int64 [nr_local_rows] (range rows, then hot copies)."""
        r = np.arange(self.row_lo, self.row_hi, dtype=np.int64)
        return r if self.hot_rows is None else np.concatenate([r, self.hot_rows.astype(np.int64)])


def shard_name(spec: TableSpec, s: HostShard) -> str:
    """``C3`` for a whole table, ``C3[0:5065613]+hot1000`` for a range with hot-row copies."""
    if s.row_lo == 0 and s.row_hi == spec.rows and s.nr_hot == 0:
        return spec.name
    return f"{spec.name}[{s.row_lo}:{s.row_hi}]" + (f"+hot{s.nr_hot}" if s.nr_hot else "")


@dataclass
class HostPlan:
    """Placement of a model on ``nr_hosts`` hosts of ``dpus_per_host`` DPUs each.

    ``shards``: host shards in table order (a split table's ranges in row order);
    ``host_plans[h]``: host h's DPU plan over :meth:`host_tables` (h), or None when the plan was
    made without DPU plans (``dpu_strategy=None``: CPU shard servers).
    """

    tables: list
    nr_hosts: int
    dpus_per_host: int
    replicas: int
    shards: list
    host_plans: list
    dpu_strategy: Optional[str] = "row_uniform"
    meta: dict = field(default_factory=dict)

    def shards_on(self, host: int) -> list[int]:
        """Indices (into ``shards``) of the shards with a replica on ``host``, in plan order."""
        return [j for j, s in enumerate(self.shards) if host in s.hosts]

    def shard_table(self, j: int) -> TableSpec:
        """The local table of shard ``j`` (what a shard server's engine holds)."""
        s = self.shards[j]
        spec = self.tables[s.table]
        return TableSpec(shard_name(spec, s), s.nr_local_rows, spec.dim)

    def host_tables(self, host: int) -> list[TableSpec]:
        """The tables of host ``host``'s engine: one per shard on it, in plan order."""
        return [self.shard_table(j) for j in self.shards_on(host)]

    def table_shards(self, t: int) -> list[int]:
        """Indices of table ``t``'s shards, in row order."""
        return [j for j, s in enumerate(self.shards) if s.table == t]

    def host_bytes(self) -> np.ndarray:
        """Table bytes (rows x padded row bytes) on each host: int64 [nr_hosts]."""
        out = np.zeros(self.nr_hosts, dtype=np.int64)
        for j, s in enumerate(self.shards):
            b = s.nr_local_rows * row_bytes(self.tables[s.table].dim)
            for h in s.hosts:
                out[h] += b
        return out

    def validate(self, tables: Optional[Sequence[TableSpec]] = None) -> None:
        validate_host_plan(self, tables)

    def summary(self) -> dict:
        """A short JSON-able description (for /v1/model and reports)."""
        return {
            "nr_hosts": self.nr_hosts, "dpus_per_host": self.dpus_per_host, "replicas": self.replicas,
            "nr_shards": len(self.shards), "split_tables": sorted({s.table for s in self.shards if len(self.table_shards(s.table)) > 1}),
            "dpu_strategy": self.dpu_strategy,
            "shards_per_host": [len(self.shards_on(h)) for h in range(self.nr_hosts)],
            "table_bytes_per_host": self.host_bytes().tolist(),
        }


# -- planning ----------------------------------------------------------------------------------

def _table_loads(tables, profile, pooling: float) -> np.ndarray:
    """Expected lookups per sample of each table: [T] float64."""
    if profile is None:
        return np.full(len(tables), float(pooling))
    return np.array([c.sum() / profile.samples for c in profile.counts], dtype=np.float64)


def make_host_plan(
    tables: Sequence[TableSpec],
    nr_hosts: int,
    dpus_per_host: int,
    replicas: int = 1,
    profile: Any = None,
    dpu_strategy: Optional[str] = "row_uniform",
    hot_rows: int = 0,
    pooling: float = 20.0,
    topology: Optional[Topology] = None,
    split_share: float = SPLIT_SHARE,
    dpu_options: Optional[dict] = None,
) -> HostPlan:
    """Place ``tables`` on ``nr_hosts`` hosts with ``replicas`` copies of every shard, then each
    host's shards on its ``dpus_per_host`` DPUs with ``dpu_strategy`` (None: no DPU plans).

    profile: an :class:`partition.profile.AccessProfile`: table loads, range cuts of equal load,
    and the hot rows; without one every table carries ``pooling`` lookups per sample and ranges
    are equal in rows. hot_rows: copies of the table's ``hot_rows`` most accessed rows on every
    range of a split table (needs a profile). topology: the per-host DPU template (default
    ``Topology(dpus_per_host)``). dpu_options: options for ``make_plan`` (request_bytes, ...).

    Hosts: a table is split into ``k`` row ranges when one copy would carry more than
    ``split_share`` of a balanced host's lookups or of a host's table MRAM (k <= nr_hosts); copies
    are placed largest load first, each on the least-loaded host that has room and no copy of it
    yet (loads: lookups / replicas, ties broken by bytes). Raises PlanDoesNotFitError naming the
    shortfall, PlanError for bad arguments.
    """
    tables = list(tables)
    check_tables(tables)
    H, R, N = int(nr_hosts), int(replicas), int(dpus_per_host)
    if H < 1 or N < 1:
        raise PlanError(f"need >= 1 host and >= 1 DPU per host, got hosts={nr_hosts}, dpus_per_host={dpus_per_host}")
    if not 1 <= R <= H:
        raise PlanError(f"replicas must be in [1, hosts={H}] (copies of a shard sit on distinct hosts), got {replicas}")
    if hot_rows < 0:
        raise PlanError(f"hot_rows must be >= 0, got {hot_rows}")
    if hot_rows and profile is None:
        raise PlanError("hot_rows needs an access profile (which rows are hot)")
    if profile is not None:
        profile.check_tables(tables)
    dpu_options = dict(dpu_options or {})
    topo = topology or Topology(nr_dpus=N)
    if topo.nr_dpus != N:
        raise PlanError(f"topology has {topo.nr_dpus} DPUs but dpus_per_host is {N}")
    req = dpu_options.get("request_bytes", DEFAULT_REQUEST_BYTES)
    out = dpu_options.get("output_bytes", DEFAULT_OUTPUT_BYTES)
    cap = table_budget_bytes(topo, req, out) * N  # table bytes one host holds (before packing losses)
    loads = _table_loads(tables, profile, pooling)
    nbytes = np.array([t.rows * row_bytes(t.dim) for t in tables], dtype=np.int64)
    need = int(nbytes.sum()) * R
    if need > cap * H:
        raise PlanDoesNotFitError(
            f"{R} cop{'y' if R == 1 else 'ies'} of the model's tables need {fmt_bytes(need)} but {H} hosts x {N:,} DPUs "
            f"hold {fmt_bytes(cap * H)} for tables: {fmt_bytes(need - cap * H)} short; add hosts or DPUs per host",
            shortfall_bytes=need - cap * H)
    host_load_target = loads.sum() / H
    shards: list[HostShard] = []
    shard_load: list[float] = []
    for t, spec in enumerate(tables):
        k = max(1, math.ceil(loads[t] / R / max(split_share * host_load_target, 1e-12) - 1e-9),
                math.ceil(nbytes[t] / (split_share * cap) - 1e-9))
        k = int(min(k, H, spec.rows))
        if k == 1:
            shards.append(HostShard(t, 0, spec.rows))
            shard_load.append(float(loads[t]))
            continue
        hot = None
        counts = profile.counts[t].astype(np.float64) if profile is not None else None
        if hot_rows and counts is not None and 2 * int(hot_rows) <= spec.rows:  # else the copies would be the table
            hot = np.sort(np.argsort(-counts, kind="stable")[:int(hot_rows)]).astype(np.int64)
        if counts is not None and counts.sum() > 0:
            cold = counts.copy()
            if hot is not None:
                cold[hot] = 0.0
            cum = np.cumsum(cold if cold.sum() > 0 else counts)
            cuts = np.searchsorted(cum, cum[-1] * np.arange(1, k) / k, side="left") + 1
            bounds = np.unique(np.concatenate(([0], np.clip(cuts, 1, spec.rows - 1), [spec.rows]))).astype(np.int64)
        else:
            bounds = even_bounds(spec.rows, k)
        cold = counts.copy() if counts is not None else None
        if hot is not None:
            cold[hot] = 0.0
        cold_total = float(cold.sum()) if cold is not None else 0.0
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            shards.append(HostShard(t, lo, hi, hot))
            # a range's share of the table's lookups: its cold share (hot lookups follow their
            # bag's cold ones), rows share without a profile
            if cold_total > 0:
                share = float(cold[lo:hi].sum()) / cold_total
            else:
                share = (hi - lo) / spec.rows
            shard_load.append(float(loads[t] * share))
    # place copies: largest load first onto the least-loaded host with room and no copy yet
    sizes = [s.nr_local_rows * row_bytes(tables[s.table].dim) for s in shards]
    h_load = np.zeros(H)
    h_bytes = np.zeros(H, dtype=np.int64)
    placed: list[list[int]] = [[] for _ in shards]
    for j in sorted(range(len(shards)), key=lambda j: (-shard_load[j], -sizes[j], j)):
        for _ in range(R):
            order = sorted(range(H), key=lambda h: (h_load[h], h_bytes[h], h))
            host = next((h for h in order if h not in placed[j] and h_bytes[h] + sizes[j] <= cap), None)
            if host is None:
                free = int(cap - h_bytes.min())
                raise PlanDoesNotFitError(
                    f"shard {shard_name(tables[shards[j].table], shards[j])} needs {fmt_bytes(sizes[j])} "
                    f"on a host without a copy of it, but the emptiest host has {fmt_bytes(free)} free for tables",
                    shortfall_bytes=sizes[j] - free, table=shards[j].table)
            placed[j].append(host)
            h_load[host] += shard_load[j] / R
            h_bytes[host] += sizes[j]
    for s, hs in zip(shards, placed):
        s.hosts = tuple(hs)
    plan = HostPlan(tables, H, N, R, shards, [None] * H, dpu_strategy,
                    meta={"pooling": pooling, "hot_rows": int(hot_rows), "split_share": split_share,
                          "profile_source": getattr(profile, "source", None),
                          "expected_lookups_per_sample_per_host": h_load.tolist()})
    if dpu_strategy is not None:
        for h in range(H):
            ht = plan.host_tables(h)
            if not ht:
                continue
            try:
                plan.host_plans[h] = make_plan(ht, topo, dpu_strategy, profile=host_profile(plan, h, profile),
                                               **dpu_options)
            except PlanDoesNotFitError as exc:
                raise PlanDoesNotFitError(f"host {h}'s {len(ht)} shard(s) on its {N:,} DPUs with {dpu_strategy}: {exc}",
                                          exc.shortfall_bytes, exc.dpu, exc.table) from None
            except PlanError as exc:
                raise PlanError(f"host {h}'s DPU plan ({dpu_strategy}): {exc}") from None
    validate_host_plan(plan, tables)
    return plan


def host_profile(plan: HostPlan, host: int, profile: Any):
    """The access profile of host ``host``'s local tables (counts of its range rows and hot copies,
    a hot row counted on its copies only), or None without a profile."""
    if profile is None:
        return None
    from .profile import AccessProfile

    counts = []
    for j in plan.shards_on(host):
        s = plan.shards[j]
        c = profile.counts[s.table]
        rng = c[s.row_lo:s.row_hi].astype(np.int64).copy()
        if s.hot_rows is not None:
            inside = s.hot_rows[(s.hot_rows >= s.row_lo) & (s.hot_rows < s.row_hi)]
            rng[inside - s.row_lo] = 0
            k = len(plan.table_shards(s.table))
            rng = np.concatenate([rng, c[s.hot_rows] // max(k, 1)])
        counts.append(rng)
    return AccessProfile(counts, profile.samples, f"{profile.source} (host {host})", profile.fingerprint)


# -- validation --------------------------------------------------------------------------------

def validate_host_plan(plan: HostPlan, tables: Optional[Sequence[TableSpec]] = None) -> None:
    """Raise PlanError / PlanDoesNotFitError naming the first broken rule.

    Rules: tables equal ``tables`` (when given); each table's shards are row ranges that cover
    ``[0, rows)`` exactly once, in row order; hot rows sorted, unique, inside the table, only on a
    split table; each shard has exactly ``replicas`` copies on distinct hosts in ``[0, nr_hosts)``;
    every host with shards has a valid DPU plan over :meth:`HostPlan.host_tables` on
    ``dpus_per_host`` DPUs (when ``dpu_strategy`` is set), which checks its MRAM capacity.
    """
    check_tables(plan.tables)
    if tables is not None:
        tables = list(tables)
        if len(tables) != len(plan.tables):
            raise PlanError(f"host plan was made for {len(plan.tables)} tables but the model has {len(tables)}")
        for t, (a, b) in enumerate(zip(plan.tables, tables)):
            if (a.rows, a.dim) != (b.rows, b.dim):
                raise PlanError(f"host plan table {t} {a.name!r} is {a.rows:,} x {a.dim}, the model's is {b.rows:,} x {b.dim}")
    H, R = plan.nr_hosts, plan.replicas
    if H < 1 or plan.dpus_per_host < 1 or not 1 <= R <= H:
        raise PlanError(f"host plan has hosts={H}, dpus_per_host={plan.dpus_per_host}, replicas={R}: "
                        f"need hosts >= 1, dpus >= 1, 1 <= replicas <= hosts")
    prev_end = {}
    for j, s in enumerate(plan.shards):
        if not 0 <= s.table < len(plan.tables):
            raise PlanError(f"host shard {j} names table {s.table}; the plan has {len(plan.tables)} tables")
        spec = plan.tables[s.table]
        expect = prev_end.get(s.table, 0)
        if s.row_lo != expect or not s.row_lo < s.row_hi <= spec.rows:
            raise PlanError(f"host shard {j} of table {s.table} {spec.name!r} covers rows [{s.row_lo:,}, {s.row_hi:,}); "
                            f"expected a range starting at {expect:,} inside [0, {spec.rows:,})")
        prev_end[s.table] = s.row_hi
        if s.hot_rows is not None:
            h = np.asarray(s.hot_rows)
            if h.size and (h[0] < 0 or h[-1] >= spec.rows or np.any(np.diff(h) <= 0)):
                raise PlanError(f"host shard {j} of table {spec.name!r}: hot rows must be sorted, unique and inside [0, {spec.rows:,})")
        hosts = tuple(int(h) for h in s.hosts)
        if len(hosts) != R or len(set(hosts)) != R or any(not 0 <= h < H for h in hosts):
            raise PlanError(f"host shard {j} ({plan.shard_table(j).name}) is on hosts {list(hosts)}; need {R} distinct "
                            f"host(s) in [0, {H})")
    for t, spec in enumerate(plan.tables):
        if prev_end.get(t) != spec.rows:
            raise PlanError(f"table {t} {spec.name!r}: host shards cover rows [0, {prev_end.get(t, 0):,}) of {spec.rows:,}")
        js = plan.table_shards(t)
        if len(js) == 1 and plan.shards[js[0]].hot_rows is not None:
            raise PlanError(f"table {t} {spec.name!r} is not split, so it has no use for hot-row copies")
        hots = [plan.shards[j].hot_rows for j in js]
        if any((a is None) != (hots[0] is None) or (a is not None and not np.array_equal(a, hots[0])) for a in hots):
            raise PlanError(f"table {t} {spec.name!r}: every range of a split table must carry the same hot rows")
    if len(plan.host_plans) != H:
        raise PlanError(f"host plan has {len(plan.host_plans)} DPU plans for {H} hosts")
    if plan.dpu_strategy is None:
        return
    for h in range(H):
        ht = plan.host_tables(h)
        hp = plan.host_plans[h]
        if not ht:
            continue
        if hp is None:
            raise PlanError(f"host {h} holds {len(ht)} shard(s) but has no DPU plan")
        if hp.topology.nr_dpus != plan.dpus_per_host:
            raise PlanError(f"host {h}'s DPU plan uses {hp.topology.nr_dpus} DPUs; dpus_per_host is {plan.dpus_per_host}")
        try:
            validate_plan(hp, ht)
        except PlanError as exc:
            raise type(exc)(f"host {h}: {exc}") from None


# -- file --------------------------------------------------------------------------------------

def save_host_plan(plan: HostPlan, path: Union[str, os.PathLike]) -> None:
    """Write ``plan`` (both levels) to ``path`` (JSON) plus ``rows_path(path)`` (.npz) for hot rows
    and the DPU plans' row sets, when there are any."""
    path = Path(path)
    arrays: dict = {}
    shards = []
    for j, s in enumerate(plan.shards):
        d = {"table": s.table, "row_lo": int(s.row_lo), "row_hi": int(s.row_hi), "hosts": [int(h) for h in s.hosts]}
        if s.hot_rows is not None:
            d["hot_rows"] = f"hot{j}"
            arrays[f"hot{j}"] = np.asarray(s.hot_rows, dtype=np.int64)
        shards.append(d)
    host_docs = []
    for h, hp in enumerate(plan.host_plans):
        if hp is None:
            host_docs.append(None)
            continue
        doc, arr = plan_to_doc(hp, array_prefix=f"h{h}_g")
        host_docs.append(doc)
        arrays.update(arr)
    doc = {
        "format": HOST_PLAN_FORMAT, "version": HOST_PLAN_FORMAT_VERSION,
        "tables": [dataclasses.asdict(t) for t in plan.tables],
        "nr_hosts": plan.nr_hosts, "dpus_per_host": plan.dpus_per_host, "replicas": plan.replicas,
        "dpu_strategy": plan.dpu_strategy, "shards": shards, "host_plans": host_docs,
        "rows_file": rows_path(path).name if arrays else None, "meta": _jsonify(plan.meta),
    }
    if arrays:
        with open(rows_path(path), "wb") as f:
            np.savez(f, **arrays)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)


def is_host_plan_file(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` holds a host plan (rather than a single-host DPU plan)."""
    try:
        with open(path) as f:
            head = f.read(64)
    except OSError:
        return False
    return f'"format":"{HOST_PLAN_FORMAT}"' in head.replace(" ", "")


def load_host_plan(path: Union[str, os.PathLike], validate: bool = True) -> HostPlan:
    """Read a file written by :func:`save_host_plan`; validates both levels unless told not to."""
    path = Path(path)
    doc, arrays = read_plan_file(path, "host plan file", HOST_PLAN_FORMAT, HOST_PLAN_FORMAT_VERSION)
    where = f"host plan file {str(path)!r}"
    try:
        shards = []
        for j, d in enumerate(doc["shards"]):
            hot = None
            if d.get("hot_rows") is not None:
                if d["hot_rows"] not in arrays:
                    raise PlanError(f"{where}: shard {j}'s hot rows {d['hot_rows']!r} are missing from {doc['rows_file']!r}")
                hot = arrays[d["hot_rows"]].astype(np.int64)
            shards.append(HostShard(int(d["table"]), int(d["row_lo"]), int(d["row_hi"]), hot, tuple(d["hosts"])))
        host_plans = [None if hd is None else plan_from_doc(hd, arrays, f"{where}, host {h}")
                      for h, hd in enumerate(doc["host_plans"])]
        plan = HostPlan([TableSpec(**t) for t in doc["tables"]], int(doc["nr_hosts"]), int(doc["dpus_per_host"]),
                        int(doc["replicas"]), shards, host_plans, doc.get("dpu_strategy"), doc.get("meta", {}))
    except (KeyError, TypeError) as exc:
        raise PlanError(f"{where} is malformed: {type(exc).__name__}: {exc}") from None
    if validate:
        validate_host_plan(plan)
    return plan


# -- routing -----------------------------------------------------------------------------------

@dataclass
class ShardBatch:
    """The lookups of one batch for one host shard: local ids int64 [n], offsets int64 [B+1]."""

    indices: np.ndarray
    offsets: np.ndarray


class HostRouter:
    """Split a batch's lookups over the host shards of ``plan`` (see the module docstring).

    ``route(indices, offsets, B)`` takes the engine layout (table-major ids, offsets [T*B+1]) and
    returns one :class:`ShardBatch` per host shard. Vectorized per table (a loop over tables and
    their few ranges, never over lookups).
    """

    def __init__(self, plan: HostPlan):
        self.plan = plan
        self._tables = []
        for t in range(len(plan.tables)):
            js = plan.table_shards(t)
            lo = np.array([plan.shards[j].row_lo for j in js] + [plan.tables[t].rows], dtype=np.int64)
            hot = plan.shards[js[0]].hot_rows if len(js) > 1 else None
            self._tables.append((js, lo, hot))

    def route(self, indices: np.ndarray, offsets: np.ndarray, batch_size: int) -> list[ShardBatch]:
        B = int(batch_size)
        indices = np.asarray(indices, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        out: list[Optional[ShardBatch]] = [None] * len(self.plan.shards)
        for t, (js, bounds, hot) in enumerate(self._tables):
            off = offsets[t * B:(t + 1) * B + 1]
            ids = indices[off[0]:off[-1]]
            if len(js) == 1:
                out[js[0]] = ShardBatch(ids, off - off[0])
                continue
            lengths = np.diff(off)
            bag = np.repeat(np.arange(B, dtype=np.int64), lengths)
            k = len(js)
            part = np.searchsorted(bounds, ids, side="right") - 1
            local = ids - bounds[part]
            if hot is not None and hot.size:
                pos = np.minimum(np.searchsorted(hot, ids), hot.size - 1)
                is_hot = hot[pos] == ids
                cold_bag = bag[~is_hot]
                anchor = np.arange(B, dtype=np.int64) % k
                if cold_bag.size:
                    first = np.concatenate(([True], cold_bag[1:] != cold_bag[:-1]))
                    anchor[cold_bag[first]] = part[~is_hot][first]
                part = np.where(is_hot, anchor[bag], part)
                local = np.where(is_hot, (bounds[part + 1] - bounds[part]) + pos, local)
            for i, j in enumerate(js):
                m = part == i
                lens = np.bincount(bag[m], minlength=B)
                o = np.zeros(B + 1, dtype=np.int64)
                np.cumsum(lens, out=o[1:])
                out[j] = ShardBatch(local[m], o)
        return out  # type: ignore[return-value]


def rotation_hosts(plan: HostPlan, batch_no: int, alive: Optional[Sequence[bool]] = None) -> list[int]:
    """Host serving each shard for batch ``batch_no``: replica ``(batch_no + j) mod R`` of shard j,
    or the next live replica after it when ``alive[host]`` is False; -1 when none is alive."""
    out = []
    R = plan.replicas
    for j, s in enumerate(plan.shards):
        host = -1
        for step in range(R):
            h = s.hosts[(batch_no + j + step) % R]
            if alive is None or alive[h]:
                host = h
                break
        out.append(host)
    return out


def host_request(plan: HostPlan, host: int, routed: Sequence[ShardBatch], chosen: Sequence[int],
                 batch_size: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The batch host ``host``'s engine runs: its shards in plan order, the bags of shards it does
    not serve this batch left empty. Returns (indices, offsets [n_local * B + 1], positions of
    the served shards among its local tables)."""
    B = int(batch_size)
    local = plan.shards_on(host)
    parts, lens, served = [], [], []
    for i, j in enumerate(local):
        if chosen[j] == host:
            parts.append(routed[j].indices)
            lens.append(np.diff(routed[j].offsets))
            served.append(i)
        else:
            lens.append(np.zeros(B, dtype=np.int64))
    o = np.zeros(len(local) * B + 1, dtype=np.int64)
    if lens:
        np.cumsum(np.concatenate(lens), out=o[1:])
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return ids, o, served


# -- costs -------------------------------------------------------------------------------------

def _response_bytes(nr_served: int, batch_size: int, dim: int) -> int:
    return int(nr_served) * int(batch_size) * int(dim) * ELEM_BYTES


def _request_bytes(nr_lookups: int, nr_local: int, batch_size: int) -> int:
    return (int(nr_lookups) + int(nr_local) * int(batch_size) + 1) * WIRE_ID_BYTES


def _combine(per_host: list[dict], network: NetworkModel) -> float:
    """Batch latency: the slowest host's (hop + DPUs), or the front end's link taking every response."""
    slowest = max((h["total_us"] for h in per_host if h["served"]), default=0.0)
    inbound = network.rtt_us + sum(h["response_bytes"] for h in per_host) / network.bytes_per_s * 1e6
    return max(slowest, inbound)


def evaluate_host_plan(plan: HostPlan, trace: Any, batch_size: int, estimator: Any = None,
                       network: Optional[NetworkModel] = None, max_batches: Optional[int] = None) -> dict:
    """Per-host load, bytes returned and modeled latency of ``plan`` on ``trace`` (batches of
    ``batch_size``), averaged over the batches. Needs DPU plans (``plan.dpu_strategy`` set).

    Returns ``{"hosts": [per-host dict], "latency_us": ..., "network": ..., "batches": n}``; a
    per-host dict has shards, served (mean shards served per batch), lookups, request_bytes,
    response_bytes, dpu_us (the host's modeled DPU latency), network_us, total_us (means), and
    mram_bytes_max (largest DPU incl. buffers).
    """
    from .cost import CostEstimator
    from .profile import as_trace
    from .validate import per_dpu_table_bytes

    if plan.dpu_strategy is None:
        raise PlanError("evaluate_host_plan needs a plan with DPU plans (dpu_strategy set)")
    est = estimator or CostEstimator()
    net = network or NetworkModel()
    router = HostRouter(plan)
    tr = as_trace(trace)
    d = plan.tables[0].dim
    acc = [dict(shards=len(plan.shards_on(h)), served=0.0, lookups=0.0, request_bytes=0.0, response_bytes=0.0,
                dpu_us=0.0, network_us=0.0, total_us=0.0) for h in range(plan.nr_hosts)]
    lat, n = 0.0, 0
    for i, (idx, off, b) in enumerate(tr.batches(batch_size)):
        if (b < batch_size and n) or (max_batches is not None and i >= max_batches):
            break
        routed = router.route(idx, off, b)
        chosen = rotation_hosts(plan, i)
        per = []
        for h in range(plan.nr_hosts):
            ids, o, served = host_request(plan, h, routed, chosen, b)
            row = dict(served=len(served), lookups=int(ids.size), request_bytes=_request_bytes(ids.size, len(plan.shards_on(h)), b),
                       response_bytes=_response_bytes(len(served), b, d), dpu_us=0.0)
            if served:
                row["dpu_us"] = est.batch_cost(plan.host_plans[h], ids, o, b).latency_us
            row["network_us"] = net.hop_us(row["request_bytes"], row["response_bytes"]) if served else 0.0
            row["total_us"] = row["dpu_us"] + row["network_us"]
            per.append(row)
        lat += _combine(per, net)
        for a, row in zip(acc, per):
            for k in ("served", "lookups", "request_bytes", "response_bytes", "dpu_us", "network_us", "total_us"):
                a[k] += row[k]
        n += 1
    for h, a in enumerate(acc):
        for k in ("served", "lookups", "request_bytes", "response_bytes", "dpu_us", "network_us", "total_us"):
            a[k] /= max(n, 1)
        hp = plan.host_plans[h]
        a["mram_bytes_max"] = int(per_dpu_table_bytes(hp).max() + hp.request_bytes + hp.output_bytes) if hp else 0
        a["table_bytes"] = int(plan.host_bytes()[h])
    return {"hosts": acc, "latency_us": lat / max(n, 1), "batches": n, "batch_size": batch_size,
            "network": dataclasses.asdict(net), "latency_model": est.latency.name}


def uniform_host_cost(plan: HostPlan, batch_size: int, pooling: float = 20.0, latency: Any = None,
                      network: Optional[NetworkModel] = None) -> dict:
    """Analytic per-host cost of one batch under uniform access (``pooling`` lookups per bag per
    table, every row equally likely), without a trace or per-row arrays: for models too big to
    profile here (Terabyte). Replicas follow the rotation (:func:`rotation_hosts`) as at run time:
    a batch's shard is served whole by one copy; figures are means over the R rotation states.
    The DPU term is the latency model on each host's DPU plan with the expected per-DPU load."""
    from .cost import BAG_DESC_BYTES, LOOKUP_ID_BYTES, MAX_DMA_BYTES, DpuLoad, _pad8, default_latency_model
    from .validate import per_dpu_table_bytes, shard_arrays

    if plan.dpu_strategy is None:
        raise PlanError("uniform_host_cost needs a plan with DPU plans (dpu_strategy set)")
    lat_model = latency or default_latency_model()
    net = network or NetworkModel()
    B, R = float(batch_size), plan.replicas
    d = plan.tables[0].dim
    keys = ("served", "lookups", "request_bytes", "response_bytes", "dpu_us", "network_us", "total_us")
    acc = []
    for h in range(plan.nr_hosts):
        hp = plan.host_plans[h]
        acc.append(dict({k: 0.0 for k in keys}, shards=len(plan.shards_on(h)), table_bytes=int(plan.host_bytes()[h]),
                        mram_bytes_max=int(per_dpu_table_bytes(hp).max() + hp.request_bytes + hp.output_bytes) if hp else 0))
    arrays = {h: shard_arrays(plan.host_plans[h]) for h in range(plan.nr_hosts) if plan.host_plans[h] is not None}
    latency_us = 0.0
    for state in range(R):
        chosen = rotation_hosts(plan, state)
        per = []
        for h in range(plan.nr_hosts):
            js = plan.shards_on(h)
            served = [chosen[j] == h for j in js]
            row = {k: 0.0 for k in keys}
            if any(served):
                hp, a = plan.host_plans[h], arrays[h]
                # expected lookups of each local table this batch: its share of the table, if served
                per_local = np.array([B * pooling * plan.shards[j].nr_local_rows / plan.tables[plan.shards[j].table].rows
                                      if sv else 0.0 for j, sv in zip(js, served)])
                g_rows = np.array([g.nr_rows for g in hp.groups], dtype=np.float64)
                reps = np.zeros(len(hp.groups), dtype=np.int64)
                np.maximum.at(reps, a["group"], a["replica"] + 1)
                local_rows = np.array([t.rows for t in hp.tables], dtype=np.float64)
                entries = per_local[a["table"]] * g_rows[a["group"]] / local_rows[a["table"]] / reps[a["group"]]
                bags = B * (1.0 - np.exp(-entries / B))
                n = hp.topology.nr_dpus
                bc = lambda x: np.rint(np.bincount(a["dpu"], weights=x, minlength=n)).astype(np.int64)  # noqa: E731
                lookups, bag_n = bc(entries), bc(bags)
                load = DpuLoad(lookups=lookups, mram_read_bytes=bc(entries * a["row_bytes"]),
                               elements=bc(entries * (a["col_hi"] - a["col_lo"])), bags=bag_n,
                               request_bytes=_pad8(bag_n * BAG_DESC_BYTES) + _pad8(lookups * LOOKUP_ID_BYTES),
                               output_bytes=bc(bags * a["row_bytes"]),
                               dma_reads=bc(entries * -(-a["row_bytes"] // MAX_DMA_BYTES)))
                ph = lat_model(load, hp.topology)
                nsv = int(sum(served))
                row.update(served=nsv, lookups=float(per_local.sum()), dpu_us=float(sum(v for k, v in ph.items() if k != "kernel_per_dpu")),
                           request_bytes=_request_bytes(per_local.sum(), len(js), batch_size),
                           response_bytes=_response_bytes(nsv, batch_size, d))
                row["network_us"] = net.hop_us(row["request_bytes"], row["response_bytes"])
                row["total_us"] = row["dpu_us"] + row["network_us"]
            per.append(row)
        latency_us += _combine(per, net) / R
        for x, row in zip(acc, per):
            for k in keys:
                x[k] += row[k] / R
    return {"hosts": acc, "latency_us": latency_us, "batch_size": batch_size, "pooling": pooling,
            "network": dataclasses.asdict(net), "latency_model": getattr(lat_model, "name", "latency model")}


def format_host_report(plan: HostPlan, report: dict) -> str:
    """A fixed-width per-host table of :func:`evaluate_host_plan` / :func:`uniform_host_cost`."""
    head = ["host", "shards", "served/batch", "table MB", "MRAM max/DPU MB", "lookups/batch", "req KB", "returned KB",
            "DPU us", "network us", "total us"]
    rows = []
    for h, a in enumerate(report["hosts"]):
        rows.append([str(h), str(a["shards"]), f"{a['served']:.1f}", f"{a['table_bytes'] / 1e6:,.1f}",
                     f"{a['mram_bytes_max'] / 1e6:,.1f}", f"{a['lookups']:,.0f}", f"{a['request_bytes'] / 1e3:,.1f}",
                     f"{a['response_bytes'] / 1e3:,.1f}", f"{a['dpu_us']:,.0f}", f"{a['network_us']:,.0f}",
                     f"{a['total_us']:,.0f}"])
    w = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    line = lambda cells: "  ".join(c.rjust(w[i]) for i, c in enumerate(cells))
    lookups = [a["lookups"] for a in report["hosts"]]
    mean = float(np.mean(lookups)) if lookups else 0.0
    imb = max(lookups) / mean if mean > 0 else 1.0
    net = report["network"]
    out = [line(head)] + [line(r) for r in rows]
    out.append(f"batch latency (modeled): {report['latency_us']:,.0f} us = max over hosts of (DPU + network hop), "
               f"or the front end's link receiving every response; host lookup imbalance {imb:.2f} (max/mean)")
    out.append(f"network: {net['bytes_per_s'] * 8 / 1e9:g} Gb/s per link, {net['rtt_us']:g} us RPC round trip "
               f"({net['source']}); DPU latency model: {report['latency_model']}")
    split = plan.summary()["split_tables"]
    out.append(f"{plan.nr_hosts} hosts x {plan.dpus_per_host:,} DPUs, {plan.replicas} replica(s) per shard, "
               f"{len(plan.shards)} shards ({len(split)} table(s) split in row ranges"
               + (f", {plan.meta.get('hot_rows')} hot rows copied per range" if plan.meta.get("hot_rows") and split else "") + ")")
    return "\n".join(out)


def host_lab(tables: Sequence[TableSpec], nr_hosts: int, dpus_per_host: int, replicas: int = 1, workload: Any = None,
             batch_size: int = 2048, dpu_strategy: str = "row_uniform", hot_rows: int = 0, pooling: float = 20.0,
             network: Optional[NetworkModel] = None, estimator: Any = None, dpu_options: Optional[dict] = None,
             split_share: float = SPLIT_SHARE):
    """The plan lab at host level: a host plan from ``workload``'s profile (trace A), evaluated on
    its held-out trace B (:func:`evaluate_host_plan`); without a workload, uniform access and
    :func:`uniform_host_cost`. Returns ``(plan, report)``."""
    profile = None if workload is None else workload.profile
    plan = make_host_plan(tables, nr_hosts, dpus_per_host, replicas, profile=profile, dpu_strategy=dpu_strategy,
                          hot_rows=hot_rows, pooling=pooling, dpu_options=dpu_options, split_share=split_share)
    if workload is None:
        latency = None if estimator is None else estimator.latency
        return plan, uniform_host_cost(plan, batch_size, pooling, latency=latency, network=network)
    return plan, evaluate_host_plan(plan, workload.eval_trace, batch_size, estimator=estimator, network=network)
