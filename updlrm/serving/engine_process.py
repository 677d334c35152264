"""The engine in a process of its own (``updlrm serve --engine-process``).

In the default mode the engine runs in a thread of the server process and shares the GIL with the
HTTP event loop: each slows the other (on the 2-core dev machine a 32-sample predict takes ~2.6 ms
alone but 7-11 ms next to a busy event loop). With ``--engine-process`` the model, the engine and
the DPUs live in a child process started with ``spawn``; the server sends it merged batches over
a pipe and gets back probabilities and stats (``BatchStats``), so HTTP parsing and the engine run
on different cores.

Protocol over one duplex ``multiprocessing`` pipe (the parent calls from its single engine thread,
so requests and answers never interleave)::

    child -> parent   ("ready", info dict) | ("failed", message)           once, after loading
    parent -> child   ("run", dense, indices, offsets)  ->  ("ok", probs, stats) | ("error", kind, message)
    parent -> child   ("close",)                         ->  ("closed",)

The child ignores SIGINT and SIGTERM (the server decides when to stop and says "close"), and exits
when the pipe closes (the server died). If the child dies, the batch in flight and every later one
fail with ``EngineError("EngineProcessDied")`` and ``/healthz`` reports the server failed.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
import signal
import threading
from typing import Any, Optional

import numpy as np

from .batcher import EngineError, MergedBatch
from .loader import LoadedModel, ServeSettings, load_model

log = logging.getLogger("updlrm.serving")


def _child_main(conn, settings: ServeSettings) -> None:
    """Entry point of the engine process: load, then serve batches until "close" or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        model = load_model(settings)
    except Exception as exc:  # noqa: BLE001 - reported to the server, which exits 1
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    conn.send(("ready", {"name": model.name, "backend": model.backend, "n_dense": model.n_dense,
                         "tables": model.tables, "plan_summary": model.plan_summary}))
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                break
            if msg[0] == "close":
                break
            _, dense, indices, offsets = msg
            merged = MergedBatch(dense=dense, indices=indices, offsets=offsets,
                                 row_starts=np.array([0, dense.shape[0]], dtype=np.int64))
            try:
                probs, stats = model.run_batch(merged)
                reply = ("ok", np.asarray(probs, dtype=np.float32), stats)
            except Exception as exc:  # noqa: BLE001 - the batch fails, the engine goes on
                reply = ("error", type(exc).__name__, str(exc))
            try:
                conn.send(reply)
            except (pickle.PicklingError, TypeError, AttributeError):  # stats that do not pickle
                conn.send(reply[:2] + (None,))
    finally:
        try:
            model.close()
        finally:
            try:
                conn.send(("closed",))
            except (OSError, EOFError):
                pass
            conn.close()


def _raise_for(kind: str, message: str):
    """Re-raise an engine exception of the child as the same updlrm error class when there is one
    (so that e.g. InvalidBatchError keeps its meaning for the batcher), else as EngineError."""
    from updlrm import errors

    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, errors.UpdlrmError):
        try:
            raise cls(message)
        except TypeError:
            pass
    raise EngineError(kind, message)


class EngineProcess:
    """Parent side: starts the child, waits for it to load, proxies batches. Not thread-safe: call
    :meth:`run_batch` from one thread (the server's engine thread)."""

    def __init__(self, settings: ServeSettings, load_timeout_s: float | None = None):
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_child_main, args=(child_conn, settings), name="updlrm-engine",
                                   daemon=True)
        self.process.start()
        child_conn.close()
        self._lock = threading.Lock()
        self._dead: Optional[str] = None
        if load_timeout_s is not None and not self._conn.poll(load_timeout_s):
            self.process.kill()
            raise RuntimeError(f"engine process did not load the model in {load_timeout_s} s")
        try:
            status, payload = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"engine process exited while loading (exit code {self.process.exitcode})") from None
        if status != "ready":
            self.process.join(10)
            raise RuntimeError(payload)
        self.info: dict = payload

    @property
    def failure(self) -> Optional[str]:
        """Why the engine process is unusable, or None while it is alive."""
        if self._dead is None and not self.process.is_alive():
            self._dead = f"engine process exited (exit code {self.process.exitcode})"
        return self._dead

    def run_batch(self, merged: MergedBatch) -> tuple[np.ndarray, Any]:
        with self._lock:
            if self.failure:
                raise EngineError("EngineProcessDied", self.failure)
            try:
                self._conn.send(("run", merged.dense, merged.indices, merged.offsets))
                reply = self._conn.recv()
            except (EOFError, OSError) as exc:
                self.process.join(1)
                self._dead = f"engine process died during a batch ({type(exc).__name__}; exit code " \
                             f"{self.process.exitcode})"
                raise EngineError("EngineProcessDied", self._dead) from None
        if reply[0] == "ok":
            return reply[1], reply[2]
        _raise_for(reply[1], reply[2])

    def close(self, timeout_s: float = 60.0) -> None:
        with self._lock:
            if self.process.is_alive():
                try:
                    self._conn.send(("close",))
                    if self._conn.poll(timeout_s):
                        self._conn.recv()
                except (EOFError, OSError):
                    pass
                self.process.join(timeout_s)
                if self.process.is_alive():
                    log.error("engine process did not exit after close; killing it")
                    self.process.kill()
                    self.process.join(5)
            self._conn.close()


def load_model_in_process(settings: ServeSettings) -> LoadedModel:
    """Like :func:`updlrm.serving.loader.load_model`, with the engine in its own process."""
    proc = EngineProcess(settings)
    info = proc.info
    return LoadedModel(name=info["name"], backend=info["backend"], n_dense=info["n_dense"], tables=info["tables"],
                       run_batch=proc.run_batch, close=proc.close, plan_summary=info["plan_summary"],
                       engine=proc, failure=lambda: proc.failure)
