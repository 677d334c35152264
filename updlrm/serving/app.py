"""The HTTP layer of the inference server (FastAPI): routes, error mapping, lifecycle.

Routes (OpenAPI schema at ``/openapi.json``, docs at ``/docs``):

* ``POST /v1/predict`` - one sample or a list (see :mod:`updlrm.serving.schema`); 200
  ``{"predictions": [...]}``; 422 invalid request (message names field, table, position,
  allowed range); 413 request too large; 503 + ``Retry-After`` when the queue is full, the model
  is still loading (or its engine process restarting), or the server is shutting down; 500 when
  the engine failed the batch (e.g. ``EngineProcessDied``: the batch's engine process died).
  An ``X-Request-Id`` header is echoed back.
* ``GET /healthz`` - 200 ``{"status": "ready"}`` once the model (and DPUs) are loaded, else 503
  with ``loading`` (also while a dead engine process is replaced) / ``failed`` / ``shutting_down``
  and an ``error`` saying why.
* ``GET /metrics`` - Prometheus text (:mod:`updlrm.serving.metrics`).
* ``GET /v1/model`` - tables, shapes, backend, batching limits, plan summary.

Lifecycle: the app starts listening at once and loads the model in the engine thread (so
``/healthz`` can say ``loading``); on shutdown (uvicorn stops accepting first and lets running
requests finish) the batcher runs everything accepted, then the engine is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .batcher import BatchRecord, DynamicBatcher, EngineError, QueueFullError, ShuttingDownError
from .loader import LoadedModel, ServeSettings
from .metrics import ServerMetrics
from .schema import (ErrorResponse, ModelInfo, PredictResponse, RequestError, RequestValidator, Sample,
                     SampleList)

log = logging.getLogger("updlrm.serving")


class ServerState:
    """Mutable state of one server: the loaded model, batcher, metrics, and request accounting."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.status = "loading"  # loading | ready | failed | shutting_down | stopped
        self.load_error: Optional[str] = None
        self.model: Optional[LoadedModel] = None
        self.validator: Optional[RequestValidator] = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="updlrm-engine")
        self.batcher: Optional[DynamicBatcher] = None
        self.accepted = 0  # predict requests that reached the handler
        self.answered = 0  # ... and got a response (any status)
        self.metrics = ServerMetrics(
            max_batch=settings.max_batch,
            queue_rows=lambda: self.batcher.queued_rows if self.batcher else 0,
            queue_requests=lambda: self.batcher.queued_requests if self.batcher else 0,
            inflight_batches=lambda: self.batcher.inflight_batches if self.batcher else 0,
            ready=lambda: 1 if self.health()[0] == "ready" else 0,
            engine_restarts=lambda: self.model.restarts() if self.model is not None else 0)

    def health(self) -> tuple[str, Optional[str]]:
        """``(status, reason)`` of the server as ``/healthz`` reports it: the server's own state,
        and while that is ``ready``, the engine's (``loading`` while a dead engine process is
        replaced, ``failed`` once that is given up)."""
        if self.status != "ready" or self.model is None:
            return self.status, self.load_error
        engine_status, reason = self.model.health()
        return ("ready", None) if engine_status == "ready" else (engine_status, reason)

    def observe_batch(self, rec: BatchRecord) -> None:
        m = self.metrics
        m.batches.inc(outcome="error" if rec.error is not None else "ok")
        m.batch_size.observe(rec.nr_samples)
        m.batch_requests.observe(rec.nr_requests)
        m.batch_latency.observe(rec.service_s)
        for w in rec.queue_waits_s:
            m.queue_wait.observe(w)
        stats = rec.stats
        for phase in getattr(stats, "phases", None) or ():
            m.phase_latency.observe(phase.seconds, phase=phase.name, source=phase.source)


def _error(status: int, kind: str, message: str, headers: Optional[dict] = None, **extra) -> JSONResponse:
    body = {"error": {"kind": kind, "message": message, **extra}}
    return JSONResponse(body, status_code=status, headers=headers)


def _error_bytes(status: int, kind: str, message: str, headers: Optional[dict] = None,
                 **extra) -> tuple[int, dict, bytes]:
    body = {"error": {"kind": kind, "message": message, **extra}}
    return status, dict(headers or {}), json.dumps(body).encode()


def _openapi_request_body() -> tuple[dict, dict]:
    """OpenAPI requestBody for /v1/predict and the component schemas it refers to."""
    import pydantic

    ta = pydantic.TypeAdapter(Union[Sample, SampleList, list[Sample]])
    schema = ta.json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    body = {"required": True, "content": {"application/json": {"schema": schema}}}
    return body, defs


