"""The UPMEM timing model: what a batch would cost on real DPUs, from the emulator's exact counters.

The emulator runs the real kernel and counts, per DPU and per tasklet, every MRAM DMA and its
bytes; the PIM backend adds lookups, bags and accumulated elements per DPU and the length of every
system-wide host<->DPU transfer. This module turns those counts into four modeled phases of one
batch (each an :class:`updlrm.stats.Phase` with ``source="modeled"`` and the formula's inputs in
``detail``):

``cpu_to_dpu``
    For every system-wide push (``dpu_push_xfer``: one length, padded to the largest request,
    moved to every DPU of the set)::

        t = fixed_per_rank * nr_ranks + max(L * max(max_dpus_in_a_rank / rank_bw, 1 / dpu_bw),
                                            L * nr_dpus / system_bw)

    ranks move data in parallel at ``rank_bw`` each (a DPU at most at ``dpu_bw``, its serial rate),
    all together at most ``system_bw`` (host memory / channel cap); ``fixed_per_rank * nr_ranks`` is the software cost of one transfer.
``launch``
    ``launches * (launch_fixed + launch_per_rank * nr_ranks)`` (guessed constants).
``kernel``
    The slowest DPU. For DPU ``d`` with tasklets ``t`` (all in cycles)::

        instr[t]  = lookups[t]*I_lookup + bags[t]*I_bag + elements[t]*I_elem(dtype)
        dma[t]    = reads[t]*alpha_r + writes[t]*alpha_w + (read_bytes[t]+write_bytes[t])*beta
        issue     = sum_t instr[t]                      # the DPU issues <= 1 instruction/cycle
        chain     = max_t (11*instr[t] + dma[t])        # one tasklet issues <= once per 11 cycles
                                                        # and blocks during its own DMAs
        engine    = sum_t (reads+writes)[t]*engine_fixed + (read_bytes+write_bytes)[t]*beta
                                                        # one DMA engine per DPU, shared
        cycles[d] = kernel_fixed + max(issue, chain, engine)

    and ``kernel = max_d cycles[d] / clock_hz`` summed over the batch's launches. With >= 11
    equally loaded tasklets ``issue`` >= ``chain``'s instruction part: full pipeline rate, as PrIM
    measured; with fewer, throughput scales with the tasklet count. ``max`` of the three bounds is
    optimistic where they partly serialize (a roofline-style estimate).
``dpu_to_cpu``
    Like ``cpu_to_dpu`` with the DPU->CPU constants, for every system-wide pull.

A **physical bound** (:meth:`TimingModel.physical_bound`) is also given: the larger of the
MRAM-bandwidth bound of the busiest DPU (its DMA bytes at the peak 1/beta bytes/cycle) and the
transfer bound (useful bytes at the peak rank bandwidth of every rank at once), so a benchmark can
print how far the modeled time is from what the hardware could at best do.

Every constant lives in ``updlrm/data_files/timing_constants.json`` with its unit, source and
status (published / derived / fitted / guessed); ``TimingModel.from_file(path)`` overrides any
subset, so a user with hardware can recalibrate. The tests in ``tests/test_timing_model.py``
reproduce PrIM's microbenchmarks through the model.

Recalibrating with hardware: run ``updlrm bench --device hw`` (or ``simulator``) on the SDK build;
each pim run shows the measured phases and perfcounter cycles next to this model's
(``model_alongside_s``, ``kernel_model.measured_cycles_max``). Fit the guessed constants (per-lookup
and per-bag instructions, launch and per-rank transfer costs) to those, write them to a JSON file
and pass it back with ``--timing-constants`` (``updlrm bench --show-constants`` lists them all).

Counters come from the PIM backend as a plain dict (``BatchStats.counters``);
:func:`counters_from_dict` documents the field names and shapes and turns it into
:class:`KernelCounters` (one per launch) and :class:`TransferCounters`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from updlrm.partition import Topology
from updlrm.stats import BatchStats, Phase

DTYPES = ("int32", "fp32", "int16", "int8")
#: Bytes of one stored element of each dtype (rows are packed and padded to 8 bytes).
DTYPE_BYTES = {"int32": 4, "fp32": 4, "int16": 2, "int8": 1}

#: The names of the model's constants (keys of timing_constants.json).
CONSTANT_NAMES = (
    "dma_read_alpha_cycles",
    "dma_write_alpha_cycles",
    "dma_beta_cycles_per_byte",
    "dma_engine_fixed_cycles",
    "issue_interval_cycles",
    "instr_per_element_int32",
    "instr_per_element_fp32",
    "instr_per_element_int16",
    "instr_per_element_int8",
    "instr_per_lookup",
    "instr_per_bag",
    "kernel_fixed_cycles",
    "launch_fixed_s",
    "launch_per_rank_s",
    "to_dpu_rank_bw_bytes_per_s",
    "from_dpu_rank_bw_bytes_per_s",
    "to_dpu_single_dpu_bw_bytes_per_s",
    "from_dpu_single_dpu_bw_bytes_per_s",
    "to_dpu_system_bw_bytes_per_s",
    "from_dpu_system_bw_bytes_per_s",
    "to_dpu_fixed_per_rank_s",
    "from_dpu_fixed_per_rank_s",
)


# ----------------------------------------------------------------------------------------------
# Counters
# ----------------------------------------------------------------------------------------------


def _as_array(name: str, value: Any, shape: tuple[int, ...] | None, ndim: int) -> np.ndarray:
    """``value`` as a float64 array of ``ndim`` dims (and ``shape`` when given), non-negative."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"counter {name!r} is not numeric: {exc}") from None
    if arr.ndim != ndim:
        raise ValueError(f"counter {name!r} must have {ndim} dimension(s), got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"counter {name!r} must have shape {shape}, got {arr.shape}")
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0):
        bad = int(np.flatnonzero(~np.isfinite(arr.ravel()) | (arr.ravel() < 0))[0])
        pos = np.unravel_index(bad, arr.shape)
        raise ValueError(
            f"counter {name!r} must be finite and >= 0; position {tuple(int(p) for p in pos)} "
            f"holds {arr.ravel()[bad]}"
        )
    return arr


