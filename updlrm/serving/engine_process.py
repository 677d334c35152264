"""The engine in a process of its own (``updlrm serve --engine-process``), restarted if it dies.

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
when the pipe closes (the server died).

Crash recovery: if the child dies (e.g. the emulator crashes on some input, or it is killed), only
the batch it was running fails, with ``EngineError("EngineProcessDied", ...)`` naming the exit
code; the death is logged, counted (:attr:`EngineProcess.restarts`, exported as
``updlrm_engine_restarts_total``) and a new child is started in the background. While it loads,
:meth:`EngineProcess.health` says ``restarting`` (``/healthz`` 503, new requests 503 + Retry-After)
and batches already accepted wait for it; then ``ready`` again. Restarts are bounded: more than
``max_restarts`` deaths within ``restart_window_s`` seconds, or a restart that fails to load, make
the engine ``failed`` for good, with the reason.

A hung child (e.g. stopped by SIGSTOP, or stuck in a kernel) is handled the same way: when a batch
runs past the server's deadline the batcher calls :meth:`EngineProcess.abort`, which kills the
child (SIGKILL also ends a stopped process); the batch's requests were already answered 504, and
the death restarts a new child as above.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing as mp
import multiprocessing.connection
import pickle
import signal
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from .batcher import EngineError, MergedBatch
from .loader import LoadedModel, ServeSettings, load_model

log = logging.getLogger("updlrm.serving")


def _child_main(conn, settings: ServeSettings, loader: Callable[[ServeSettings], LoadedModel] = load_model) -> None:
    """Entry point of the engine process: load, then serve batches until "close" or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        model = loader(settings)
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



def _exit_code(process, timeout_s: float = 5.0):
    """The exit code of a dead (or dying) child process, or None if it is not known in time.

    A closed pipe or a ready sentinel comes before the child is reaped, and two threads (the batch
    runner and the death watcher) may both try to reap it: the one that loses sees no child and
    reads None until the winner has stored the code. So wait for the code itself.
    """
    process.join(timeout_s)
    deadline = time.monotonic() + timeout_s
    while process.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return process.exitcode