def create_app(settings: ServeSettings, loader: Callable[[ServeSettings], LoadedModel],
               on_load_failure: Callable[[str], None] | None = None,
               stopping: Callable[[], bool] | None = None) -> "PredictFastPath":
    """The FastAPI app serving the model ``loader(settings)`` returns (called in the engine thread).

    ``on_load_failure(message)`` is called if loading fails; ``stopping()`` says whether the
    server has begun a graceful shutdown: answers then carry ``Connection: close`` so that
    keep-alive clients reconnect (and find the port closed) instead of sending on a connection
    the server is about to close.
    """
    settings.check()
    state = ServerState(settings)

    async def load() -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            model = await loop.run_in_executor(state.executor, loader, settings)
            validator = RequestValidator(model.n_dense, [t.name for t in model.tables],
                                         [t.rows for t in model.tables], settings.max_request_samples,
                                         settings.max_lookups_per_bag)
        except Exception as exc:  # noqa: BLE001 - reported on /healthz and by the CLI
            state.status, state.load_error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("loading the model failed: %s", state.load_error)
            if on_load_failure is not None:
                on_load_failure(state.load_error)
            return
        state.model, state.validator = model, validator
        state.batcher = DynamicBatcher(model.run_batch, state.executor, max_batch=settings.max_batch,
                                       max_wait_s=settings.max_wait_ms / 1e3, max_queue=settings.max_queue,
                                       observer=state.observe_batch)
        state.batcher.start()
        if state.status == "loading":
            state.status = "ready"
        log.info("model %s on backend %s ready in %.2f s (%d tables)", model.name, model.backend,
                 time.perf_counter() - t0, len(model.tables))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        load_task = asyncio.get_running_loop().create_task(load())
        yield
        state.status = "shutting_down"
        with contextlib.suppress(Exception):
            await load_task
        if state.batcher is not None:
            await state.batcher.close()
        loop = asyncio.get_running_loop()
        if state.model is not None:
            try:
                await loop.run_in_executor(state.executor, state.model.close)
            except Exception as exc:  # noqa: BLE001
                log.error("closing the engine failed: %s: %s", type(exc).__name__, exc)
        state.executor.shutdown(wait=True)
        state.status = "stopped"
        log.warning("stopped: %d predict request(s) accepted, %d answered", state.accepted, state.answered)

    app = FastAPI(title="updlrm inference server", version="1", lifespan=lifespan,
                  description="DLRM click-probability predictions; embedding lookups on CPU, GPU or (emulated) "
                              "UPMEM PIM.")
    app.state.updlrm = state
    request_body, body_defs = _openapi_request_body()
    error_responses = {
        413: {"model": ErrorResponse, "description": "too many samples or ids, or body too large"},
        422: {"model": ErrorResponse, "description": "invalid request (field, table, position, allowed range)"},
        500: {"model": ErrorResponse, "description": "the engine failed the batch holding this request"},
        503: {"model": ErrorResponse, "description": "overloaded / loading / shutting down; see Retry-After"},
    }

    class _ClientGone(Exception):
        pass

    async def handle_predict(read_body: Callable[[], Awaitable[bytes]], content_length: Optional[str],
                             request_id: Optional[str]) -> tuple[int, dict, bytes]:
        """The whole predict exchange: (status, extra headers, JSON body). A request counts as
        accepted once its body has been read in full; every accepted request gets one answer."""
        t0 = time.perf_counter()
        m = state.metrics
        if content_length is not None and content_length.isdigit() and int(content_length) > settings.max_body_bytes:
            status, headers, body = _error_bytes(413, "invalid_request", f"body of {content_length} bytes exceeds "
                                                 "the limit", field="body", allowed=f"<= {settings.max_body_bytes} bytes")
            m.errors.inc(kind="invalid_request")
        else:
            raw = await read_body()  # _ClientGone propagates: nobody to answer
            state.accepted += 1
            try:
                status, headers, body = await _predict(raw)
            except Exception as exc:  # noqa: BLE001 - every accepted request gets an answer
                log.exception("predict failed unexpectedly")
                m.errors.inc(kind="internal")
                status, headers, body = _error_bytes(500, "internal", f"{type(exc).__name__}: {exc}")
            state.answered += 1
        if request_id is not None:
            headers["X-Request-Id"] = request_id
        if stopping is not None and stopping():
            headers["Connection"] = "close"
        m.requests.inc(code=str(status))
        m.request_latency.observe(time.perf_counter() - t0)
        return status, headers, body

    async def _predict(raw: bytes) -> tuple[int, dict, bytes]:
        m = state.metrics
        if state.status != "ready":
            kind = "not_ready" if state.status in ("loading", "failed") else "shutting_down"
            m.errors.inc(kind=kind)
            msg = {"loading": "model is still loading", "failed": f"model failed to load: {state.load_error}"}.get(
                state.status, "server is shutting down")
            return _error_bytes(503, kind, msg, headers={"Retry-After": "1"})
        engine_status, reason = state.model.health()
        if engine_status != "ready":  # the engine process died: a new one loads, or restarts gave up
            m.errors.inc(kind="not_ready")
            if engine_status == "loading":
                return _error_bytes(503, "not_ready", f"engine is restarting: {reason}", headers={"Retry-After": "1"})
            return _error_bytes(503, "not_ready", f"engine failed: {reason}")
        if len(raw) > settings.max_body_bytes:
            m.errors.inc(kind="invalid_request")
            return _error_bytes(413, "invalid_request", f"body of {len(raw)} bytes exceeds the limit",
                                field="body", allowed=f"<= {settings.max_body_bytes} bytes")
        try:
            parsed = state.validator.parse(raw)
        except RequestError as exc:
            m.errors.inc(kind="invalid_request")
            return exc.status, {}, json.dumps(exc.body()).encode()
        try:
            future = state.batcher.submit(parsed)
        except QueueFullError as exc:
            m.errors.inc(kind="overloaded")
            return _error_bytes(503, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after_s)})
        except ShuttingDownError as exc:
            m.errors.inc(kind="shutting_down")
            return _error_bytes(503, "shutting_down", str(exc), headers={"Retry-After": "1"})
        try:
            probs = await asyncio.shield(future)  # a cancelled handler never cancels the batch
        except EngineError as exc:
            m.errors.inc(kind=f"engine_error:{exc.kind}")
            return _error_bytes(500, "engine_error", str(exc), engine_error=exc.kind)
        m.samples.inc(parsed.nr_samples)
        return 200, {}, b'{"predictions":' + json.dumps(probs.tolist()).encode() + b"}"

    @app.post("/v1/predict", response_model=PredictResponse, responses=error_responses,
              openapi_extra={"requestBody": request_body})
    async def predict(request: Request) -> Response:
        """Click probabilities for one sample or a list of samples, in order.

        (Served by the ASGI fast path below; this route documents the API and serves the same
        answers when the app is mounted without it.)"""
        status, headers, body = await handle_predict(request.body, request.headers.get("content-length"),
                                                     request.headers.get("x-request-id"))
        return Response(content=body, status_code=status, headers=headers, media_type="application/json")

    async def fast_predict(scope, receive, send) -> None:
        """POST /v1/predict straight on ASGI: skips FastAPI's routing, middleware and Request/
        Response objects, which cost about as much as the rest of a small request together."""
        length = request_id = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value.decode("latin-1")
            elif key == b"x-request-id":
                request_id = value.decode("latin-1")

        async def read_body() -> bytes:
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size <= settings.max_body_bytes:
                    chunks.append(chunk)
                else:
                    chunks = [b" " * size]  # over the limit: keep only the size (answered 413)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)

        try:
            status, headers, body = await handle_predict(read_body, length, request_id)
        except _ClientGone:
            return
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 once the model and its DPUs are loaded; 503 while loading (also while a dead engine
        process is replaced), after a failure, or shutting down; ``error`` says why."""
        status, error = state.health()
        body = {"status": status}
        if error:
            body["error"] = error
        return JSONResponse(body, status_code=200 if status == "ready" else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text exposition of the server's counters, gauges and histograms."""
        return Response(content=state.metrics.render(), media_type=state.metrics.registry.CONTENT_TYPE)

    @app.get("/v1/model", response_model=ModelInfo, responses={503: {"model": ErrorResponse}})
    async def model_info() -> Response:
        """The served model: tables (name, rows, dim), dense width, backend, batching limits, plan summary."""
        model = state.model
        if model is None:
            return _error(503, "not_ready", f"model is {state.status}", headers={"Retry-After": "1"})
        info = ModelInfo(name=model.name, backend=model.backend, n_dense=model.n_dense,
                         tables=[{"name": t.name, "rows": int(t.rows), "dim": int(t.dim)} for t in model.tables],
                         max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                         max_request_samples=settings.max_request_samples, plan=model.plan_summary)
        return JSONResponse(info.model_dump())

    default_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = default_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(body_defs)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return PredictFastPath(app, fast_predict)


class PredictFastPath:
    """ASGI app: ``POST /v1/predict`` goes to ``handler``; everything else (other routes,
    lifespan, docs) to the FastAPI ``app``. ``.app`` and ``.state`` give the FastAPI app and the
    server state."""

    def __init__(self, app: FastAPI, handler):
        self.app = app
        self.handler = handler
        self.state = app.state.updlrm

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/predict" and scope["method"] == "POST":
            await self.handler(scope, receive, send)
        else:
            await self.app(scope, receive, send)