@dataclass
class KernelCounters:
    """What one launch did on every DPU (exact counts, from the emulator and the packer).

    ``D`` = DPUs in the set, ``T`` = tasklet slots (>= ``nr_tasklets``; the emulator reports 24
    slots, of which the first ``nr_tasklets`` are used).

    Attributes:
        nr_tasklets: tasklets the kernel ran with (NR_TASKLETS).
        dtype: ``"int32"`` (integer add), ``"fp32"`` (software float add on a real DPU), or
            ``"int16"`` / ``"int8"`` (sign-extending load + int32 add; narrower rows, so fewer DMA
            bytes, which the DMA counters already hold).
        lookups: [D] lookups (rows accumulated) per DPU.
        bags: [D] bags (partial sums written) per DPU.
        elements: [D] elements accumulated per DPU (sum over lookups of the shard's columns).
        dma_read_ops, dma_read_bytes, dma_write_ops, dma_write_bytes: [D, T] per DPU per tasklet
            ``mram_read`` / ``mram_write`` calls and their bytes (request staging included).
        lookups_per_tasklet, bags_per_tasklet: optional [D, T]; without lookups_per_tasklet the
            DPU's lookups are split evenly over ``nr_tasklets``; without bags_per_tasklet the bags
            (and elements) follow each tasklet's share of the lookups.
        measured_cycles: optional [D, T] perfcounter cycles per tasklet (SDK builds only, shown
            next to the model for checking; never used by it).
    """

    nr_tasklets: int
    dtype: str
    lookups: np.ndarray
    bags: np.ndarray
    elements: np.ndarray
    dma_read_ops: np.ndarray
    dma_read_bytes: np.ndarray
    dma_write_ops: np.ndarray
    dma_write_bytes: np.ndarray
    lookups_per_tasklet: np.ndarray | None = None
    bags_per_tasklet: np.ndarray | None = None
    measured_cycles: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"KernelCounters.dtype must be one of {DTYPES}, got {self.dtype!r}")
        self.lookups = _as_array("lookups", self.lookups, None, 1)
        d = self.lookups.shape[0]
        if d < 1:
            raise ValueError("KernelCounters need at least one DPU (lookups has length 0)")
        self.bags = _as_array("bags", self.bags, (d,), 1)
        self.elements = _as_array("elements", self.elements, (d,), 1)
        self.dma_read_ops = _as_array("dma_read_ops", self.dma_read_ops, None, 2)
        if self.dma_read_ops.shape[0] != d:
            raise ValueError(
                f"counter 'dma_read_ops' has {self.dma_read_ops.shape[0]} DPU rows, 'lookups' has {d}"
            )
        shape = self.dma_read_ops.shape
        nt = int(self.nr_tasklets)
        if not 1 <= nt <= shape[1]:
            raise ValueError(
                f"KernelCounters.nr_tasklets must be in 1..{shape[1]} (tasklet slots in the DMA "
                f"counters), got {self.nr_tasklets}"
            )
        self.nr_tasklets = nt
        self.dma_read_bytes = _as_array("dma_read_bytes", self.dma_read_bytes, shape, 2)
        self.dma_write_ops = _as_array("dma_write_ops", self.dma_write_ops, shape, 2)
        self.dma_write_bytes = _as_array("dma_write_bytes", self.dma_write_bytes, shape, 2)
        for name in ("lookups_per_tasklet", "bags_per_tasklet", "measured_cycles"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _as_array(name, value, shape, 2))

    @property
    def nr_dpus(self) -> int:
        return int(self.lookups.shape[0])

    def per_tasklet(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lookups, bags, elements) per DPU per used tasklet, each [D, nr_tasklets] float64."""
        nt = self.nr_tasklets
        if self.lookups_per_tasklet is not None:
            lk = self.lookups_per_tasklet[:, :nt]
            share = np.divide(lk, self.lookups[:, None], out=np.full_like(lk, 1.0 / nt),
                              where=self.lookups[:, None] > 0)
        else:
            share = np.full((self.nr_dpus, nt), 1.0 / nt)
            lk = self.lookups[:, None] * share
        el = self.elements[:, None] * share
        if self.bags_per_tasklet is not None:
            bg = self.bags_per_tasklet[:, :nt]
        else:  # the kernel hands out whole bags by lookup count: bags follow the lookup share
            bg = self.bags[:, None] * share
        return lk, bg, el


@dataclass
class TransferCounters:
    """Host<->DPU traffic of one batch.

    Attributes:
        to_dpu_lengths: [P] bytes per DPU of each system-wide CPU->DPU transfer, padding included
            (one ``dpu_push_xfer`` moves the same length to every DPU of the set).
        from_dpu_lengths: [Q] the same for DPU->CPU transfers.
        to_dpu_bytes: [D] useful bytes each DPU received (no padding), for the physical bound.
        from_dpu_bytes: [D] useful bytes read back from each DPU.
    """

    to_dpu_lengths: np.ndarray
    from_dpu_lengths: np.ndarray
    to_dpu_bytes: np.ndarray
    from_dpu_bytes: np.ndarray

    def __post_init__(self) -> None:
        self.to_dpu_lengths = _as_array("to_dpu_lengths", self.to_dpu_lengths, None, 1)
        self.from_dpu_lengths = _as_array("from_dpu_lengths", self.from_dpu_lengths, None, 1)
        self.to_dpu_bytes = _as_array("to_dpu_bytes", self.to_dpu_bytes, None, 1)
        self.from_dpu_bytes = _as_array("from_dpu_bytes", self.from_dpu_bytes, self.to_dpu_bytes.shape, 1)

    @property
    def nr_dpus(self) -> int:
        return int(self.to_dpu_bytes.shape[0])


_KERNEL_FIELDS = ("lookups", "bags", "elements", "dma_read_ops", "dma_read_bytes", "dma_write_ops",
                  "dma_write_bytes")
_KERNEL_OPTIONAL = ("lookups_per_tasklet", "bags_per_tasklet", "measured_cycles")


def _kernel_from_dict(d: Mapping[str, Any], defaults: Mapping[str, Any], where: str) -> KernelCounters:
    merged = {**defaults, **d}
    missing = [k for k in ("nr_tasklets", "dtype", *_KERNEL_FIELDS) if k not in merged]
    if missing:
        raise ValueError(f"{where}: missing counter field(s) {missing}")
    return KernelCounters(
        nr_tasklets=int(merged["nr_tasklets"]),
        dtype=str(merged["dtype"]),
        **{k: merged[k] for k in _KERNEL_FIELDS},
        **{k: merged.get(k) for k in _KERNEL_OPTIONAL},
    )


def _lengths_or_one_push(d: Mapping[str, Any], lengths_key: str, bytes_arr: np.ndarray) -> np.ndarray:
    if lengths_key in d and d[lengths_key] is not None:
        return np.asarray(d[lengths_key], dtype=np.float64)
    biggest = float(bytes_arr.max()) if bytes_arr.size else 0.0
    return np.asarray([np.ceil(biggest / 8.0) * 8.0] if biggest > 0 else [], dtype=np.float64)


#: Names the native module (host/python/module.cpp ``lookup``) uses, mapped to this module's.
NATIVE_ALIASES = {
    "lookups_per_dpu": "lookups",
    "bags_per_dpu": "bags",
    "elements_per_dpu": "elements",
    "tasklet_lookups": "lookups_per_tasklet",
    "request_bytes_per_dpu": "pushed_bytes",
    "output_bytes_per_dpu": "pulled_bytes",
}
#: Bytes of the fixed per-launch transfers of the driver (host/driver.c): the launch args pushed to
#: WRAM and the status gathered back (sizes from dpu_kernels/include/updlrm_abi.h, ABI v2).
LAUNCH_ARGS_BYTES = 32
STATUS_BYTES = 24 + 8 * 24 + 4 * 24


def _normalise_native(d: Mapping[str, Any]) -> dict:
    """Accept the native module's raw counter names too (see :data:`NATIVE_ALIASES`).

    ``request_push_bytes`` / ``output_pull_bytes`` (one padded length per launch) become
    ``push_lengths`` / ``pull_lengths`` with the driver's args push and status pull added per
    launch. A missing ``elements`` is estimated as (DMA read bytes - request bytes) / 4 per DPU
    (exact when every row slice has an even column count) and flagged ``elements_estimated``.
    """
    out = dict(d)
    for native, ours in NATIVE_ALIASES.items():
        if native in out and ours not in out:
            out[ours] = out[native]
    if "push_lengths" not in out and "request_push_bytes" in out:
        out["push_lengths"] = [x for n in np.atleast_1d(out["request_push_bytes"]) for x in (LAUNCH_ARGS_BYTES, n)]
    if "pull_lengths" not in out and "output_pull_bytes" in out:
        out["pull_lengths"] = [x for n in np.atleast_1d(out["output_pull_bytes"]) for x in (STATUS_BYTES, n)]
    if not out.get("launches") and all(k not in out for k in ("dma_read_ops", "dma_read_bytes")):
        _estimate_dma(out)
    if "elements" not in out and "dma_read_bytes" in out and "pushed_bytes" in out and not out.get("launches"):
        rd = np.asarray(out["dma_read_bytes"], dtype=np.float64)
        req = np.asarray(out["pushed_bytes"], dtype=np.float64)
        if rd.ndim == 2 and req.shape == (rd.shape[0],):
            out["elements"] = np.maximum(rd.sum(axis=1) - req, 0.0) / 4.0
            out["elements_estimated"] = True
    return out


def _estimate_dma(out: dict) -> None:
    """DMA counters for a batch run where nobody counted them (SDK builds: simulator or hardware),
    from what the packer knows, as the kernel behaves: tasklet 0 stages the request in 2,048-byte
    reads, every lookup reads its row slice (elements x bytes of the dtype, rounded up to 8 per lookup, one DMA
    per lookup), every bag writes its partial sum (``output_bytes``). Spread evenly over tasklets;
    flagged ``dma_estimated``. Needs lookups, bags, elements, nr_tasklets, and the request/output
    bytes per DPU; leaves ``out`` unchanged otherwise."""
    need = ("lookups", "bags", "elements", "nr_tasklets")
    request = out.get("request_bytes", out.get("request_bytes_per_dpu"))
    output = out.get("output_bytes", out.get("output_bytes_per_dpu"))
    if any(k not in out for k in need) or request is None or output is None:
        return
    try:
        lookups = np.asarray(out["lookups"], dtype=np.float64)
        elements = np.asarray(out["elements"], dtype=np.float64)
        bags = np.asarray(out["bags"], dtype=np.float64)
        request = np.asarray(request, dtype=np.float64)
        output = np.asarray(output, dtype=np.float64)
        nt = int(out["nr_tasklets"])
    except (TypeError, ValueError):
        return  # let counters_from_dict report the malformed field
    if lookups.ndim != 1 or not (elements.shape == bags.shape == request.shape == output.shape == lookups.shape):
        return
    esize = DTYPE_BYTES.get(str(out.get("dtype", "int32")), 4)
    row_bytes = np.where(lookups > 0, np.ceil(elements * esize / np.maximum(lookups, 1) / 8) * 8, 0)
    slots = max(nt, 1)

    def spread(x):
        return np.repeat((x / slots)[:, None], slots, axis=1)

    out["dma_read_ops"] = spread(lookups + np.ceil(request / 2048))
    out["dma_read_bytes"] = spread(lookups * row_bytes + request)
    out["dma_write_ops"] = spread(bags)
    out["dma_write_bytes"] = spread(output)
    out["dma_estimated"] = True


def counters_from_dict(d: Mapping[str, Any]) -> tuple[list[KernelCounters], TransferCounters]:
    """Turn the PIM backend's plain counter dict into model inputs.

    Fields (arrays may be lists or numpy arrays; D = DPUs, T = tasklet slots)::

        nr_tasklets: int                 dtype: "int32" | "fp32"
        lookups, bags, elements: [D]     per DPU, this batch (one launch)
        dma_read_ops, dma_read_bytes, dma_write_ops, dma_write_bytes: [D, T]
        lookups_per_tasklet, bags_per_tasklet, measured_cycles: [D, T]   (optional)
        pushed_bytes: [D]   useful bytes sent to each DPU      pulled_bytes: [D]  read back
        push_lengths: [P]   padded bytes per DPU of each CPU->DPU transfer (optional: default one
                            push of max(pushed_bytes) rounded up to 8)
        pull_lengths: [Q]   same for DPU->CPU transfers (optional, same default)
        launches: [ {kernel fields...}, ... ]   (optional) one dict per launch when a batch needs
                            several; each inherits nr_tasklets/dtype from the top level.

    The native module's raw names are accepted as well (:data:`NATIVE_ALIASES`). Without DMA
    counters (SDK builds count none) they are estimated from lookups/elements/bags and the
    request/output bytes (``request_bytes``, ``output_bytes`` [D]); see ``_estimate_dma``.
    Returns (kernel counters, one per launch; transfer counters). Raises ``ValueError`` naming the
    missing or malformed field.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"counters must be a mapping, got {type(d).__name__}")
    d = _normalise_native(d)
    top = {k: d[k] for k in ("nr_tasklets", "dtype") if k in d}
    if d.get("launches"):
        kernels = [_kernel_from_dict(ld, top, f"launches[{i}]") for i, ld in enumerate(d["launches"])]
    else:
        kernels = [_kernel_from_dict(d, {}, "counters")]
    for name in ("pushed_bytes", "pulled_bytes"):
        if name not in d:
            raise ValueError(f"counters: missing counter field {name!r}")
    pushed = _as_array("pushed_bytes", d["pushed_bytes"], None, 1)
    pulled = _as_array("pulled_bytes", d["pulled_bytes"], pushed.shape, 1)
    transfers = TransferCounters(
        to_dpu_lengths=_lengths_or_one_push(d, "push_lengths", pushed),
        from_dpu_lengths=_lengths_or_one_push(d, "pull_lengths", pulled),
        to_dpu_bytes=pushed,
        from_dpu_bytes=pulled,
    )
    for i, k in enumerate(kernels):
        if k.nr_dpus != transfers.nr_dpus:
            raise ValueError(
                f"counters: launch {i} has {k.nr_dpus} DPUs but pushed_bytes has {transfers.nr_dpus}"
            )
    return kernels, transfers