class _Child:
    """One engine process: the process, the parent's end of its pipe, and what it reported."""

    def __init__(self, ctx, settings: ServeSettings, loader: Callable[[ServeSettings], LoadedModel],
                 generation: int):
        self.generation = generation
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_child_main, args=(child_conn, settings, loader),
                                   name=f"updlrm-engine-{generation}", daemon=True)
        self.process.start()
        child_conn.close()
        self.info: dict = {}

    def wait_loaded(self, timeout_s: Optional[float]) -> None:
        """Block until the child has loaded its model; raise RuntimeError with the reason if not."""
        if timeout_s is not None and not self.conn.poll(timeout_s):
            self.kill()
            raise RuntimeError(f"engine process did not load the model in {timeout_s} s")
        try:
            status, payload = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            raise RuntimeError(f"engine process exited while loading (exit code {self.process.exitcode})") from None
        if status != "ready":
            self.process.join(10)
            raise RuntimeError(payload)
        self.info = payload

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class EngineProcess:
    """Parent side: starts the child, waits for it to load, proxies batches, restarts a dead child.

    Not thread-safe for batches: call :meth:`run_batch` from one thread (the server's engine
    thread). ``loader`` runs in the child (a module-level function: ``spawn`` pickles it by name).
    ``max_restarts`` deaths are tolerated within any ``restart_window_s`` seconds; one more makes
    the engine failed for good. ``load_timeout_s`` bounds each (re)load (None: no bound).
    """

    def __init__(self, settings: ServeSettings, load_timeout_s: float | None = None,
                 loader: Callable[[ServeSettings], LoadedModel] = load_model,
                 max_restarts: int | None = None, restart_window_s: float | None = None):
        self._ctx = mp.get_context("spawn")
        self._settings = settings
        self._loader = loader
        self._load_timeout_s = load_timeout_s
        self.max_restarts = int(settings.engine_max_restarts if max_restarts is None else max_restarts)
        self.restart_window_s = float(settings.engine_restart_window_s if restart_window_s is None
                                      else restart_window_s)
        if self.max_restarts < 0 or not self.restart_window_s > 0:
            raise ValueError(f"max_restarts must be >= 0 and restart_window_s > 0, got {self.max_restarts}, "
                             f"{self.restart_window_s}")
        self._lock = threading.Lock()  # one batch (or close) at a time
        self._cond = threading.Condition()  # guards the fields below
        self._status = "restarting"  # ready | restarting (a new child loads) | failed | closed
        self._reason: Optional[str] = None
        self._deaths: collections.deque[float] = collections.deque()  # monotonic times, in the window
        self.restarts = 0  # new children started after a death
        self._loading: Optional[_Child] = None  # a child being (re)loaded, so close() can kill it
        self._restarter: Optional[threading.Thread] = None
        self._stale: list[_Child] = []  # dead children whose pipes the engine thread closes
        self._abort_reason: Optional[str] = None  # set by abort() until the killed child's death is handled
        child = _Child(self._ctx, settings, loader, generation=0)
        try:
            child.wait_loaded(load_timeout_s)
        except RuntimeError:
            child.kill()
            raise
        self.info: dict = child.info
        self._child = child
        self._status = "ready"
        self._watch(child)

    # -- health -----------------------------------------------------------------------------------
    def health(self) -> tuple[str, Optional[str]]:
        """``(status, reason)``: ``("ready", None)``; ``("restarting", why)`` while a new
        child loads; ``("failed", why)`` once restarts are exhausted or a restart failed."""
        with self._cond:
            return self._status, self._reason

    @property
    def failure(self) -> Optional[str]:
        """Why the engine is unusable for good, or None (ready, or restarting)."""
        status, reason = self.health()
        return reason if status == "failed" else None

    # -- death and restart ------------------------------------------------------------------------
    def _watch(self, child: _Child) -> None:
        """A daemon thread noticing the child's death even when no batch is running."""

        def wait() -> None:
            mp.connection.wait([child.process.sentinel])
            reason = f"engine process exited (exit code {_exit_code(child.process)})"
            aborted = self._abort_reason
            self._died(child.generation, f"{reason}, killed as stuck: {aborted}" if aborted else reason)

        threading.Thread(target=wait, name=f"updlrm-engine-watch-{child.generation}", daemon=True).start()

    def _died(self, generation: int, reason: str) -> None:
        """Record the death of child ``generation`` (once) and start a new one if the bound allows."""
        with self._cond:
            if self._status != "ready" or self._child.generation != generation:
                return  # already handled (the watcher and run_batch both report a death), or closing
            self._abort_reason = None
            now = time.monotonic()
            self._stale.append(self._child)
            self._deaths.append(now)
            while self._deaths and self._deaths[0] < now - self.restart_window_s:
                self._deaths.popleft()
            if len(self._deaths) > self.max_restarts:
                self._status = "failed"
                self._reason = (f"{reason}; not restarted: {len(self._deaths)} engine process deaths within "
                                f"{self.restart_window_s:g} s (at most {self.max_restarts} restarts allowed)")
                log.error("engine failed for good: %s", self._reason)
                self._cond.notify_all()
                return
            self.restarts += 1
            self._status, self._reason = "restarting", f"restarting the engine process after: {reason}"
            log.error("%s; starting a new engine process (restart %d, %d death(s) in the last %g s, limit %d)",
                      reason, self.restarts, len(self._deaths), self.restart_window_s, self.max_restarts)
            self._restarter = threading.Thread(target=self._restart, args=(generation + 1, reason),
                                               name="updlrm-engine-restart", daemon=True)
            self._restarter.start()

    def _restart(self, generation: int, cause: str) -> None:
        t0 = time.perf_counter()
        old = self._child
        if old.process.is_alive():  # (it died; only reap it here)
            old.process.kill()
        old.process.join(5)
        # its pipe is closed by the engine thread (run_batch / close), the only thread that uses it:
        # closed here, its descriptor could be reused while that thread is about to read it
        try:
            child = _Child(self._ctx, self._settings, self._loader, generation)
            with self._cond:
                if self._status != "restarting":  # closed meanwhile
                    child.kill()
                    return
                self._loading = child
            child.wait_loaded(self._load_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the engine is failed, with the reason
            with self._cond:
                if self._status == "restarting":
                    self._status = "failed"
                    self._reason = f"the engine process could not be restarted ({type(exc).__name__}: {exc}) " \
                                   f"after: {cause}"
                    log.error("engine failed for good: %s", self._reason)
                self._loading = None
                self._cond.notify_all()
            return
        with self._cond:
            self._loading = None
            if self._status != "restarting":  # closed while loading
                child.kill()
                return
            self._child, self._status, self._reason = child, "ready", None
            self._cond.notify_all()
        self._watch(child)
        log.warning("engine process restarted in %.2f s; serving again", time.perf_counter() - t0)

    def abort(self, reason: str) -> None:
        """Kill the running child because it is stuck (``reason`` says why); the death is handled
        as any other: the batch in flight fails and a new child is started."""
        with self._cond:
            if self._status != "ready":
                return
            child = self._child
            self._abort_reason = reason
        log.error("killing engine process %s: %s", child.process.pid, reason)
        try:
            child.process.kill()
        except (OSError, ValueError):
            pass

    # -- batches ----------------------------------------------------------------------------------
    def run_batch(self, merged: MergedBatch) -> tuple[np.ndarray, Any]:
        """Run one batch in the child: probabilities float32 [B] and its stats. Waits for a
        restarting child; raises ``EngineError("EngineProcessDied")`` if the child dies during the
        batch (which starts a new one) or the engine has failed for good."""
        with self._lock:
            with self._cond:
                while self._status == "restarting":
                    self._cond.wait()
                if self._status != "ready":
                    raise EngineError("EngineProcessDied", self._reason or f"engine is {self._status}")
                child = self._child
                stale, self._stale = self._stale, []
            for dead in stale:
                dead.conn.close()
            try:
                child.conn.send(("run", merged.dense, merged.indices, merged.offsets))
                reply = child.conn.recv()
            except (EOFError, OSError) as exc:
                aborted = self._abort_reason
                reason = (f"engine process died during a batch of {merged.batch_size} sample(s) "
                          f"({type(exc).__name__}; exit code {_exit_code(child.process)})")
                if aborted:
                    reason = f"engine process killed as stuck ({aborted})"
                self._died(child.generation, reason)
                raise EngineError("EngineProcessDied", reason) from None
        if reply[0] == "ok":
            return reply[1], reply[2]
        _raise_for(reply[1], reply[2])

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop the child (after its current batch); a child still loading is killed."""
        with self._lock:
            with self._cond:
                status, self._status = self._status, "closed"
                loading, restarter, child = self._loading, self._restarter, self._child
                stale, self._stale = self._stale, []
                self._cond.notify_all()
            if loading is not None:
                loading.kill()
            if restarter is not None:
                restarter.join(timeout_s)
            if status == "ready" and child.process.is_alive():
                try:
                    child.conn.send(("close",))
                    if child.conn.poll(timeout_s):
                        child.conn.recv()
                except (EOFError, OSError):
                    pass
                child.process.join(timeout_s)
                if child.process.is_alive():
                    log.error("engine process did not exit after close; killing it")
            for dead in stale + [child]:
                dead.kill()


def load_model_in_process(settings: ServeSettings,
                          loader: Callable[[ServeSettings], LoadedModel] = load_model) -> LoadedModel:
    """Like :func:`updlrm.serving.loader.load_model`, with the engine in its own process (which
    runs ``loader``, a module-level function) and restarted when it dies."""
    proc = EngineProcess(settings, loader=loader)
    info = proc.info
    return LoadedModel(name=info["name"], backend=info["backend"], n_dense=info["n_dense"], tables=info["tables"],
                       run_batch=proc.run_batch, close=proc.close, plan_summary=info["plan_summary"],
                       engine=proc, health=proc.health, restarts=lambda: proc.restarts)
