"""The ``pim`` backend: embedding lookups on (emulated) UPMEM DPUs through :mod:`updlrm.pim`.

At construction it places the model's tables with :func:`updlrm.partition.make_plan` (or checks a
given :class:`~updlrm.partition.Plan` against the model's table shapes) and copies the weights
into DPU MRAM via :class:`updlrm.pim.PimEmbedding`; later changes to the model's embedding
parameters are not seen. The MLPs run on the CPU with the model's parameters.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from updlrm.batch import Batch
from updlrm.errors import BackendUnavailableError, InvalidBatchError
from updlrm.stats import BatchStats

from .base import Backend

DTYPES = ("fp32", "int32", "int16", "int8")
DEVICES = ("emulator", "simulator", "hw")
#: Default topology when neither nr_dpus nor a plan is given.
DEFAULT_NR_DPUS = 64
DEFAULT_NR_TASKLETS = 16


class PimBackend(Backend):
    """Lookups on DPUs. Options: ``nr_dpus`` (default 64; ignored when a Plan is given: the
    plan's topology applies), ``strategy`` (a strategy name or a
    Plan), ``plan`` (a Plan; alternative to passing it as strategy), ``dtype`` ("fp32", or
    "int32" / "int16" / "int8" integer tables: see :mod:`updlrm.pim.quant`), ``device`` ("emulator", or "simulator"/"hw" with the SDK module),
    ``nr_tasklets`` (default 16), ``profile`` (access profile for popularity-aware strategies,
    passed to make_plan), ``max_bag_lookups`` (int32: the largest bag the fixed-point scale
    allows; larger bags are rejected), ``plan_options`` (extra make_plan keyword arguments),
    ``quant`` ("table" or "group" scales), ``group_cols`` (columns per group), ``calibrate_on``
    (an AccessProfile or per-table access counts: hot rows set the scales), ``coverage`` (the share
    of accesses those hot rows cover, default 0.999)."""

    name = "pim"

    def __init__(
        self,
        model,
        nr_dpus: int | None = None,
        strategy="row_uniform",
        plan=None,
        dtype: str = "fp32",
        device: str = "emulator",
        nr_tasklets: int | None = None,
        profile=None,
        max_bag_lookups: int = 4096,
        plan_options: dict | None = None,
        quant: str = "table",
        group_cols: int = 4,
        calibrate_on=None,
        coverage: float | None = None,
        **unused,
    ):
        super().__init__(model)
        self._pim = None
        self._plan = None
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if max_bag_lookups < 1:
            raise ValueError(f"max_bag_lookups must be >= 1, got {max_bag_lookups}")
        from updlrm.partition import Plan, Topology, make_plan, validate_plan

        if isinstance(strategy, Plan):
            if plan is not None:
                raise ValueError("give the plan either as strategy=Plan or as plan=Plan, not both")
            plan, strategy = strategy, None
        tables = list(model.tables)
        if plan is None:
            if not isinstance(strategy, str):
                raise TypeError(f"strategy must be a strategy name or a Plan, got {type(strategy).__name__}")
            topology = Topology(
                nr_dpus=DEFAULT_NR_DPUS if nr_dpus is None else int(nr_dpus),
                nr_tasklets=DEFAULT_NR_TASKLETS if nr_tasklets is None else int(nr_tasklets),
            )
            opts = dict(plan_options or {})
            opts.setdefault("dtype", dtype)  # rows sized in the dtype they are stored in
            plan = make_plan(tables, topology, strategy, profile, **opts)
        else:
            if not isinstance(plan, Plan):
                raise TypeError(f"plan must be an updlrm.partition.Plan, got {type(plan).__name__}")
            # nr_dpus / nr_tasklets only shape a plan built here: a given plan brings its own
            # topology (as in the contract, where nr_dpus defaults to 64 even with a Plan).
            validate_plan(plan, tables)  # PlanError naming the table whose shape differs
        # The plan is checked first so that a wrong plan is reported as such.
        try:
            from updlrm.pim import PimEmbedding
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend 'pim' needs updlrm.pim and its native module, which failed to import ({exc}); "
                f"rebuild with scripts/dev_build.sh"
            ) from exc

        self._plan = plan
        self.dtype = dtype
        self.device = device
        self.max_bag_lookups = int(max_bag_lookups)
        weights = [w.detach().to(torch.float32).cpu().contiguous().numpy() for w in model.embedding_weights()]
        # quantization options only when set (PimEmbedding stand-ins need not know them)
        qopts = {}
        if quant != "table":
            qopts["quant"] = quant
        if group_cols != 4:
            qopts["group_cols"] = group_cols
        if calibrate_on is not None:
            qopts["calibrate_on"] = calibrate_on
        if coverage is not None:
            qopts["coverage"] = coverage
        self._pim = PimEmbedding(weights, plan, dtype=dtype, device=device, max_bag_lookups=self.max_bag_lookups,
                                 **qopts)

    @property
    def plan(self):
        return self._plan

    @property
    def pim(self):
        """The underlying :class:`updlrm.pim.PimEmbedding`."""
        return self._pim

    def check(self, batch: Batch) -> None:
        if self.dtype == "fp32":
            return
        lengths = batch.lengths()  # [T, B]
        longest = int(lengths.max()) if lengths.numel() else 0
        if longest > self.max_bag_lookups:
            t, b = (int(v) for v in np.unravel_index(int(torch.argmax(lengths)), tuple(lengths.shape)))
            raise InvalidBatchError(
                f"table {t} ({self.model.tables[t].name!r}), sample {b}: bag of {longest} lookups exceeds "
                f"max_bag_lookups={self.max_bag_lookups}, the largest bag the {self.dtype} scale "
                f"was chosen for (build the engine with a larger max_bag_lookups)"
            )

    def embed(self, batch: Batch, stats: BatchStats) -> torch.Tensor:
        if self._pim is None:
            raise RuntimeError("the pim backend is closed")
        pooled = self._pim.lookup(batch.indices.numpy(), batch.offsets.numpy(), batch.batch_size)
        pim_stats = self._pim.last_stats
        if pim_stats is not None:
            stats.phases.extend(pim_stats.phases)
            stats.counters.update(pim_stats.counters)
        if isinstance(pooled, list):  # unequal dims cannot happen for a DLRM, but be explicit
            pooled = np.stack(pooled, axis=1)
        return torch.from_numpy(np.ascontiguousarray(pooled, dtype=np.float32))

    def embed_many(self, batches):
        """Two batches in flight (:meth:`updlrm.pim.PimEmbedding.lookup_many`): while the DPUs run
        batch n, the host packs batch n+1 and the caller gets batch n-1 (and runs its MLPs)."""
        if self._pim is None:
            raise RuntimeError("the pim backend is closed")
        from collections import deque

        pending: deque = deque()

        def raw():
            for batch in batches:
                if batch is None:  # flush
                    yield None
                    continue
                pending.append(batch)
                if isinstance(batch, BaseException):
                    yield batch
                    continue
                try:
                    self.check(batch)
                except Exception as exc:  # noqa: BLE001
                    yield exc
                    continue
                yield batch.indices.numpy(), batch.offsets.numpy(), batch.batch_size

        T = len(self.model.tables)
        for out in self._pim.lookup_many(raw(), return_exceptions=True):
            batch = pending.popleft()
            if isinstance(out, BaseException):
                yield (None if isinstance(batch, BaseException) else batch), out, getattr(out, "stats", None)
                continue
            stats = BatchStats()
            st = self._pim.last_stats
            if st is not None:
                stats.phases.extend(st.phases)
                stats.counters.update(st.counters)
            pooled = torch.from_numpy(out).reshape(batch.batch_size, T, -1)
            yield batch, pooled, stats

    def pooled_error_bound(self, lengths: torch.Tensor) -> torch.Tensor | None:
        """Integer dtypes: max abs error per element of each bag, ``[T, B]`` float64, from the
        PimEmbedding's quantization bound; None for fp32 (the engine uses a float bound)."""
        if self.dtype == "fp32":
            return None
        lens = lengths.numpy()  # [T, B]
        bound_fn = getattr(self._pim, "pooled_error_bound", None) or self._pim.fixed_point_bound
        bound = np.asarray(bound_fn(lens), dtype=np.float64)
        if bound.ndim == 1:  # one bound per table
            bound = bound[:, None]
        return torch.from_numpy(np.broadcast_to(bound, lens.shape).copy())

    def close(self) -> None:
        if self._pim is not None:
            try:
                self._pim.close()
            finally:
                self._pim = None