def synthetic_kernel_counters(
    nr_dpus: int,
    nr_tasklets: int,
    dtype: str = "int32",
    lookups_per_tasklet: float = 0.0,
    elements_per_lookup: float = 0.0,
    bags_per_tasklet: float = 0.0,
    reads_per_tasklet: float = 0.0,
    read_bytes_each: float = 0.0,
    writes_per_tasklet: float = 0.0,
    write_bytes_each: float = 0.0,
) -> KernelCounters:
    """Counters of an evenly loaded launch (every DPU, every tasklet does the same work).

    For microbenchmarks and analytical what-ifs (e.g. a published configuration too large to
    emulate). Counts are per tasklet; ``*_bytes_each`` are bytes per DMA.
    """
    shape = (nr_dpus, nr_tasklets)
    lk = np.full(shape, float(lookups_per_tasklet))
    return KernelCounters(
        nr_tasklets=nr_tasklets,
        dtype=dtype,
        lookups=lk.sum(axis=1),
        bags=np.full(nr_dpus, float(bags_per_tasklet) * nr_tasklets),
        elements=lk.sum(axis=1) * float(elements_per_lookup),
        dma_read_ops=np.full(shape, float(reads_per_tasklet)),
        dma_read_bytes=np.full(shape, float(reads_per_tasklet) * read_bytes_each),
        dma_write_ops=np.full(shape, float(writes_per_tasklet)),
        dma_write_bytes=np.full(shape, float(writes_per_tasklet) * write_bytes_each),
        lookups_per_tasklet=lk,
        bags_per_tasklet=np.full(shape, float(bags_per_tasklet)),
    )


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


