"""PimEmbedding: sum-pooled embedding lookups of several tables on (emulated) UPMEM DPUs.

    pim = PimEmbedding(weights, plan, dtype="fp32", device="emulator")
    pooled = pim.lookup(indices, offsets, batch_size)   # float32 [B, T, D]
    pim.last_stats                                      # BatchStats of the latest good batch (any thread)
    pim.close()

A batch flows through the native runtime (``updlrm._native._emu``, host/python/): the packer maps
every lookup to (row group, local row) through the plan's PlanIndex, sends each bag's lookups of
one replica group to one replica (one partial sum per bag and group, replicas chosen by
water-filling over bags), builds each DPU's request and cuts the batch into launches when the
plan's per-DPU ``request_bytes`` / ``output_bytes`` are too small; the host driver pushes, launches
asynchronously, waits and pulls; the merger adds the partial sums and dequantizes into [B, W]
(W = sum of table dims) in one pass. The GIL is released for pack, launch and merge; batches from
several threads run one at a time on the DPU set, and ``last_stats`` belongs to whichever batch
finished last without error; a failed batch leaves it unchanged and carries its own stats on the
exception (``exc.stats``).

:meth:`PimEmbedding.lookup_many` pipelines a stream of batches: while the DPUs run batch n, the
host packs batch n+1 and merges batch n-1 (``dpu_launch(DPU_ASYNCHRONOUS)`` + ``dpu_sync``).

Element types:

* ``fp32``: rows summed in fp32 on the DPUs (and partial sums of row shards added in fp32 on the
  host); agrees with torch.nn.EmbeddingBag(mode="sum") to fp32 rounding (~1e-6 relative).
* ``int32`` fixed point: table t is stored as ``q = rint(w * scale_t)`` with
  ``scale_t = floor((2**31 - 1) / M) / max|w_t|`` (M = ``max_bag_lookups``), so no bag of up to M
  lookups - nor any partial sum of one - overflows int32. Partial sums are added exactly in int64
  and converted once: ``value = q_sum / scale_t``. Error bound per element of a bag of n lookups:
  ``|err| <= n * 0.5 / scale_t`` from rounding each weight, plus the fp32 rounding of the final
  value (``<= 2**-24 * n * max|w_t|``); :meth:`PimEmbedding.fixed_point_bound` returns the sum.
  Bags longer than M raise :class:`~updlrm.errors.InvalidBatchError`.
* ``int16`` / ``int8``: rows stored packed at 2 / 1 bytes per element, summed in int32 on the DPUs,
  int32 partial sums; scales per table or per (table, column group), optionally calibrated on an
  access profile (``quant=``, ``group_cols=``, ``calibrate_on=``): see :mod:`updlrm.pim.quant`,
  whose bound :meth:`PimEmbedding.pooled_error_bound` returns. int32 uses the same code with
  L = floor((2**31 - 1) / M).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from updlrm.errors import DpuFaultError, InvalidBatchError, NativeError
from updlrm.partition import Plan, PlanError, TableSpec, validate_plan
from updlrm.partition.types import DTYPE_BYTES
from updlrm.stats import BatchStats

from . import native
from .layout import image_spec, plan_layout
from .quant import DEFAULT_COVERAGE, DEFAULT_GROUP_COLS, Quantization

DTYPES = ("fp32", "int32", "int16", "int8")
_END = object()  # lookup_many: the batches ran out
#: Where the transfer/kernel phases come from, per device (updlrm.stats.SOURCES).
DEVICE_SOURCE = {"emulator": "emulator-wall", "simulator": "simulator", "hw": "hardware"}


def _as_weight(w, t: int) -> np.ndarray:
    """``w`` as a C-contiguous float32 [rows, dim] array (no copy when it already is one)."""
    if hasattr(w, "detach"):  # torch.Tensor
        w = w.detach().cpu().numpy()
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"weights[{t}] must be 2-D [rows, dim], got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"weights[{t}] must be floating point, got {w.dtype}")
    return np.ascontiguousarray(w, dtype=np.float32)


def _load_with_progress(rt, weights: list, image: dict, shards: dict, what: str) -> dict:
    """``rt.load_tables(...)`` on a worker thread (it releases the GIL) while this one draws a tqdm
    bar of the image bytes written (on a terminal, once the load lasts over a second). Returns
    ``{"seconds", "build_s", "bytes"}`` of the load; re-raises its exception."""
    from tqdm import tqdm

    out: dict = {}

    def work():
        try:
            out["result"] = rt.load_tables(weights, image, shards)
        except BaseException as exc:  # handed to the caller's thread
            out["error"] = exc

    worker = threading.Thread(target=work, name="updlrm-load-tables", daemon=True)
    worker.start()
    # drawn on a terminal only (disable=None), once the load has lasted a second
    with tqdm(total=None, desc=what, unit="B", unit_scale=True, delay=1.0, disable=None, file=sys.stderr,
              leave=False) as bar:
        while worker.is_alive():
            worker.join(0.2)
            done, total = rt.load_progress
            if total and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)
    if "error" in out:
        raise out["error"]
    return out["result"]


class PimEmbedding:
    """Embedding tables placed on DPUs by ``plan``; sum-pooled lookups per batch.

    Args:
        weights: one [rows_t, dim_t] float array (or tensor) per table of ``plan.tables``.
        plan: a :class:`~updlrm.partition.Plan` for these tables (validated here).
        dtype: "fp32", "int32", "int16" or "int8" (integer dtypes: see the module docstring). The
            plan must be sized for the same element width (``plan.dtype``; fp32 and int32 mix).
        device: "emulator" (default), or "simulator" / "hw" (need the SDK build).
        max_bag_lookups: integer dtypes: the largest bag the scale is chosen for.
        kernel_path: use this kernel binary instead of the built one for plan.topology.nr_tasklets.
        quant: integer dtypes: ``"table"`` (one scale per table) or ``"group"`` (per column group).
        group_cols: columns per group for ``quant="group"``.
        calibrate_on: integer dtypes: per-table access counts (list of [rows_t] arrays, or an
            ``AccessProfile``): the hot rows covering ``coverage`` of the accesses set the scales.
        coverage: share of a table's accesses whose rows decide a calibrated scale (default 0.999).

    Loading: one native pass over the weights gives max|w| (the int32 scales) and the NaN/inf
    check; the native loader (host/python/loader.cpp) then builds every DPU's MRAM image window by
    window straight from the weights while the driver pushes each window, so no second copy of the
    tables lives in host memory (full Kaggle on 2,560 DPUs: a few seconds, benchmarks/load_time.py).
    On a terminal a tqdm bar shows the bytes once a load lasts over a second; ``load_stats`` keeps
    the seconds of each step.
    """

    def __init__(
        self,
        weights: Sequence,
        plan: Plan,
        dtype: str = "fp32",
        device: str = "emulator",
        max_bag_lookups: int = 4096,
        kernel_path: str | None = None,
        quant: str = "table",
        group_cols: int = DEFAULT_GROUP_COLS,
        calibrate_on=None,
        coverage: float = DEFAULT_COVERAGE,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if device not in native.DEVICES:
            raise ValueError(f"device must be one of {native.DEVICES}, got {device!r}")
        if int(max_bag_lookups) < 1:
            raise ValueError(f"max_bag_lookups must be >= 1, got {max_bag_lookups}")
        if not isinstance(plan, Plan):
            raise TypeError(f"plan must be an updlrm.partition.Plan, got {type(plan).__name__}")
        if len(weights) != len(plan.tables):
            raise ValueError(f"{len(weights)} weight tensors for a plan of {len(plan.tables)} tables")
        t_start = time.perf_counter()
        ws = [_as_weight(w, t) for t, w in enumerate(weights)]
        mod = native.native_module(device)
        max_abs, finite = mod.table_stats(ws)  # one native pass: max|w| and the NaN/inf check
        if not finite.all():
            raise ValueError(f"weights[{int(np.argmin(finite))}] contains NaN or infinity")
        specs = [TableSpec(plan.tables[t].name, int(w.shape[0]), int(w.shape[1])) for t, w in enumerate(ws)]
        validate_plan(plan, specs)  # PlanError naming the table whose shape differs
        if DTYPE_BYTES[plan.dtype] != DTYPE_BYTES[dtype]:
            raise PlanError(
                f"the plan was sized for {plan.dtype} rows ({DTYPE_BYTES[plan.dtype]} B per element) but dtype is "
                f"{dtype!r} ({DTYPE_BYTES[dtype]} B): make the plan with dtype={dtype!r} "
                f"(make_plan(..., dtype={dtype!r}) or `updlrm partition --dtype {dtype}`)"
            )

        self.plan = plan
        self.dtype = dtype
        self.device = device
        self.max_bag_lookups = int(max_bag_lookups)
        self.nr_tasklets = int(plan.topology.nr_tasklets)
        self.dims = [int(w.shape[1]) for w in ws]
        self._abi = native.abi(mod)  # sizes and codes of updlrm_abi.h as the module was built
        self._layout = plan_layout(plan, self._abi)
        if dtype != "fp32":
            counts = getattr(calibrate_on, "counts", calibrate_on)  # an AccessProfile or a list
            self.quant = Quantization.build(ws, dtype, self.max_bag_lookups, quant, group_cols, counts, coverage)
            col_scale = self.quant.col_scale
            # one scale per table when there is one (the int32 fixed point's historical attribute)
            self.scales = (np.array([self.quant.table_scales(t)[0] if d else 1.0 for t, d in enumerate(self.dims)])
                           if quant == "table" else None)
        else:
            self.quant = None
            self.scales = None
            col_scale = np.zeros(0)
        self.last_stats: BatchStats | None = None
        self.timeline: Timeline | None = None
        self._inflight = None  # the batch lookup_many has on the DPUs
        image = image_spec(plan, self._layout, dtype, col_scale if self.quant is not None else None,
                           float(self.quant.limit) if self.quant is not None else 0.0, self._abi)
        prepare_s = time.perf_counter() - t_start

        path = kernel_path if kernel_path is not None else native.kernel_path(device, self.nr_tasklets, mod)
        try:
            self._rt = mod.Runtime(path, plan.topology.nr_dpus, native.PROFILES[device])
        except RuntimeError as exc:
            raise NativeError(str(exc)) from exc
        try:
            load = _load_with_progress(self._rt, ws, image, self._layout.shard_spec(dtype, self._abi),
                                       f"loading {plan.topology.nr_dpus} DPUs")
            self._rt.set_plan(self._layout.native_spec(dtype, col_scale, self._abi))
        except Exception as exc:
            self._rt.close()
            raise NativeError(f"loading the tables into DPU MRAM: {exc}") from exc
        self.kernel_path = path
        ends = np.zeros(plan.topology.nr_dpus, dtype=np.int64)
        if self._layout.shard_dpu.size:
            np.maximum.at(ends, self._layout.shard_dpu,
                          self._layout.shard_mram_offset + self._layout.shard_nr_rows * self._layout.shard_row_bytes)
        self.load_stats = {
            "prepare_s": prepare_s,  # weight checks, validate_plan, plan_layout, row mapper, image spec
            "open_s": self._rt.open_seconds,
            "load_tables_s": load["seconds"],  # images built window by window and written to MRAM
            "build_images_s": load["build_s"],  # of which building the windows from the weights
            "total_s": time.perf_counter() - t_start,
            "mram_bytes_per_dpu": ends.tolist(),
        }

    # ---- lookups ---------------------------------------------------------------------------
    def _prepare(self, indices, offsets, batch_size: int):
        """Checks of the batch's shape; ids and offsets values are checked by the native packer."""
        if self._rt is None or self._rt.closed:
            raise NativeError("this PimEmbedding is closed")
        B = int(batch_size)
        T = len(self.dims)
        idx = np.ascontiguousarray(np.asarray(indices), dtype=np.int64)
        offs = np.ascontiguousarray(np.asarray(offsets), dtype=np.int64)
        if idx.ndim != 1:
            raise InvalidBatchError(f"indices must be 1-D, got shape {idx.shape}")
        if offs.shape != (T * B + 1,):
            raise InvalidBatchError(f"offsets has shape {offs.shape}, expected ({T * B + 1},) = T*B+1 for T={T}, B={B}")
        if self.dtype != "fp32" and T * B > 0:
            lens = np.diff(offs)
            longest = int(lens.max())
            if longest > self.max_bag_lookups:
                k = int(np.argmax(lens))
                raise InvalidBatchError(
                    f"table {k // B}, sample {k % B}: bag of {longest} lookups exceeds max_bag_lookups="
                    f"{self.max_bag_lookups} of the {self.dtype} scale"
                )
        return idx, offs, B

    def _pack(self, idx, offs, B):
        """Pack one batch; raises InvalidBatchError / PlanError for what the packer refused."""
        t0 = time.perf_counter()
        pb = self._rt.pack(idx, offs, B)
        call_s = time.perf_counter() - t0
        err = pb.error
        if err is not None:
            stats = BatchStats()
            stats.add("pack", call_s, "measured", native_s=pb.pack_s, launches=0)
            self._raise(err, stats)
        return pb, call_s

    def _merge(self, pb, B, r: dict, call_s: float) -> np.ndarray:
        stats = BatchStats()
        err = r.get("error")
        if err is None:
            out = np.empty((B, self._layout.width), dtype=np.float32)
            r["merge_s"] = self._rt.merge(pb, out)
        else:
            out = None
            r["merge_s"] = 0.0
        self._record(stats, r, call_s, B)
        self._rt.give_back(pb)
        if err is not None:
            self._raise(err, stats)  # last_stats keeps the previous good batch's
        self.last_stats = stats
        return out

    def lookup_flat(self, indices, offsets, batch_size: int) -> np.ndarray:
        """Pooled embeddings of all tables side by side: float32 [B, W], W = sum of dims."""
        idx, offs, B = self._prepare(indices, offsets, batch_size)
        pb, call_s = self._pack(idx, offs, B)
        self._rt.start(pb)
        r = self._rt.finish(pb)
        return self._merge(pb, B, r, call_s)

    def lookup_many(self, batches: Iterable, return_exceptions: bool = False) -> Iterator:
        """Pooled embeddings [B, W] of a stream of batches, two in flight.

        ``batches``: an iterable of ``(indices, offsets, batch_size)``; a ``None`` in it flushes (the
        batches in flight are finished and yielded before the next one is taken: a server feeding
        the stream yields None when its queue runs dry). While the DPUs run batch n
        (asynchronous launch), the host packs batch n+1 and merges batch n-1; results come back in
        order. A batch that fails (bad ids, a DPU fault) fails alone: with ``return_exceptions``
        its exception is yielded in its place and the stream goes on, else it is raised there.
        ``self.timeline`` records each stage's start and end (perf_counter seconds) per batch.
        """
        self.timeline = Timeline()
        tl = self.timeline
        it = iter(batches)

        def merge(d):
            dn, dpb, dB, dcall, r = d
            t0 = time.perf_counter()
            try:
                item = self._merge(dpb, dB, r, dcall)
            except Exception as exc:  # noqa: BLE001 - handed to the caller in order
                item = exc
            tl.add(dn, "merge", t0, time.perf_counter())
            if isinstance(item, Exception) and not return_exceptions:
                raise item
            return item

        try:
            yield from self._pipeline(it, tl, merge, return_exceptions)
        finally:  # the caller stopped early: never leave a batch on the DPUs
            if self._inflight is not None and self._rt is not None and not self._rt.closed:
                self._rt.finish(self._inflight)
            self._inflight = None

    def _pipeline(self, it, tl, merge, return_exceptions):
        running = None  # (n, pb, B, call_s, t_start): on the DPUs
        done = None  # (n, pb, B, call_s, result): pulled, waiting for its merge
        n = 0
        while True:
            packed = None  # 1. pack batch n while the DPUs run batch n-1
            raw = next(it, _END)
            if raw is not None and raw is not _END:
                t0 = time.perf_counter()
                try:
                    if isinstance(raw, BaseException):  # a batch the caller already refused
                        raise raw
                    idx, offs, B = self._prepare(*raw)
                    pb, call_s = self._pack(idx, offs, B)
                    packed = (n, pb, B, call_s)
                except Exception as exc:  # noqa: BLE001
                    packed = exc
                tl.add(n, "pack", t0, time.perf_counter())
                n += 1
            if done is not None:  # 2. merge batch n-2, the DPUs still on n-1
                item, done = merge(done), None
                yield item
            if running is not None:  # 3. wait for batch n-1 and pull its partial sums
                rn, rpb, rB, rcall, rt0 = running
                t0 = time.perf_counter()
                r = self._rt.finish(rpb)
                self._inflight = None
                t1 = time.perf_counter()
                tl.add(rn, "dpu", rt0, t1)
                tl.add(rn, "wait", t0, t1)
                done, running = (rn, rpb, rB, rcall, r), None
            if isinstance(packed, Exception):  # 4. a batch that failed to pack comes out in its place
                if done is not None:
                    item, done = merge(done), None
                    yield item
                if not return_exceptions:
                    raise packed
                yield packed
            elif packed is not None:  # 4. start batch n
                t0 = time.perf_counter()
                self._rt.start(packed[1])
                self._inflight = packed[1]
                running = packed + (t0,)
            if raw is None and done is not None:  # flush: nothing new to overlap with
                item, done = merge(done), None
                yield item
            if raw is _END and running is None:
                if done is not None:
                    item, done = merge(done), None
                    yield item
                return

    def lookup(self, indices, offsets, batch_size: int):
        """float32 [B, T, D] when every table has the same dim, else a list of [B, D_t] arrays.

        indices: int64 [N], all tables, table-major; offsets: int64 [T*B+1], bag (t, b) is
        ``indices[offsets[t*B+b] : offsets[t*B+b+1]]``. Ids are trusted (the engine validated them).
        """
        flat = self.lookup_flat(indices, offsets, batch_size)
        if len(set(self.dims)) == 1 and self.dims:
            return flat.reshape(int(batch_size), len(self.dims), self.dims[0])
        return self._split(flat)

    def lookup_list(self, indices, offsets, batch_size: int) -> list[np.ndarray]:
        """One float32 [B, D_t] array per table."""
        return self._split(self.lookup_flat(indices, offsets, batch_size))

    def _split(self, flat: np.ndarray) -> list[np.ndarray]:
        cols = self._layout.col_offsets
        return [flat[:, int(c) : int(c) + d] for c, d in zip(cols, self.dims)]

    # ---- fixed point -----------------------------------------------------------------------
    def pooled_error_bound(self, bag_lookups) -> np.ndarray:
        """Max abs error per element of a pooled bag of ``bag_lookups`` lookups (integer dtypes).

        ``bag_lookups``: a scalar (-> [T], one bound per table) or an array whose first axis is
        the table ([T, ...] -> same shape). Bound (:meth:`Quantization.pooled_error_bound`):
        ``n * e_c + 2**-24 * n * max|w_c|``, the max over the table's columns c; for int32 per
        table ``n * 0.5 / scale_t + 2**-24 * n * max|w_t|``. fp32 plans return zeros (their error
        is fp32 summation rounding, not quantization).
        """
        n = np.asarray(bag_lookups, dtype=np.float64)
        T = len(self.dims)
        if self.quant is not None:
            return self.quant.pooled_error_bound(n)
        if n.ndim and n.shape[0] != T:
            raise ValueError(f"bag_lookups must be a scalar or have {T} rows (tables), got shape {n.shape}")
        return np.zeros(n.shape if n.ndim else (T,))

    #: The name this bound had when int32 was the only integer dtype.
    fixed_point_bound = pooled_error_bound

    # ---- stats and errors --------------------------------------------------------------------
    def _record(self, stats: BatchStats, r: dict, pack_s: float, batch_size: int) -> None:
        """Phases and counters of one batch; ``pack_s``: the pack call's wall time (native part in
        ``r["pack_native_s"]``)."""
        src = DEVICE_SOURCE[self.device]
        L = int(r["nr_launches"])
        push = np.asarray(r["request_push_bytes"], dtype=np.int64)
        pull = np.asarray(r["output_pull_bytes"], dtype=np.int64)
        stats.add("pack", pack_s, "measured", native_s=r["pack_native_s"], launches=L)
        stats.add("cpu_to_dpu", r["cpu_to_dpu_s"], src, request_push_bytes_per_dpu=push.tolist())
        stats.add("kernel", r["kernel_s"], src, launches=L)
        stats.add("dpu_to_cpu", r["dpu_to_cpu_s"] + r["status_s"], src, status_s=r["status_s"],
                  output_pull_bytes_per_dpu=pull.tolist())
        stats.add("merge", r["merge_s"], "measured")
        c = stats.counters
        c["nr_tasklets"] = self.nr_tasklets
        c["dtype"] = self.dtype
        c["nr_launches"] = L
        lookups, bags, elements = r["lookups"], r["bags"], r["elements"]
        c["lookups"] = lookups.sum(axis=0)
        c["bags"] = bags.sum(axis=0)
        c["elements"] = elements.sum(axis=0)
        c["request_bytes"] = r["request_bytes"].sum(axis=0)
        c["output_bytes"] = r["output_bytes"].sum(axis=0)
        ran = r["tasklet_lookups"].shape[0]
        c["lookups_per_tasklet"] = r["tasklet_lookups"].sum(axis=0)
        ARGS_BYTES, STATUS_BYTES = self._abi.launch_args_bytes, self._abi.status_bytes
        c["pushed_bytes"] = ARGS_BYTES * ran + r["request_bytes"][:ran].sum(axis=0)
        c["pulled_bytes"] = STATUS_BYTES * ran + r["output_bytes"][:ran].sum(axis=0)
        c["push_lengths"] = np.array([x for p in push for x in (ARGS_BYTES, int(p)) if x > 0], dtype=np.int64)
        c["pull_lengths"] = np.array([x for p in pull for x in (STATUS_BYTES, int(p)) if x > 0], dtype=np.int64)
        if self.device == "emulator":
            for k in ("dma_read_ops", "dma_read_bytes", "dma_write_ops", "dma_write_bytes"):
                c[k] = r[k].sum(axis=0)
            c["emu_wall_ns"] = r["emu_wall_ns"].sum(axis=0)
            c["emu_modeled_cycles"] = r["modeled_cycles"].sum(axis=0)
            c["wram_static_bytes"] = r["wram_static_bytes"].max(axis=0) if r["wram_static_bytes"].size else None
            c["wram_heap_peak_bytes"] = r["wram_heap_peak_bytes"].max(axis=0) if r["wram_heap_peak_bytes"].size else None
        else:
            c["measured_cycles"] = r["kernel_cycles"].sum(axis=0)
        if L > 1 and self.device == "emulator" and r["dma_read_ops"].shape[0] == L:
            c["launches"] = [
                {
                    "lookups": lookups[i], "bags": bags[i], "elements": elements[i],
                    "dma_read_ops": r["dma_read_ops"][i], "dma_read_bytes": r["dma_read_bytes"][i],
                    "dma_write_ops": r["dma_write_ops"][i], "dma_write_bytes": r["dma_write_bytes"][i],
                    "lookups_per_tasklet": r["tasklet_lookups"][i],
                }
                for i in range(L)
            ]

    def _raise(self, err: dict, stats: BatchStats | None = None) -> None:
        """Raise the error of a failed batch; its (partial) stats ride on the exception as ``.stats``."""
        kind = err["kind"]
        if kind in ("fault", "kernel"):
            dpu, tasklet = int(err["dpu"]), int(err["tasklet"])
            exc: Exception = DpuFaultError(
                f"DPU {dpu} tasklet {tasklet}: {err['reason']}" if kind == "fault" else err["message"],
                dpu=dpu, tasklet=tasklet, reason=str(err["reason"]),
            )
        elif kind == "input":
            exc = InvalidBatchError(err["message"])
        elif kind in ("pack", "plan"):
            exc = PlanError(err["message"])
        else:
            exc = NativeError(err["message"])
        exc.stats = stats
        raise exc

    # ---- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the DPUs. Idempotent."""
        rt = getattr(self, "_rt", None)
        if rt is not None:
            rt.close()

    def __enter__(self) -> "PimEmbedding":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


@dataclass
class Timeline:
    """Stage intervals of a pipelined run: ``events`` holds (batch, stage, start_s, end_s) with
    stages "pack" (host), "dpu" (push + launch until the wait returned), "wait" (the host blocked
    on the DPUs), "merge" (host); times are time.perf_counter() seconds."""

    events: list = field(default_factory=list)

    def add(self, batch: int, stage: str, t0: float, t1: float) -> None:
        self.events.append((int(batch), stage, float(t0), float(t1)))

    def stage_seconds(self) -> dict:
        out: dict = {}
        for _, st, t0, t1 in self.events:
            out[st] = out.get(st, 0.0) + (t1 - t0)
        return out

    def wall_seconds(self) -> float:
        if not self.events:
            return 0.0
        return max(e[3] for e in self.events) - min(e[2] for e in self.events)
