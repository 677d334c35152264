"""Dynamic batcher: merges concurrent predict requests into engine batches and splits the answers.

Requests (already validated, see :mod:`updlrm.serving.schema`) wait in a bounded FIFO queue. The
batcher closes a batch when ``max_batch`` samples are queued or when the oldest request has
waited ``max_wait_s``, whichever comes first, and only ever takes whole requests (a request larger
than ``max_batch`` runs as a batch of its own). One batch runs at a time in the single engine
thread while the event loop keeps accepting requests and filling the next batch (overlap); if
the engine is still busy when a batch is due, the batch keeps growing up to ``max_batch`` until
the engine frees.

Timeline with max_batch=4 (r = request arrival, [..] = engine busy)::

    r1 r2 r3 r4 | r5 r6 ...... (deadline of r5) | r7
    [ batch r1-r4 ]         [ batch r5-r6 ]      [ batch r7 ...

Each request's rows stay together and in order: the merged batch lists samples request by
request (``row_starts``), and the predictions ``[B]`` are cut back at the same boundaries, so
samples of different requests never mix.

A second batch can be formed while one runs: the loop keeps filling the queue while the engine
works and takes the next batch as soon as an engine slot frees. ``max_inflight`` engine slots
(default 1) let an engine that accepts a second batch before the first returns run two at once;
``run_batch`` must then be safe to call from that many executor threads. Beyond those, one *full*
batch (``max_batch`` samples) is staged: handed to the executor while the engine is busy, so the
engine thread starts it the moment the running one returns, without waiting for the event loop
(which, flooded with requests, may take tens of milliseconds per turn). A batch that is not full
keeps growing until a slot frees, as before.

Deadline: a batch the engine has not finished ``batch_timeout_s`` after it started fails all its
requests at once with ``EngineError("EngineTimeout")`` (answered 504), ``on_timeout(reason)`` is
called (the server kills and replaces an engine process there), and :attr:`stuck` gives the
reason until the engine thread returns from it; its engine slot stays taken until then.

Failure containment: a full queue raises :class:`QueueFullError` at once (the HTTP layer answers
503 + Retry-After); an engine exception fails only the requests of the batch it hit (as
:class:`EngineError`), is logged and counted, and the batcher goes on. If the engine rejects a
merged batch as invalid (which validation at the boundary should make impossible), each request
of that batch is retried alone so that one bad request cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .schema import ParsedRequest

log = logging.getLogger("updlrm.serving")


class QueueFullError(RuntimeError):
    """The queue holds too many samples; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ShuttingDownError(RuntimeError):
    """The batcher is closing and accepts no new requests."""


class EngineError(RuntimeError):
    """The engine raised while running the batch that held this request.

    ``kind`` is the exception's class name (e.g. ``DpuFaultError``).
    """

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass
class MergedBatch:
    """Requests merged in the engine's layout.

    ``dense`` float32 [B, n_dense]; ``indices`` int64, table-major; ``offsets`` int64 [T*B+1]
    (table t, sample b: ``indices[offsets[t*B+b]:offsets[t*B+b+1]]``); ``row_starts`` int64
    [R+1]: request r owns samples ``row_starts[r]:row_starts[r+1]``.
    """

    dense: np.ndarray
    indices: np.ndarray
    offsets: np.ndarray
    row_starts: np.ndarray

    @property
    def batch_size(self) -> int:
        return int(self.dense.shape[0])

    @property
    def nr_tables(self) -> int:
        return (len(self.offsets) - 1) // max(self.batch_size, 1)


def merge_requests(requests: list[ParsedRequest]) -> MergedBatch:
    """Concatenate requests sample-wise into one table-major batch (vectorized, no per-id loop)."""
    if not requests:
        raise ValueError("merge_requests needs at least one request")
    nr_tables = requests[0].lengths.shape[0]
    sizes = np.array([r.nr_samples for r in requests], dtype=np.int64)
    row_starts = np.zeros(len(requests) + 1, dtype=np.int64)
    np.cumsum(sizes, out=row_starts[1:])
    if len(requests) == 1:
        r = requests[0]
        dense, lengths, indices = r.dense, r.lengths, r.indices
    else:
        dense = np.concatenate([r.dense for r in requests])
        lengths = np.concatenate([r.lengths for r in requests], axis=1)  # [T, B]
        flat = np.concatenate([r.indices for r in requests])  # request-major, table-major inside
        # table of every id in `flat`; a stable sort by table gives table-major over the batch
        # with requests (and their samples) in order inside each table
        per_req_table = np.concatenate([r.lengths.sum(axis=1) for r in requests])  # [R*T]
        tdtype = np.int16 if nr_tables < 2**15 else np.int32
        table_of = np.repeat(np.tile(np.arange(nr_tables, dtype=tdtype), len(requests)), per_req_table)
        indices = flat[np.argsort(table_of, kind="stable")]
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths.reshape(-1), out=offsets[1:])
    return MergedBatch(dense=dense, indices=indices, offsets=offsets, row_starts=row_starts)