@dataclass
class PhysicalBound:
    """A lower bound on a batch's DPU-side time (seconds) and what set it."""

    seconds: float
    mram_bound_s: float  # busiest DPU's DMA bytes at the peak MRAM bandwidth, summed over launches
    transfer_bound_s: float  # useful bytes at the peak rank bandwidth of every rank at once
    busiest_dpu: int

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "mram_bound_s": self.mram_bound_s,
                "transfer_bound_s": self.transfer_bound_s, "busiest_dpu": self.busiest_dpu}


@dataclass
class ModeledBatch:
    """The modeled phases of one batch plus its physical bound."""

    phases: list[Phase]
    bound: PhysicalBound

    @property
    def seconds(self) -> float:
        """Modeled DPU-side time: cpu_to_dpu + launch + kernel + dpu_to_cpu (seconds)."""
        return float(sum(p.seconds for p in self.phases))

    @property
    def achieved_over_bound(self) -> float:
        """Modeled time / physical bound (>= 1; 1 would be the hardware's best)."""
        return self.seconds / self.bound.seconds if self.bound.seconds > 0 else float("inf")

    def get(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)

    def add_to(self, stats: BatchStats) -> None:
        """Append the modeled phases to ``stats`` (next to its measured / emulator-wall ones)."""
        stats.phases.extend(self.phases)


