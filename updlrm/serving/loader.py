"""What the server serves: its settings, and loading a model + engine from a name or a checkpoint.

``load_model(settings)`` builds a :class:`LoadedModel`: the engine (``updlrm.engine.Engine`` on
the chosen backend, with the plan when one is given), the model's input shape (dense width,
tables) for request validation, and ``run_batch``, the one function the batcher calls in the
engine thread.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

log = logging.getLogger("updlrm.serving")

#: Backends the server accepts (the engine may still refuse one this machine lacks).
BACKENDS = ("cpu", "cuda", "pim")


@dataclass
class ServeSettings:
    """Everything ``updlrm serve`` takes. Times in milliseconds, sizes in samples."""

    model: str = "tiny"  # named config (updlrm.configs.names()) or a checkpoint path
    #: checkpoint files only: what the tensors leave open, passed to ``updlrm.model_io.load``
    #: (``interaction``, ``interaction_itself``, ``final_sigmoid``, ``pooling``)
    model_options: dict = field(default_factory=dict)
    backend: str = "cpu"
    plan: Optional[str] = None  # plan file (pim); else ``strategy`` over ``nr_dpus``
    row_scale: float = 1.0  # named configs only
    max_rows: Optional[int] = None  # named configs only
    seed: Optional[int] = None  # named configs only: parameter seed (default: the config's)
    nr_dpus: int = 64
    strategy: str = "row_uniform"
    dtype: str = "fp32"
    max_batch: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 1024  # samples waiting before 503
    max_request_samples: int = 1024
    max_lookups_per_bag: int = 4096
    max_body_bytes: int = 16 << 20
    host: str = "127.0.0.1"
    port: int = 8000
    #: torch intra-op threads for the engine (0: leave torch's default). Small serving batches gain
    #: little from intra-op parallelism, and spinning OpenMP workers compete with the HTTP event
    #: loop for cores: on this 2-core machine 1 thread made a B=1 predict 14x faster under load.
    torch_threads: int = 1
    #: --engine-process only: a dead engine process is restarted unless more than
    #: ``engine_max_restarts`` deaths fall within ``engine_restart_window_s`` seconds
    engine_max_restarts: int = 3
    engine_restart_window_s: float = 60.0
    extra_engine_args: dict = field(default_factory=dict)

    def check(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("max_batch", "max_queue", "max_request_samples", "max_lookups_per_bag", "max_body_bytes",
                     "nr_dpus"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.torch_threads < 0:
            raise ValueError(f"torch_threads must be >= 0, got {self.torch_threads}")
        if self.engine_max_restarts < 0:
            raise ValueError(f"engine_max_restarts must be >= 0, got {self.engine_max_restarts}")
        if not self.engine_restart_window_s > 0:
            raise ValueError(f"engine_restart_window_s must be > 0, got {self.engine_restart_window_s}")
        if self.max_queue < self.max_request_samples:
            raise ValueError(f"max_queue ({self.max_queue}) must be >= max_request_samples "
                             f"({self.max_request_samples}), or a full-size request could never be queued")


#: ``--model-option`` keys, with the values each accepts (see ``updlrm.model_io.load``).
MODEL_OPTIONS = {
    "interaction": ("dot", "cat"),
    "interaction_itself": (True, False),
    "final_sigmoid": (True, False),
    "pooling": ("sum", "mean"),
}


def parse_model_options(items) -> dict:
    """``["interaction=cat", "final_sigmoid=false"]`` -> ``{"interaction": "cat", "final_sigmoid":
    False}``; raises ValueError naming a bad key or value."""
    out: dict = {}
    for item in items or ():
        key, sep, raw = str(item).partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or key not in MODEL_OPTIONS:
            raise ValueError(f"--model-option {item!r}: expected KEY=VALUE with KEY one of {', '.join(MODEL_OPTIONS)}")
        choices = MODEL_OPTIONS[key]
        if True in choices:
            value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(raw.lower())
        else:
            value = raw if raw in choices else None
        if value is None:
            shown = "true|false" if True in choices else "|".join(choices)
            raise ValueError(f"--model-option {key}={raw!r}: expected {shown}")
        out[key] = value
    return out


@dataclass
class LoadedModel:
    """A model ready to serve. ``run_batch(merged) -> (probabilities [B], BatchStats | None)``."""

    name: str
    backend: str
    n_dense: int
    tables: list  # TableSpec (name, rows, dim) per table, in order
    run_batch: Callable[[Any], tuple]
    close: Callable[[], None] = lambda: None
    plan_summary: Optional[dict] = None
    engine: Any = None
    #: the engine's own health: ("ready", None), ("loading", why) while it restarts (its process
    #: died and a new one loads), ("failed", why) when it is unusable for good
    health: Callable[[], tuple] = lambda: ("ready", None)
    #: how many times the engine was restarted after dying
    restarts: Callable[[], int] = lambda: 0
    #: batches the batcher may hand to ``run_batch`` at once (2: the engine pipelines them)
    max_inflight: int = 1


def plan_summary(plan) -> Optional[dict]:
    """A short JSON-able description of a plan (``None`` without one)."""
    if plan is None:
        return None
    topo = plan.topology
    return {
        "strategy": plan.strategy,
        "nr_dpus": int(topo.nr_dpus),
        "nr_ranks": int(topo.nr_ranks),
        "nr_groups": len(plan.groups),
        "nr_cache_groups": sum(1 for g in plan.groups if getattr(g, "kind", "base") == "cache"),
        "nr_shards": len(plan.shards),
        "dpus_used": len({s.dpu for s in plan.shards}),
        "request_bytes": int(plan.request_bytes),
        "output_bytes": int(plan.output_bytes),
    }


def build_dlrm(settings: ServeSettings):
    """The torch DLRM for ``settings.model``: a named config or a checkpoint file.

    For a file, every setting the loader had to assume rather than read (pooling, a final
    sigmoid, an interaction inferred from widths; ``model.import_notes``) is logged as a warning,
    so that the server's log says what it is serving."""
    from updlrm import configs
    from updlrm.model import DLRM

    if os.path.exists(settings.model):
        try:
            from updlrm import model_io
        except ImportError:
            raise ValueError(f"--model {settings.model!r} is a file, but checkpoint loading "
                             "(updlrm.model_io) is not available in this build") from None
        try:
            model = model_io.load(settings.model, **settings.model_options)
        except model_io.CheckpointError as exc:
            if any(f"{key}=" in str(exc) for key in MODEL_OPTIONS):
                raise model_io.CheckpointError(f"{exc} (updlrm serve: --model-option KEY=VALUE)") from None
            raise
        for note in getattr(model, "import_notes", ()):
            log.warning("model %s: %s", settings.model, note)
        return model
    if settings.model_options:
        raise ValueError(f"model_options {sorted(settings.model_options)} apply to checkpoint files; "
                         f"--model {settings.model!r} is not a file")
    if settings.model not in configs.names():
        raise ValueError(f"--model {settings.model!r} is neither a file nor a named config; "
                         f"named configs: {', '.join(configs.names())}")
    config = configs.get(settings.model, row_scale=settings.row_scale, max_rows=settings.max_rows, seed=settings.seed)
    return DLRM(config)