#: run_batch(merged) -> (probabilities float [B], stats or None). Called in the engine thread.
RunBatch = Callable[[MergedBatch], "tuple[np.ndarray, Any]"]


@dataclass
class _Pending:
    request: ParsedRequest
    future: asyncio.Future
    enqueued: float  # perf_counter seconds
    started: float = 0.0


@dataclass
class BatchRecord:
    """What the batcher reports per batch to its observer (metrics)."""

    nr_samples: int
    nr_requests: int
    service_s: float
    queue_waits_s: list[float]
    stats: Any = None
    error: Optional[BaseException] = None
    errors_by_request: list[Optional[BaseException]] = field(default_factory=list)


class DynamicBatcher:
    """Merge requests into batches of at most ``max_batch`` samples or ``max_wait_s`` of waiting.

    ``run_batch`` runs in ``executor`` (one worker thread: engines are not thread-safe).
    ``max_queue`` bounds the samples waiting (not yet in a batch); ``observer(BatchRecord)`` is
    called in the event loop after each batch.
    """

    def __init__(self, run_batch: RunBatch, executor: Executor, *, max_batch: int = 64,
                 max_wait_s: float = 0.002, max_queue: int = 1024,
                 observer: Callable[[BatchRecord], None] | None = None,
                 batch_timeout_s: float | None = None, on_timeout: Callable[[str], None] | None = None,
                 max_inflight: int = 1):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if batch_timeout_s is not None and not batch_timeout_s > 0:
            raise ValueError(f"batch_timeout_s must be > 0 or None, got {batch_timeout_s}")
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.batch_timeout_s = batch_timeout_s
        self.on_timeout = on_timeout
        self.max_inflight = int(max_inflight)
        self._stuck: dict[int, str] = {}  # timed-out batches whose engine call has not returned
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.max_queue = int(max_queue)
        self.observer = observer
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._running = 0  # batches handed to the executor and not returned (running or staged)
        self._task: asyncio.Task | None = None
        self._inflight: set[asyncio.Task] = set()
        self._closing = False
        self._service_ema_s = 0.0  # smoothed batch service time, for Retry-After

    # -- state ------------------------------------------------------------------------------------
    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    @property
    def inflight_batches(self) -> int:
        return len(self._inflight)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def stuck(self) -> Optional[str]:
        """Why the engine is stuck (a batch ran past its deadline and has not returned), or None."""
        return next(iter(self._stuck.values()), None)

    def admissible(self, reserved: int = 0) -> bool:
        """Whether a request may be read and parsed now: the queue has room for at least one more
        sample beyond ``reserved`` requests already being read or parsed (cheap, before parsing)."""
        return not self._closing and self._queued_rows + reserved < self.max_queue

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batching loop in the running event loop."""
        if self._task is not None:
            raise RuntimeError("batcher already started")
        self._wakeup = asyncio.Event()
        self._running = 0
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="updlrm-batcher")
        self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task) -> None:
        """If the batching loop ever dies, fail what is queued and refuse new work (never hang)."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("batching loop failed: %s: %s", type(exc).__name__, exc)
        self._closing = True
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(EngineError("BatcherFailed", f"{type(exc).__name__}: {exc}"))
        self._queued_rows = 0

    async def close(self) -> None:
        """Stop accepting, run everything already queued, and wait for the last batch."""
        self._closing = True
        if self._task is None:
            return
        self._wakeup.set()
        try:
            await self._task
        except Exception:  # noqa: BLE001 - already logged and answered by _loop_ended
            pass
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    # -- submit -----------------------------------------------------------------------------------
    def retry_after_s(self) -> int:
        """Seconds a client should wait before retrying when the queue is full (>= 1)."""
        batches_ahead = self._queued_rows / self.max_batch + 1
        return max(1, math.ceil(batches_ahead * max(self._service_ema_s, self.max_wait_s)))

    def submit(self, request: ParsedRequest) -> asyncio.Future:
        """Queue a validated request; the future resolves to its probabilities float32 [n].

        Raises :class:`QueueFullError` or :class:`ShuttingDownError` at once, queuing nothing.
        """
        if self._closing or self._task is None:
            raise ShuttingDownError("server is shutting down" if self._closing else "batcher not started")
        n = request.nr_samples
        if self._queued_rows + n > self.max_queue:
            raise QueueFullError(f"queue full: {self._queued_rows} samples waiting, limit {self.max_queue}",
                                 self.retry_after_s())
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, fut, time.perf_counter()))
        self._queued_rows += n
        if self._queued_rows >= self.max_batch or len(self._queue) == 1:
            self._wakeup.set()
        return fut

    async def _timed_out(self, taken: list[_Pending], call: asyncio.Future, start: float, staged: bool) -> None:
        """Fail a batch past its deadline now; hold its engine slot until the engine returns."""
        rows = sum(p.request.nr_samples for p in taken)
        reason = (f"the engine did not finish a batch of {rows} sample(s) ({len(taken)} request(s)) within "
                  f"{self.batch_timeout_s * (2 if staged else 1):g} s")
        key = id(call)
        self._stuck[key] = reason
        log.error("%s: failing the batch's requests", reason)
        error = EngineError("EngineTimeout", reason)
        for p in taken:
            if not p.future.done():
                p.future.set_exception(error)
        if self.observer is not None:
            try:
                self.observer(BatchRecord(nr_samples=rows, nr_requests=len(taken),
                                          service_s=time.perf_counter() - start,
                                          queue_waits_s=[p.started - p.enqueued for p in taken], error=error,
                                          errors_by_request=[error] * len(taken)))
            except Exception:  # noqa: BLE001
                log.exception("batch observer failed")
        if self.on_timeout is not None:
            try:
                self.on_timeout(reason)
            except Exception:  # noqa: BLE001 - the batch is answered already
                log.exception("on_timeout failed")
        try:
            await call
        except BaseException:  # noqa: BLE001 - its requests were answered above
            pass
        finally:
            self._stuck.pop(key, None)
            self._release_slot()
            log.warning("the engine returned from the batch that timed out, after %.1f s", time.perf_counter() - start)

    # -- the loop ---------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._queue[0].enqueued + self.max_wait_s
            while self._queued_rows < self.max_batch and not self._closing:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            # overlap: the batch kept filling while the engine ran; a full one is staged behind it
            while not (self._running < self.max_inflight
                       or (self._running == self.max_inflight and self._queued_rows >= self.max_batch)):
                self._wakeup.clear()
                await self._wakeup.wait()
            staged = self._running >= self.max_inflight
            self._running += 1
            taken: list[_Pending] = []
            rows = 0
            while self._queue and (not taken or rows + self._queue[0].request.nr_samples <= self.max_batch):
                p = self._queue.popleft()
                taken.append(p)
                rows += p.request.nr_samples
            self._queued_rows -= rows
            task = asyncio.get_running_loop().create_task(self._execute(taken, staged))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    def _run_in_thread(self, requests: list[ParsedRequest]) -> tuple[list, Any, Optional[BaseException], float]:
        """Engine thread: merge, predict, split. Returns (per-request results, stats, error, seconds)."""
        t0 = time.perf_counter()
        try:
            merged = merge_requests(requests)
            probs, stats = self.run_batch(merged)
            probs = np.asarray(probs, dtype=np.float32).reshape(-1)
            if probs.shape[0] != merged.batch_size:
                raise RuntimeError(f"engine returned {probs.shape[0]} predictions for a batch of {merged.batch_size}")
            starts = merged.row_starts
            results = [probs[starts[i]:starts[i + 1]].copy() for i in range(len(requests))]
            return results, stats, None, time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - reported per request, never kills the loop
            from ..errors import InvalidBatchError

            if isinstance(exc, InvalidBatchError) and len(requests) > 1:
                results = []
                for r in requests:  # isolate the bad request(s): per request, not per lookup
                    one, _, err, _ = self._run_in_thread([r])
                    results.append(err if err is not None else one[0])
                return results, None, exc, time.perf_counter() - t0
            return [exc] * len(requests), None, exc, time.perf_counter() - t0

    def _release_slot(self) -> None:
        self._running -= 1
        self._wakeup.set()

    async def _execute(self, taken: list[_Pending], staged: bool = False) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        for p in taken:
            p.started = start
        call: Optional[asyncio.Future] = None
        try:
            call = loop.run_in_executor(self.executor, self._run_in_thread, [p.request for p in taken])
            if self.batch_timeout_s is None:
                results, stats, error, service_s = await call
            else:
                # a staged batch waits for the one ahead of it: its deadline covers both
                timeout = self.batch_timeout_s * (2 if staged else 1)
                results, stats, error, service_s = await asyncio.wait_for(asyncio.shield(call), timeout)
        except asyncio.TimeoutError:
            await self._timed_out(taken, call, start, staged)  # releases the engine slot when the engine returns
            return
        except BaseException as exc:  # executor shut down, cancelled: still answer everyone
            results, stats, error, service_s = [exc] * len(taken), None, exc, time.perf_counter() - start
        self._release_slot()
        self._service_ema_s = service_s if self._service_ema_s == 0 else 0.8 * self._service_ema_s + 0.2 * service_s
        if error is not None:
            log.error("engine error in a batch of %d request(s), %d sample(s): %s: %s", len(taken),
                      sum(p.request.nr_samples for p in taken), type(error).__name__, error)
        per_request_errors: list[Optional[BaseException]] = []
        for p, res in zip(taken, results):
            if isinstance(res, BaseException):
                wrapped = res if isinstance(res, EngineError) else EngineError(type(res).__name__, str(res))
                per_request_errors.append(wrapped)
                if not p.future.done():
                    p.future.set_exception(wrapped)
            else:
                per_request_errors.append(None)
                if not p.future.done():
                    p.future.set_result(res)
        if self.observer is not None:
            try:
                self.observer(BatchRecord(
                    nr_samples=sum(p.request.nr_samples for p in taken), nr_requests=len(taken),
                    service_s=service_s, queue_waits_s=[p.started - p.enqueued for p in taken],
                    stats=stats, error=error, errors_by_request=per_request_errors))
            except Exception:  # noqa: BLE001 - metrics must never break serving
                log.exception("batch observer failed")
