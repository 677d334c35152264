"""The inference engine: runs a DLRM model with a chosen embedding backend (cpu, cuda, pim).

::

    model = updlrm.DLRM(updlrm.configs.get("kaggle", row_scale=1e-3))
    with updlrm.Engine(model, backend="pim", nr_dpus=64, strategy="row_uniform") as engine:
        batch = updlrm.batch.random_batch(model.config, batch_size=2048)
        probs = engine.predict(batch)   # [B] click probabilities
        pooled = engine.embed(batch)    # [B, T, d] pooled embeddings
        print(engine.last_stats.to_dict())

Every batch is validated once at the boundary (:func:`updlrm.batch.validate_batch` plus the
backend's own limits); a bad batch raises :class:`updlrm.errors.InvalidBatchError` before
anything runs, leaves ``last_stats`` as it was, and the engine serves the next batch.

Threading: an engine holds a lock around each call, so it is safe to call from one worker thread
at a time (serving does that); calls from several threads are serialised, not parallel.
"""

from __future__ import annotations

import threading
import time

import torch

from updlrm.backends import BACKENDS, make_backend
from updlrm.batch import Batch, validate_batch
from updlrm.stats import BatchStats

__all__ = ["Engine", "FP32_RELATIVE_BOUND"]

#: fp32 pooled embeddings agree with an exact sum within this share of the bag's sum of |w|
#: (the issue's acceptance tolerance), or 2*n*u for long bags (recursive summation, u = 2^-24).
FP32_RELATIVE_BOUND = 1e-5
_FP32_UNIT_ROUNDOFF = 2.0**-24


def _check_finite_weights(model) -> None:
    """Raise ValueError naming the first parameter with a NaN or inf (every backend would serve
    NaN or saturated probabilities). A chunk whose sum is finite has no NaN or inf (both
    propagate through a sum), so the elementwise test runs only on chunks whose sum is not."""
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        for start in range(0, flat.numel(), _FINITE_CHUNK):
            chunk = flat[start : start + _FINITE_CHUNK]
            if bool(torch.isfinite(chunk.sum())):
                continue
            bad = (~torch.isfinite(chunk)).nonzero()
            if len(bad):  # else the sum only overflowed
                first = start + int(bad[0])
                raise ValueError(
                    f"model weight {name!r} {list(param.shape)} holds {float(flat[first])} at flat index "
                    f"{first}; NaN or inf weights are refused (check the checkpoint or the training run)"
                )


#: Elements checked per step by _check_finite_weights (64 MiB of float32).
_FINITE_CHUNK = 1 << 24


