"""Cost estimator: per-DPU work and traffic of a plan on a batch or a trace, and plan metrics.

Per DPU per batch (:class:`DpuLoad`): lookups (row-slice reads, one per entry), MRAM bytes read
for rows, bags (partial sums = distinct (bag, shard) pairs), request bytes (16 B per bag
descriptor + 4 B per lookup id, each region padded to 8 B) and result bytes (one padded row
slice per partial sum). One ``dpu_push_xfer`` moves the SAME length to every DPU, so the
transfers move ``max over DPUs x nr_dpus`` bytes: padding is counted as real traffic.

Latency: a :data:`LatencyModel` maps a :class:`DpuLoad` (+ topology) to the batch's modeled
phases in microseconds. Defaults: :class:`TimingModelLatency` (``updlrm.timing_model``, the
project's sourced UPMEM model) when it imports, else :class:`SimpleLatency` (lookups x row bytes
at the DPU's MRAM bandwidth plus per-transfer bytes at system bandwidth). Reports name which.

Metrics of a plan on a trace (:class:`PlanReport`, averaged over the trace's batches):
imbalance = max / mean lookups per DPU, MRAM use per DPU, transfer bytes incl. padding,
estimated batch latency, replica hit rate (share of lookups served by cache groups).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Protocol

import numpy as np

from .errors import PlanError
from .profile import as_trace
from .routing import Routed, Router
from .types import Plan, Topology
from .validate import per_dpu_table_bytes

BAG_DESC_BYTES = 16  # sizeof(struct updlrm_bag), dpu_kernels/include/updlrm_abi.h
LOOKUP_ID_BYTES = 4  # uint32_t local row per lookup
MAX_DMA_BYTES = 2048


def _pad8(x: np.ndarray) -> np.ndarray:
    return (x + 7) // 8 * 8


@dataclass
class DpuLoad:
    """Work and traffic of one batch on every DPU; every array is [nr_dpus] int64.

    lookups: row-slice reads; mram_read_bytes: row bytes read (padded rows); elements: elements
    accumulated; bags: partial sums written; request_bytes: bag descriptors + lookup ids pushed;
    output_bytes: partial-sum bytes read back. dtype: the plan's stored element type (row bytes
    above are already in it; latency models may price its adds).
    """

    lookups: np.ndarray
    mram_read_bytes: np.ndarray
    elements: np.ndarray
    bags: np.ndarray
    request_bytes: np.ndarray
    output_bytes: np.ndarray
    dma_reads: np.ndarray  # row reads in DMAs of <= 2,048 B
    dtype: str = "fp32"

    @property
    def nr_dpus(self) -> int:
        return int(self.lookups.size)


class LatencyModel(Protocol):
    """Modeled phases of one batch in microseconds: keys ``cpu_to_dpu``, ``kernel``, ``dpu_to_cpu``
    (and optionally ``launch``); ``kernel_per_dpu`` [nr_dpus] is returned too. ``name`` labels reports."""

    name: str

    def __call__(self, load: DpuLoad, topology: Topology) -> dict[str, Any]: ...


@dataclass
class SimpleLatency:
    """Stand-in model: kernel = lookups x row bytes at ``mram_bytes_per_s`` per DPU (the issue's
    "lookups x row bytes" rule), transfers = padded bytes x nr_dpus at a system bandwidth plus a
    fixed cost. Constants: PrIM (sustained MRAM read ~628 MB/s at 2 KB DMAs; 2,048-DPU push_xfer
    ~14.2 GiB/s send, ~8.2 GiB/s receive at 64 KB, ~0.5 / 1 ms fixed): see shared UPMEM.md."""

    mram_bytes_per_s: float = 628e6
    to_dpu_bytes_per_s: float = 14.2 * 2**30
    from_dpu_bytes_per_s: float = 8.2 * 2**30
    to_dpu_fixed_s: float = 0.5e-3
    from_dpu_fixed_s: float = 1.0e-3
    name: str = "simple (lookups x row bytes)"

    def __call__(self, load: DpuLoad, topology: Topology) -> dict[str, Any]:
        n = topology.nr_dpus
        kernel = load.mram_read_bytes / self.mram_bytes_per_s * 1e6
        up = float(load.request_bytes.max()) * n
        down = float(load.output_bytes.max()) * n
        return {
            "cpu_to_dpu": (self.to_dpu_fixed_s + up / self.to_dpu_bytes_per_s) * 1e6 if up else 0.0,
            "kernel": float(kernel.max()),
            "dpu_to_cpu": (self.from_dpu_fixed_s + down / self.from_dpu_bytes_per_s) * 1e6 if down else 0.0,
            "kernel_per_dpu": kernel,
        }


class TimingModelLatency:
    """Adapter to ``updlrm.timing_model.TimingModel``: models a per-DPU load through
    :func:`timing_counters` (request and result transfers only)."""

    def __init__(self, model: Any = None, nr_tasklets: Optional[int] = None, dtype: str = "int32"):
        from updlrm import timing_model as tm

        self.model = model if model is not None else tm.TimingModel.default()
        self.nr_tasklets = nr_tasklets
        self.dtype = dtype
        self.name = f"updlrm.timing_model ({dtype} adds for 4-byte rows, int16/int8 rows at their own cost)"

    def __call__(self, load: DpuLoad, topology: Topology) -> dict[str, Any]:
        # 4-byte plans (fp32 / int32) are priced with self.dtype (int32 by default, as placements
        # always were compared); int16 / int8 plans with their own element cost.
        dtype = load.dtype if getattr(load, "dtype", "fp32") in ("int16", "int8") else self.dtype
        kc, tc = timing_counters(load, int(self.nr_tasklets or topology.nr_tasklets), dtype)
        mb = self.model.model_batch(topology, kc, tc)
        phases = {p.name: p.seconds * 1e6 for p in mb.phases}
        cycles = self.model.kernel_cycles(kc)["cycles"]
        return {
            "cpu_to_dpu": phases.get("cpu_to_dpu", 0.0),
            "launch": phases.get("launch", 0.0),
            "kernel": phases.get("kernel", 0.0),
            "dpu_to_cpu": phases.get("dpu_to_cpu", 0.0),
            "kernel_per_dpu": cycles / topology.clock_hz * 1e6,
        }


def timing_counters(load: DpuLoad, nr_tasklets: int, dtype: str, control_transfers: bool = False):
    """``(KernelCounters, TransferCounters)`` of one launch from a per-DPU ``load``.

    Tasklets share each DPU's work evenly (as the kernel's lookup-balanced split aims to); DMAs:
    one per <= 2 KB row piece, the request staged in 2 KB reads, one write per partial sum;
    transfers: one push of the request and one pull of the results, each padded to the largest
    DPU. ``control_transfers`` adds the launch-arguments push and the status pull the driver also
    makes (what a full batch costs; the strategy comparison leaves them out, as they are the same
    for every plan).
    """
    from updlrm import timing_model as tm

    nt = int(nr_tasklets)

    def share(x):
        return np.repeat((np.asarray(x, dtype=np.float64) / nt)[:, None], nt, axis=1)

    req_reads = -(-load.request_bytes // MAX_DMA_BYTES)
    kc = tm.KernelCounters(
        nr_tasklets=nt,
        dtype=dtype,
        lookups=load.lookups.astype(np.float64),
        bags=load.bags.astype(np.float64),
        elements=load.elements.astype(np.float64),
        dma_read_ops=share(load.dma_reads + req_reads),
        dma_read_bytes=share(load.mram_read_bytes + load.request_bytes),
        dma_write_ops=share(load.bags),
        dma_write_bytes=share(load.output_bytes),
    )
    up, down = float(load.request_bytes.max()), float(load.output_bytes.max())
    to_bytes = load.request_bytes.astype(np.float64)
    from_bytes = load.output_bytes.astype(np.float64)
    if control_transfers:
        tc = tm.TransferCounters(
            to_dpu_lengths=np.array([tm.LAUNCH_ARGS_BYTES, up]),
            from_dpu_lengths=np.array([tm.STATUS_BYTES, down]),
            to_dpu_bytes=to_bytes + tm.LAUNCH_ARGS_BYTES,
            from_dpu_bytes=from_bytes + tm.STATUS_BYTES,
        )
    else:
        tc = tm.TransferCounters(
            to_dpu_lengths=np.array([up]), from_dpu_lengths=np.array([down]),
            to_dpu_bytes=to_bytes, from_dpu_bytes=from_bytes,
        )
    return kc, tc


def default_latency_model() -> LatencyModel:
    """TimingModelLatency when updlrm.timing_model imports, else SimpleLatency."""
    try:
        return TimingModelLatency()
    except Exception:  # pragma: no cover - timing model missing or broken
        return SimpleLatency()


@dataclass
class BatchCost:
    """Cost of one batch: the per-DPU load, the modeled phases (us) and the replica hit rate."""

    load: DpuLoad
    phases_us: dict
    latency_us: float
    imbalance: float
    cached_share: float
    nr_lookups: int


@dataclass
class PlanReport:
    """Metrics of a plan on a trace (means over its batches; ``*_max`` = worst batch).

    ``profile_source`` / ``eval_source`` name the traces used to build and to evaluate the plan;
    ``profile_fingerprint`` / ``eval_fingerprint`` are their content hashes.
    """

    strategy: str
    nr_dpus: int
    batch_size: int
    batches: int
    imbalance: float
    imbalance_max: float
    latency_us: float
    kernel_us: float
    cpu_to_dpu_us: float
    dpu_to_cpu_us: float
    lookups_per_dpu_mean: float
    lookups_per_dpu_max: float
    request_bytes_padded: float
    request_bytes_useful: float
    output_bytes_padded: float
    output_bytes_useful: float
    replica_hit_rate: float
    mram_bytes_max: int
    mram_bytes_mean: float
    nr_shards: int
    latency_model: str
    eval_source: str
    eval_fingerprint: str
    profile_source: Optional[str] = None
    profile_fingerprint: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


class CostEstimator:
    """Estimate a plan's per-DPU cost on batches and traces.

    latency: a :class:`LatencyModel` (default :func:`default_latency_model`), or a plain function
    ``f(lookups [D], mram_read_bytes [D], topology) -> kernel us [D]`` (e.g. lookups x row bytes),
    wrapped with SimpleLatency's transfer terms. order: replica-choice order of the router
    (:class:`partition.routing.Router`): "bag_fill" (the PIM packer's rule, default), "base_first" (one
    replica per lookup, the packer before one partial sum per bag) or "table"
    (the packer before commit d5d8e66, for ablations).
    """

    def __init__(self, latency: Any = None, order: str = "bag_fill"):
        self.order = order
        if latency is None:
            latency = default_latency_model()
        elif not hasattr(latency, "name"):
            latency = _KernelFnLatency(latency)
        self.latency = latency
        self._routers: dict[int, Router] = {}

    def router(self, plan: Plan) -> Router:
        r = self._routers.get(id(plan))
        if r is None or r.plan is not plan:
            r = Router(plan, self.order)
            self._routers = {id(plan): r}
        return r

    def dpu_load(self, plan: Plan, routed: Routed, batch_size: int) -> DpuLoad:
        """Per-DPU counters of a routed batch (vectorized: bincounts and one unique)."""
        n = plan.topology.nr_dpus
        sh = self.router(plan).shards
        rb = sh["row_bytes"][routed.shard]
        lookups = np.bincount(routed.dpu, minlength=n).astype(np.int64)
        read = np.bincount(routed.dpu, weights=rb, minlength=n).astype(np.int64)
        cols = (sh["col_hi"] - sh["col_lo"])[routed.shard]
        elements = np.bincount(routed.dpu, weights=cols, minlength=n).astype(np.int64)
        # the kernel reads a row in column blocks of 512 sums (2 KB of int32): one DMA per block
        dmas = np.bincount(routed.dpu, weights=-(-sh["sum_bytes"][routed.shard] // MAX_DMA_BYTES),
                           minlength=n).astype(np.int64)
        nsh = len(plan.shards)
        key = np.sort(routed.bag * nsh + routed.shard, kind="stable")  # bag-major already: timsort is ~linear
        pair = key[np.concatenate(([True], key[1:] != key[:-1]))] if key.size else key
        p_shard = pair % nsh
        p_dpu = sh["dpu"][p_shard]
        bags = np.bincount(p_dpu, minlength=n).astype(np.int64)
        out = np.bincount(p_dpu, weights=sh["sum_bytes"][p_shard], minlength=n).astype(np.int64)
        req = _pad8(bags * BAG_DESC_BYTES) + _pad8(lookups * LOOKUP_ID_BYTES)
        return DpuLoad(lookups, read, elements, bags, req, out, dmas, plan.dtype)

    def batch_cost(self, plan: Plan, indices: np.ndarray, offsets: np.ndarray, batch_size: int) -> BatchCost:
        """Cost of one batch (table-major indices, offsets [T*B+1])."""
        routed = self.router(plan).route(indices, offsets, batch_size)
        load = self.dpu_load(plan, routed, batch_size)
        ph = self.latency(load, plan.topology)
        lat = sum(v for k, v in ph.items() if k != "kernel_per_dpu")
        mean = load.lookups.mean()
        imb = float(load.lookups.max() / mean) if mean > 0 else 1.0
        cs = float(routed.cached.mean()) if routed.cached.size else 0.0
        return BatchCost(load, ph, float(lat), imb, cs, int(len(indices)))

    def evaluate(self, plan: Plan, trace: Any, batch_size: int, profile: Any = None, max_batches: Optional[int] = None,
                 allow_profile_trace: bool = False) -> PlanReport:
        """Metrics of ``plan`` on ``trace`` cut into batches of ``batch_size`` samples (a last,
        shorter batch is dropped unless it is the only one). ``profile``: the AccessProfile the
        plan was built from, named in the report next to the evaluation trace."""
        tr = as_trace(trace)
        fp = tr.fingerprint()
        if profile is not None and getattr(profile, "fingerprint", None) == fp and not allow_profile_trace:
            raise PlanError(
                f"evaluation trace {tr.name!r} is the trace the profile was made from ({profile.source!r}); "
                f"evaluate on a held-out trace (or pass allow_profile_trace=True to measure the in-sample fit)"
            )
        costs = []
        for i, (idx, off, b) in enumerate(tr.batches(batch_size)):
            if b < batch_size and costs:
                break
            if max_batches is not None and i >= max_batches:
                break
            costs.append(self.batch_cost(plan, idx, off, b))
        n = plan.topology.nr_dpus
        mram = per_dpu_table_bytes(plan)
        m = lambda f: float(np.mean([f(c) for c in costs]))
        return PlanReport(
            strategy=plan.strategy,
            nr_dpus=n,
            batch_size=batch_size,
            batches=len(costs),
            imbalance=m(lambda c: c.imbalance),
            imbalance_max=float(max(c.imbalance for c in costs)),
            latency_us=m(lambda c: c.latency_us),
            kernel_us=m(lambda c: c.phases_us["kernel"]),
            cpu_to_dpu_us=m(lambda c: c.phases_us["cpu_to_dpu"]),
            dpu_to_cpu_us=m(lambda c: c.phases_us["dpu_to_cpu"]),
            lookups_per_dpu_mean=m(lambda c: c.load.lookups.mean()),
            lookups_per_dpu_max=m(lambda c: c.load.lookups.max()),
            request_bytes_padded=m(lambda c: c.load.request_bytes.max() * n),
            request_bytes_useful=m(lambda c: c.load.request_bytes.sum()),
            output_bytes_padded=m(lambda c: c.load.output_bytes.max() * n),
            output_bytes_useful=m(lambda c: c.load.output_bytes.sum()),
            replica_hit_rate=m(lambda c: c.cached_share),
            mram_bytes_max=int(mram.max() + plan.request_bytes + plan.output_bytes),
            mram_bytes_mean=float(mram.mean() + plan.request_bytes + plan.output_bytes),
            nr_shards=len(plan.shards),
            latency_model=self.latency.name,
            eval_source=tr.name,
            eval_fingerprint=fp,
            profile_source=getattr(profile, "source", None),
            profile_fingerprint=getattr(profile, "fingerprint", None),
        )


class _KernelFnLatency(SimpleLatency):
    """SimpleLatency whose kernel term comes from a user function f(lookups, read_bytes, topology) -> us [D]."""

    def __init__(self, fn):
        super().__init__(name=f"user kernel function {getattr(fn, '__name__', 'fn')}")
        self.fn = fn

    def __call__(self, load: DpuLoad, topology: Topology) -> dict[str, Any]:
        out = super().__call__(load, topology)
        k = np.asarray(self.fn(load.lookups, load.mram_read_bytes, topology), dtype=np.float64)
        out["kernel"] = float(k.max())
        out["kernel_per_dpu"] = k
        return out


def expected_load(plan: Plan, profile: Any, batch_size: int, pooling: float = 20.0) -> DpuLoad:
    """Expected per-DPU load of one batch of ``batch_size`` samples under ``plan``, from the
    profile's row frequencies (or uniform access with ``pooling`` lookups per bag when profile is
    None). Cached rows' lookups are split evenly over their replicas (the ideal the packer's
    least-loaded choice approaches); distinct bags per shard ~ B (1 - exp(-entries / B)).
    Analytic and vectorized: used by strategies to compare candidate shapes without a trace."""
    from .validate import shard_arrays

    tables = plan.tables
    B = float(batch_size)
    w = []
    for t, spec in enumerate(tables):
        if profile is not None:
            w.append(profile.counts[t] * (B / profile.samples))
        else:
            w.append(np.full(spec.rows, B * pooling / spec.rows))
    ng = len(plan.groups)
    g_load = np.zeros(ng)
    cached_rows: list[list[np.ndarray]] = [[] for _ in tables]
    for gi, g in enumerate(plan.groups):
        if g.kind == "cache":
            r = g.global_rows()
            g_load[gi] = w[g.table][r].sum()
            cached_rows[g.table].append(r)
    cum = [np.concatenate(([0.0], np.cumsum(x))) for x in w]
    cached_w = []
    for t in range(len(tables)):
        if cached_rows[t]:
            cw = w[t].copy()
            cw[:] = 0.0
            r = np.concatenate(cached_rows[t])
            cw[r] = w[t][r]
            cached_w.append(np.concatenate(([0.0], np.cumsum(cw))))
        else:
            cached_w.append(None)
    for gi, g in enumerate(plan.groups):
        if g.kind != "base":
            continue
        if g.rows is None:
            v = cum[g.table][g.row_hi] - cum[g.table][g.row_lo]
            if cached_w[g.table] is not None:
                v -= cached_w[g.table][g.row_hi] - cached_w[g.table][g.row_lo]
        else:
            r = g.global_rows()
            v = w[g.table][r].sum()
            if cached_w[g.table] is not None:
                v -= np.diff(cached_w[g.table])[r].sum()
        g_load[gi] = v
    a = shard_arrays(plan)
    reps = np.zeros(ng, dtype=np.int64)
    np.maximum.at(reps, a["group"], a["replica"] + 1)
    entries = g_load[a["group"]] / reps[a["group"]]
    n = plan.topology.nr_dpus
    bags = B * (1.0 - np.exp(-entries / B)) if B > 0 else entries
    bc = lambda x: np.rint(np.bincount(a["dpu"], weights=x, minlength=n)).astype(np.int64)
    lookups = bc(entries)
    bag_n = bc(bags)
    return DpuLoad(
        lookups=lookups,
        mram_read_bytes=bc(entries * a["row_bytes"]),
        elements=bc(entries * (a["col_hi"] - a["col_lo"])),
        bags=bag_n,
        request_bytes=_pad8(bag_n * BAG_DESC_BYTES) + _pad8(lookups * LOOKUP_ID_BYTES),
        output_bytes=bc(bags * a["sum_bytes"]),
        dma_reads=bc(entries * -(-a["sum_bytes"] // MAX_DMA_BYTES)),
        dtype=plan.dtype,
    )


def expected_cost(plan: Plan, profile: Any, batch_size: int, latency: Any = None) -> dict:
    """Latency (us), phases and imbalance of :func:`expected_load` under a latency model
    (default :func:`default_latency_model`)."""
    lat = latency if latency is not None else default_latency_model()
    if not hasattr(lat, "name"):
        lat = _KernelFnLatency(lat)
    load = expected_load(plan, profile, batch_size)
    ph = lat(load, plan.topology)
    mean = load.lookups.mean()
    return {
        "latency_us": float(sum(v for k, v in ph.items() if k != "kernel_per_dpu")),
        "phases_us": {k: v for k, v in ph.items() if k != "kernel_per_dpu"},
        "imbalance": float(load.lookups.max() / mean) if mean > 0 else 1.0,
        "load": load,
    }