def _timing_model_phases(engine) -> Optional[Callable[[Any], None]]:
    """For a pim engine on the emulator: a function adding the UPMEM timing model's phases
    (source ``modeled``) to a batch's stats, so /metrics shows modeled DPU time next to the
    emulator's wall time. None when the engine has no plan or the model is unavailable."""
    plan = getattr(engine, "plan", None)
    if plan is None:
        return None
    try:
        from updlrm.timing_model import TimingModel, counters_from_dict

        model = TimingModel.default()
    except Exception as exc:  # noqa: BLE001 - optional: serving works without modeled phases
        log.warning("no modeled DPU phases: timing model unavailable (%s: %s)", type(exc).__name__, exc)
        return None
    failed = []

    def add(stats) -> None:
        if failed or stats is None or any(p.source == "modeled" for p in stats.phases):
            return
        try:
            kernels, transfers = counters_from_dict(stats.counters)
            model.model_batch(plan.topology, kernels, transfers).add_to(stats)
        except Exception as exc:  # noqa: BLE001 - say it once, then serve without
            failed.append(exc)
            log.warning("modeled DPU phases disabled: %s: %s", type(exc).__name__, exc)

    return add


def engine_runner(engine) -> Callable[[Any], tuple]:
    """``run_batch`` for an ``updlrm.engine.Engine``: MergedBatch -> (probabilities [B], stats).

    For a pim engine the stats also get the timing model's ``modeled`` DPU phases."""
    import torch

    from updlrm.batch import Batch

    add_modeled = _timing_model_phases(engine)

    def run_batch(merged) -> tuple[np.ndarray, Any]:
        batch = Batch(torch.from_numpy(merged.dense), torch.from_numpy(merged.indices),
                      torch.from_numpy(merged.offsets))
        with torch.inference_mode():
            probs = engine.predict(batch)
        stats = getattr(engine, "last_stats", None)
        if add_modeled is not None:
            add_modeled(stats)
        return probs.detach().cpu().numpy(), stats

    return run_batch