@dataclass
class TimingModel:
    """The UPMEM timing model. ``constants`` maps each name of :data:`CONSTANT_NAMES` to a value.

    Build with :meth:`default` (the shipped, sourced constants) or :meth:`from_file` (a user's
    JSON overriding any subset). ``sources`` keeps each constant's source/status for reports.
    """

    constants: dict[str, float]
    sources: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [n for n in CONSTANT_NAMES if n not in self.constants]
        if missing:
            raise ValueError(f"TimingModel: missing constant(s) {missing}")
        for name, value in self.constants.items():
            if name not in CONSTANT_NAMES:
                raise ValueError(f"TimingModel: unknown constant {name!r}; known: {list(CONSTANT_NAMES)}")
            v = float(value)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"TimingModel: constant {name!r} must be finite and >= 0, got {value!r}")
            self.constants[name] = v
        for name in ("dma_beta_cycles_per_byte", "issue_interval_cycles", "to_dpu_rank_bw_bytes_per_s",
                     "from_dpu_rank_bw_bytes_per_s", "to_dpu_single_dpu_bw_bytes_per_s",
                     "from_dpu_single_dpu_bw_bytes_per_s", "to_dpu_system_bw_bytes_per_s",
                     "from_dpu_system_bw_bytes_per_s"):
            if self.constants[name] <= 0:
                raise ValueError(f"TimingModel: constant {name!r} must be > 0, got {self.constants[name]}")

    # -- construction ------------------------------------------------------------------------

    @staticmethod
    def _parse(entries: Mapping[str, Any], where: str) -> tuple[dict[str, float], dict[str, dict]]:
        values: dict[str, float] = {}
        sources: dict[str, dict] = {}
        for name, entry in entries.items():
            if name.startswith("_"):
                continue  # comments
            if name not in CONSTANT_NAMES:
                raise ValueError(f"{where}: unknown constant {name!r}; known: {list(CONSTANT_NAMES)}")
            if isinstance(entry, Mapping):
                if "value" not in entry:
                    raise ValueError(f"{where}: constant {name!r} has no 'value'")
                value = entry["value"]
                sources[name] = {k: v for k, v in entry.items() if k != "value"}
            else:
                value = entry
                sources[name] = {"source": f"override from {where}", "status": "user"}
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: constant {name!r} must be a number, got {value!r}")
            values[name] = float(value)
        return values, sources

    @classmethod
    def default(cls) -> "TimingModel":
        """The shipped constants (updlrm/data_files/timing_constants.json)."""
        text = resources.files("updlrm").joinpath("data_files/timing_constants.json").read_text()
        values, sources = cls._parse(json.loads(text), "timing_constants.json")
        return cls(values, sources)

    @classmethod
    def from_file(cls, path: str | Path) -> "TimingModel":
        """The shipped constants overridden by those in ``path`` (JSON; any subset of the keys,
        each a number or ``{"value": ..., "source": ...}``)."""
        path = Path(path)
        try:
            entries = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read timing constants from {path}: {exc}") from None
        if not isinstance(entries, Mapping):
            raise ValueError(f"{path}: expected a JSON object of constants")
        return cls.default().with_overrides(entries, where=str(path))

    def with_overrides(self, entries: Mapping[str, Any], where: str = "overrides") -> "TimingModel":
        """A copy with some constants replaced (same format as :meth:`from_file`)."""
        values, sources = self._parse(entries, where)
        return TimingModel({**self.constants, **values}, {**self.sources, **sources})

    def describe(self) -> list[dict]:
        """Every constant with its value, unit, source and status (for reports)."""
        return [{"name": n, "value": self.constants[n], **self.sources.get(n, {})} for n in CONSTANT_NAMES]

    # -- kernel --------------------------------------------------------------------------------

    def kernel_cycles(self, counters: KernelCounters) -> dict[str, np.ndarray]:
        """Per-DPU modeled cycles of one launch and its three bounds, each [D] float64.

        Keys: ``cycles`` (kernel_fixed + max of the bounds), ``issue``, ``chain``, ``engine``,
        ``instructions`` (sum over tasklets), ``dma_bytes``.
        """
        c = self.constants
        nt = counters.nr_tasklets
        lk, bg, el = counters.per_tasklet()
        per_elem = c["instr_per_element_" + counters.dtype]
        instr = lk * c["instr_per_lookup"] + bg * c["instr_per_bag"] + el * per_elem  # [D, nt]
        r_ops, r_bytes = counters.dma_read_ops[:, :nt], counters.dma_read_bytes[:, :nt]
        w_ops, w_bytes = counters.dma_write_ops[:, :nt], counters.dma_write_bytes[:, :nt]
        beta = c["dma_beta_cycles_per_byte"]
        dma_latency = (r_ops * c["dma_read_alpha_cycles"] + w_ops * c["dma_write_alpha_cycles"]
                       + (r_bytes + w_bytes) * beta)
        issue = instr.sum(axis=1)
        chain = (c["issue_interval_cycles"] * instr + dma_latency).max(axis=1)
        dma_bytes = (r_bytes + w_bytes).sum(axis=1)
        engine = (r_ops + w_ops).sum(axis=1) * c["dma_engine_fixed_cycles"] + dma_bytes * beta
        cycles = c["kernel_fixed_cycles"] + np.maximum(np.maximum(issue, chain), engine)
        return {"cycles": cycles, "issue": issue, "chain": chain, "engine": engine,
                "instructions": issue, "dma_bytes": dma_bytes}

    def kernel_phase(self, topology: Topology, launches: KernelCounters | Sequence[KernelCounters]) -> Phase:
        """Kernel phase: the slowest DPU of each launch, summed over launches (seconds)."""
        launches = [launches] if isinstance(launches, KernelCounters) else list(launches)
        if not launches:
            raise ValueError("kernel_phase needs at least one launch's counters")
        total = 0.0
        per_launch = []
        for i, k in enumerate(launches):
            self._check_dpus(topology, k.nr_dpus, f"launch {i} kernel counters")
            r = self.kernel_cycles(k)
            d = int(np.argmax(r["cycles"]))
            limiter = max(("issue", "chain", "engine"), key=lambda n: r[n][d])
            seconds = float(r["cycles"][d]) / topology.clock_hz
            total += seconds
            info = {
                "slowest_dpu": d,
                "cycles": float(r["cycles"][d]),
                "limiter": {"issue": "issue (1 instr/cycle)", "chain": "tasklet chain (11-cycle issue + own DMAs)",
                            "engine": "DMA engine"}[limiter],
                "issue_cycles": float(r["issue"][d]),
                "tasklet_chain_cycles": float(r["chain"][d]),
                "dma_engine_cycles": float(r["engine"][d]),
                "lookups": float(k.lookups[d]),
                "elements": float(k.elements[d]),
                "dma_bytes": float(r["dma_bytes"][d]),
                "mean_cycles": float(r["cycles"].mean()),
                "imbalance_max_over_mean": float(r["cycles"][d] / r["cycles"].mean()),
                "nr_tasklets": k.nr_tasklets,
                "dtype": k.dtype,
            }
            if k.measured_cycles is not None:
                info["measured_cycles_max"] = float(k.measured_cycles[:, : k.nr_tasklets].max())
            per_launch.append(info)
        detail = {"launches": len(launches), "clock_hz": topology.clock_hz, **per_launch[0]}
        if len(launches) > 1:
            detail["per_launch"] = per_launch
        return Phase("kernel", total, "modeled", detail)

    # -- transfers and launch ------------------------------------------------------------------

    def transfer_seconds(self, topology: Topology, lengths: np.ndarray, direction: str) -> np.ndarray:
        """Seconds of each system-wide transfer of ``lengths[i]`` bytes per DPU ([P] -> [P]).

        ``direction``: ``"to_dpu"`` or ``"from_dpu"``. Every DPU of ``topology`` moves the length.
        """
        if direction not in ("to_dpu", "from_dpu"):
            raise ValueError(f"direction must be 'to_dpu' or 'from_dpu', got {direction!r}")
        c = self.constants
        lengths = np.asarray(lengths, dtype=np.float64)
        ranks = topology.rank_sizes
        # a rank of n DPUs moves at min(rank_bw, n * single_dpu_bw): the busiest rank's time
        per_dpu_s_per_byte = max(max(ranks) / c[f"{direction}_rank_bw_bytes_per_s"],
                                 1.0 / c[f"{direction}_single_dpu_bw_bytes_per_s"])
        per_rank = lengths * per_dpu_s_per_byte
        system = lengths * topology.nr_dpus / c[f"{direction}_system_bw_bytes_per_s"]
        fixed = c[f"{direction}_fixed_per_rank_s"] * len(ranks)
        return np.where(lengths > 0, fixed + np.maximum(per_rank, system), 0.0)

    def transfer_phase(self, topology: Topology, transfers: TransferCounters, direction: str) -> Phase:
        """The ``cpu_to_dpu`` or ``dpu_to_cpu`` phase for one batch's transfers."""
        self._check_dpus(topology, transfers.nr_dpus, "transfer counters")
        lengths = transfers.to_dpu_lengths if direction == "to_dpu" else transfers.from_dpu_lengths
        useful = transfers.to_dpu_bytes if direction == "to_dpu" else transfers.from_dpu_bytes
        each = self.transfer_seconds(topology, lengths, direction)
        moved = float(lengths.sum()) * topology.nr_dpus
        detail = {
            "transfers": int(lengths.size),
            "lengths_bytes_per_dpu": [float(x) for x in lengths],
            "seconds_each": [float(x) for x in each],
            "bytes_moved_padded": moved,
            "bytes_useful": float(useful.sum()),
            "padding_overhead": (moved / float(useful.sum())) if useful.sum() > 0 else None,
            "nr_ranks": topology.nr_ranks,
            "max_dpus_per_rank": max(topology.rank_sizes),
        }
        name = "cpu_to_dpu" if direction == "to_dpu" else "dpu_to_cpu"
        return Phase(name, float(each.sum()), "modeled", detail)

    def launch_phase(self, topology: Topology, launches: int = 1) -> Phase:
        c = self.constants
        each = c["launch_fixed_s"] + c["launch_per_rank_s"] * topology.nr_ranks
        return Phase("launch", launches * each, "modeled",
                     {"launches": launches, "nr_ranks": topology.nr_ranks, "seconds_each": each,
                      "note": "launch overhead constants are guessed (no public figure)"})

    # -- whole batch -------------------------------------------------------------------------

    def physical_bound(self, topology: Topology, launches: KernelCounters | Sequence[KernelCounters],
                       transfers: TransferCounters) -> PhysicalBound:
        """max(MRAM bound of the busiest DPU, transfer bound at peak rank bandwidth), seconds."""
        launches = [launches] if isinstance(launches, KernelCounters) else list(launches)
        c = self.constants
        peak_mram = topology.clock_hz / c["dma_beta_cycles_per_byte"]  # bytes/s per DPU
        mram_s = 0.0
        busiest = 0
        for k in launches:
            nt = k.nr_tasklets
            b = (k.dma_read_bytes[:, :nt] + k.dma_write_bytes[:, :nt]).sum(axis=1)
            busiest = int(np.argmax(b))
            mram_s += float(b[busiest]) / peak_mram
        ranks = topology.nr_ranks
        transfer_s = (float(transfers.to_dpu_bytes.sum()) / (ranks * c["to_dpu_rank_bw_bytes_per_s"])
                      + float(transfers.from_dpu_bytes.sum()) / (ranks * c["from_dpu_rank_bw_bytes_per_s"]))
        return PhysicalBound(max(mram_s, transfer_s), mram_s, transfer_s, busiest)

    def model_batch(self, topology: Topology, launches: KernelCounters | Sequence[KernelCounters],
                    transfers: TransferCounters, plan=None) -> ModeledBatch:
        """The four modeled phases of one batch and its physical bound.

        ``plan`` (optional) is only checked against the topology and named in the kernel detail.
        """
        launches = [launches] if isinstance(launches, KernelCounters) else list(launches)
        if plan is not None and plan.topology.nr_dpus != topology.nr_dpus:
            raise ValueError(
                f"plan is for {plan.topology.nr_dpus} DPUs but the topology has {topology.nr_dpus}"
            )
        kernel = self.kernel_phase(topology, launches)
        if plan is not None:
            kernel.detail["strategy"] = plan.strategy
        phases = [
            self.transfer_phase(topology, transfers, "to_dpu"),
            self.launch_phase(topology, len(launches)),
            kernel,
            self.transfer_phase(topology, transfers, "from_dpu"),
        ]
        return ModeledBatch(phases, self.physical_bound(topology, launches, transfers))

    def model_counters(self, topology: Topology, counters: Mapping[str, Any], plan=None) -> ModeledBatch:
        """:meth:`model_batch` on the PIM backend's counter dict (see :func:`counters_from_dict`)."""
        launches, transfers = counters_from_dict(counters)
        return self.model_batch(topology, launches, transfers, plan)

    @staticmethod
    def _check_dpus(topology: Topology, n: int, what: str) -> None:
        if n != topology.nr_dpus:
            raise ValueError(f"{what} cover {n} DPUs but the topology has {topology.nr_dpus}")