class Engine:
    """Serve a :class:`updlrm.DLRM` with one embedding backend.

    Args:
        model: a :class:`updlrm.model.DLRM` (put in eval mode; its parameters are not changed).
        backend: "cpu" (torch EmbeddingBag), "cuda" (CPU-GPU hybrid; see ``cuda_mode``) or "pim".
        nr_dpus: pim: DPUs to place the tables on (default 64). With a Plan, the plan's topology
            applies and ``nr_dpus`` / ``nr_tasklets`` are not used (see ``engine.plan.topology``).
        strategy: pim: a partitioning strategy name (``updlrm.partition.strategy_names()``) or a Plan.
        dtype: pim: "fp32", or "int32" / "int16" / "int8" integer tables summed in int32 on the DPUs
            (scales per table, or per column group with ``quant="group"``; see ``max_bag_lookups``
            and :mod:`updlrm.pim.quant`).
        device: pim: "emulator" (always there), "simulator" or "hw" (need the UPMEM SDK build).
        nr_tasklets: pim: tasklets per DPU (default 16).
        profile: pim: access profile passed to ``make_plan`` for popularity-aware strategies.
        plan: pim: a ready Plan (same as ``strategy=plan``); it must match the model's tables.
        **options: backend extras: ``cuda_mode="hybrid"|"gpu"``, ``cuda_device``,
            ``max_bag_lookups`` (pim integer dtypes, default 4096), ``plan_options`` (dict for
            make_plan), ``quant="table"|"group"``, ``group_cols``, ``calibrate_on`` (an access
            profile or per-table counts: hot rows decide the scales).

    Attributes: ``last_stats`` (:class:`updlrm.stats.BatchStats` of the last successful call),
    ``tables`` (the model's TableSpecs), ``plan`` (pim placement, else None), ``backend_name``.
    """

    def __init__(
        self,
        model,
        backend: str = "cpu",
        nr_dpus: int | None = None,
        strategy="row_uniform",
        dtype: str = "fp32",
        device: str = "emulator",
        nr_tasklets: int | None = None,
        profile=None,
        plan=None,
        **options,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if backend != "pim":
            # The PIM-only options make no sense elsewhere: say so instead of ignoring them.
            given = {
                "nr_dpus": nr_dpus is not None,
                "plan": plan is not None,
                "dtype": dtype != "fp32",
                "device": device != "emulator",
                "nr_tasklets": nr_tasklets is not None,
                "profile": profile is not None,
                "strategy": not (isinstance(strategy, str) and strategy == "row_uniform"),
            }
            wrong = [k for k, v in given.items() if v]
            if wrong:
                raise ValueError(f"option(s) {', '.join(wrong)} only apply to backend='pim', not {backend!r}")
        _check_finite_weights(model)
        self.model = model.eval()
        self.config = model.config
        self.backend_name = backend
        self._lock = threading.Lock()
        self.last_stats: BatchStats | None = None
        self._backend = make_backend(
            backend,
            model,
            nr_dpus=nr_dpus,
            strategy=strategy,
            plan=plan,
            dtype=dtype,
            device=device,
            nr_tasklets=nr_tasklets,
            profile=profile,
            **options,
        )
        self.dtype = dtype if backend == "pim" else "fp32"
        self._plan = self._backend.plan

    # -- properties ---------------------------------------------------------------------------
    @property
    def tables(self) -> list:
        """The model's tables (``updlrm.partition.TableSpec`` each), in order."""
        return list(self.config.tables)

    @property
    def plan(self):
        """The pim backend's placement (``updlrm.partition.Plan``), None for cpu/cuda."""
        return self._plan

    @property
    def backend(self):
        """The backend object (``updlrm.backends.Backend``), e.g. ``engine.backend.pim``."""
        return self._backend

    # -- serving ------------------------------------------------------------------------------
    def validate(self, batch: Batch) -> None:
        """Raise InvalidBatchError if ``batch`` does not fit this model and backend; no side effect."""
        validate_batch(batch, self.config.tables, self.config.n_dense)
        self._backend.check(batch)

    @torch.inference_mode()
    def embed(self, batch: Batch) -> torch.Tensor:
        """Pooled embeddings ``[B, T, d]`` float32 (CPU) of ``batch``; ``last_stats`` gets the
        embedding phases only."""
        with self._lock:
            self._check_open()
            self.validate(batch)
            stats = BatchStats()
            pooled = self._backend.embed(batch, stats)
            pooled = pooled.cpu()
            self._finish(stats, batch)
            return pooled

    @torch.inference_mode()
    def predict(self, batch: Batch) -> torch.Tensor:
        """Click probabilities ``[B]`` float32 (CPU): bottom MLP, embeddings on the backend,
        dot interaction, top MLP. ``last_stats`` gets the embedding phases and ``mlp``."""
        probs, _ = self._run(batch, keep_pooled=False)
        return probs

    @torch.inference_mode()
    def predict_with_pooled(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities ``[B]`` and the pooled embeddings ``[B, T, d]`` of one run (for checks)."""
        probs, pooled = self._run(batch, keep_pooled=True)
        return probs, pooled

    @torch.inference_mode()
    def predict_many(self, batches, return_exceptions: bool = False):
        """Probabilities ``[B]`` of a stream of batches, in order, pipelined where the backend can:
        on ``pim`` two batches are in flight (while the DPUs run batch n, the host packs batch
        n+1 and runs the MLPs of batch n-1). A batch that fails (invalid, a DPU fault) fails
        alone: with ``return_exceptions`` its exception is yielded in its place and the stream goes
        on, else it is raised there. A None in ``batches`` flushes: the batches in flight come out
        before the next is taken. ``last_stats`` follows the batch last yielded. The engine's
        lock is held while the generator runs (other callers wait until it is exhausted or closed).
        """
        with self._lock:
            self._check_open()

            def validated():
                for batch in batches:
                    if batch is None:  # flush (see PimEmbedding.lookup_many)
                        yield None
                        continue
                    try:
                        self.validate(batch)
                    except Exception as exc:  # noqa: BLE001 - handed on in order
                        yield exc
                        continue
                    yield batch

            for batch, pooled, stats in self._backend.embed_many(validated()):
                if isinstance(pooled, BaseException):
                    if not return_exceptions:
                        raise pooled
                    yield pooled
                    continue
                t0 = time.perf_counter()
                x = self._backend.bottom(batch.dense)
                bottom_s = time.perf_counter() - t0
                probs = self._backend.dense_part(x, pooled, stats, bottom_s)
                self._finish(stats, batch)
                yield probs

    def _run(self, batch: Batch, keep_pooled: bool):
        with self._lock:
            self._check_open()
            self.validate(batch)
            stats = BatchStats()
            t0 = time.perf_counter()
            x = self._backend.bottom(batch.dense)
            bottom_s = time.perf_counter() - t0
            pooled = self._backend.embed(batch, stats)
            probs = self._backend.dense_part(x, pooled, stats, bottom_s)
            self._finish(stats, batch)
            return probs, (pooled.cpu() if keep_pooled else None)

    def _finish(self, stats: BatchStats, batch: Batch) -> None:
        stats.counters.setdefault("batch_size", batch.batch_size)
        stats.counters.setdefault("lookups", batch.nr_lookups)
        stats.counters.setdefault("backend", self.backend_name)
        self.last_stats = stats

    def _check_open(self) -> None:
        if self._backend is None:
            raise RuntimeError("this Engine is closed")

    # -- accuracy bounds ----------------------------------------------------------------------
    @torch.inference_mode()
    def pooled_error_bound(self, batch: Batch) -> torch.Tensor:
        """Max abs difference ``[B, T, 1]`` (float64) this engine's pooled embeddings may have
        from the exact sums of a validated ``batch``.

        fp32: ``max(1e-5, 2*n*2^-24) * sum_i |w_i|`` per bag of n lookups (reordered fp32 sums);
        integer dtypes (pim): the PimEmbedding's quantization bound for a bag of n lookups, plus the fp32 term.
        """
        validate_batch(batch, self.config.tables, self.config.n_dense)
        lengths = batch.lengths().to(torch.float64)  # [T, B]
        abs_sums = []
        for t, bag in enumerate(self.model.embeddings):
            ids, offs = batch.table(t)
            # |w| of the looked-up rows only (not the whole table: full Kaggle's would be 4 GiB),
            # summed per bag in the same order as embedding_bag over |W| would
            rows = bag.weight.detach().index_select(0, ids).abs().double()
            picks = torch.arange(ids.numel(), dtype=torch.int64)
            abs_sums.append(torch.nn.functional.embedding_bag(picks, rows, offs, mode="sum").amax(dim=1))
        abs_sum = torch.stack(abs_sums, dim=0)  # [T, B], largest per-element sum of |w| in each bag
        rel = torch.clamp(2.0 * lengths * _FP32_UNIT_ROUNDOFF, min=FP32_RELATIVE_BOUND)
        bound = rel * abs_sum
        fixed = getattr(self._backend, "pooled_error_bound", lambda _l: None)(batch.lengths())
        if fixed is not None:
            bound = bound + fixed.to(torch.float64)
        return bound.T.unsqueeze(2).contiguous()

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend (DPUs, GPU memory); idempotent."""
        with self._lock:
            if self._backend is not None:
                try:
                    self._backend.close()
                finally:
                    self._backend = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        extra = ""
        if self.plan is not None:
            extra = f", nr_dpus={self.plan.topology.nr_dpus}, strategy={self.plan.strategy!r}, dtype={self.dtype!r}"
        return f"Engine({self.config.name!r}, backend={self.backend_name!r}{extra})"