class PipelinedRunner:
    """``run_batch`` for a pim engine with two batches in flight.

    One thread runs ``engine.predict_many`` over a queue: while the DPUs run one batch, the host
    packs the next and runs the MLPs of the one before. ``run_batch`` (called from up to two
    batcher threads at once) queues its batch and waits for its result. When the queue runs dry
    the stream is flushed, so a lone batch never waits for a second one. A batch that fails
    fails alone (its caller gets the exception). Call :meth:`close` before closing the engine.
    """

    _STOP = object()

    def __init__(self, engine, add_modeled=None):
        import queue
        import threading

        self._engine = engine
        self._add_modeled = add_modeled
        self._queue: "queue.Queue" = queue.Queue()
        self._empty = queue.Empty
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="updlrm-pipeline", daemon=True)
        self._thread.start()

    def run_batch(self, merged) -> tuple:
        from concurrent.futures import Future

        if self._closed:
            raise RuntimeError("the engine pipeline is closed")
        fut: Future = Future()
        self._queue.put((merged, fut))
        return fut.result()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(self._STOP)
            self._thread.join(timeout=60)

    def _feed(self, pending):
        import torch

        from updlrm.batch import Batch

        flushed = True
        while True:
            try:
                item = self._queue.get_nowait()
            except self._empty:
                if not flushed:  # finish what is in flight before waiting for more
                    flushed = True
                    yield None
                    continue
                item = self._queue.get()
            if item is self._STOP:
                return
            merged, fut = item
            flushed = False
            pending.append(fut)
            yield Batch(torch.from_numpy(merged.dense), torch.from_numpy(merged.indices),
                        torch.from_numpy(merged.offsets))

    def _main(self) -> None:
        from collections import deque

        pending: deque = deque()
        while True:
            try:
                for out in self._engine.predict_many(self._feed(pending), return_exceptions=True):
                    fut = pending.popleft()
                    if isinstance(out, BaseException):
                        fut.set_exception(out)
                        continue
                    stats = getattr(self._engine, "last_stats", None)
                    if self._add_modeled is not None:
                        self._add_modeled(stats)
                    fut.set_result((out.detach().cpu().numpy(), stats))
                return  # the feed ended: closed
            except Exception as exc:  # noqa: BLE001 - the stream broke: fail its batches, start again
                log.error("engine pipeline: %s: %s", type(exc).__name__, exc)
                while pending:
                    pending.popleft().set_exception(exc)
                if self._closed:
                    return


def load_model(settings: ServeSettings) -> LoadedModel:
    """Build the model and its engine (for pim: allocate and load the DPUs). Slow; call once."""
    settings.check()
    import torch

    from updlrm.engine import Engine

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)

    model = build_dlrm(settings)
    model.eval()
    kwargs = dict(settings.extra_engine_args)
    if settings.backend == "pim":
        if settings.plan:
            from updlrm.partition import load_plan

            kwargs["strategy"] = load_plan(settings.plan)  # the plan fixes the DPU count
        else:
            kwargs["strategy"] = settings.strategy
            kwargs.setdefault("nr_dpus", settings.nr_dpus)
        kwargs.setdefault("dtype", settings.dtype)
    elif settings.plan:
        raise ValueError(f"--plan is for the pim backend; backend is {settings.backend!r}")
    engine = Engine(model, backend=settings.backend, **kwargs)
    config = model.config
    if settings.backend == "pim":  # two batches in flight: the DPUs run one while the host packs the next
        runner = PipelinedRunner(engine, _timing_model_phases(engine))

        def close() -> None:
            runner.close()
            engine.close()

        run_batch, inflight = runner.run_batch, 2
    else:
        run_batch, close, inflight = engine_runner(engine), engine.close, 1
    return LoadedModel(
        name=config.name, backend=settings.backend, n_dense=int(config.n_dense), tables=list(engine.tables),
        run_batch=run_batch, close=close, max_inflight=inflight,
        plan_summary=plan_summary(getattr(engine, "plan", None)), engine=engine)
