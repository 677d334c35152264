"""The HTTP layer of the inference server (FastAPI): routes, error mapping, lifecycle.

Routes (OpenAPI schema at ``/openapi.json``, docs at ``/docs``):

* ``POST /v1/predict`` - one sample or a list (see :mod:`updlrm.serving.schema`); 200
  ``{"predictions": [...]}``; 422 invalid request (message names field, table, position,
  allowed range); 413 request too large; 503 + ``Retry-After`` when the queue is full, the model
  is still loading, or the server is shutting down; 500 when the engine failed the batch.
  An ``X-Request-Id`` header is echoed back.
* ``GET /healthz`` - 200 ``{"status": "ready"}`` once the model (and DPUs) are loaded, else 503
  with ``loading`` / ``failed`` / ``shutting_down``.
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
from typing import Callable, Optional, Union

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
            inflight_batches=lambda: self.batcher.inflight_batches if self.batcher else 0)

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
               stopping: Callable[[], bool] | None = None) -> FastAPI:
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
            state.metrics.ready.set(1)
        log.info("model %s on backend %s ready in %.2f s (%d tables)", model.name, model.backend,
                 time.perf_counter() - t0, len(model.tables))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        load_task = asyncio.get_running_loop().create_task(load())
        yield
        state.status = "shutting_down"
        state.metrics.ready.set(0)
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

    @app.post("/v1/predict", response_model=PredictResponse, responses=error_responses,
              openapi_extra={"requestBody": request_body})
    async def predict(request: Request) -> Response:
        """Click probabilities for one sample or a list of samples, in order."""
        state.accepted += 1
        t0 = time.perf_counter()
        request_id = request.headers.get("x-request-id")
        try:
            response = await _predict(request)
        except Exception as exc:  # noqa: BLE001 - every accepted request gets an answer
            log.exception("predict failed unexpectedly")
            state.metrics.errors.inc(kind="internal")
            response = _error(500, "internal", f"{type(exc).__name__}: {exc}")
        if request_id is not None:
            response.headers["X-Request-Id"] = request_id
        if stopping is not None and stopping():
            response.headers["Connection"] = "close"
        state.answered += 1
        state.metrics.requests.inc(code=str(response.status_code))
        state.metrics.request_latency.observe(time.perf_counter() - t0)
        return response

    async def _predict(request: Request) -> Response:
        m = state.metrics
        if state.status != "ready":
            kind = "not_ready" if state.status in ("loading", "failed") else "shutting_down"
            m.errors.inc(kind=kind)
            msg = {"loading": "model is still loading", "failed": f"model failed to load: {state.load_error}"}.get(
                state.status, "server is shutting down")
            return _error(503, kind, msg, headers={"Retry-After": "1"})
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
            m.errors.inc(kind="invalid_request")
            return _error(413, "invalid_request", f"body of {length} bytes exceeds the limit",
                          field="body", allowed=f"<= {settings.max_body_bytes} bytes")
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            m.errors.inc(kind="invalid_request")
            return _error(413, "invalid_request", f"body of {len(body)} bytes exceeds the limit",
                          field="body", allowed=f"<= {settings.max_body_bytes} bytes")
        try:
            parsed = state.validator.parse(body)
        except RequestError as exc:
            m.errors.inc(kind="invalid_request")
            return JSONResponse(exc.body(), status_code=exc.status)
        try:
            future = state.batcher.submit(parsed)
        except QueueFullError as exc:
            m.errors.inc(kind="overloaded")
            return _error(503, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after_s)})
        except ShuttingDownError as exc:
            m.errors.inc(kind="shutting_down")
            return _error(503, "shutting_down", str(exc), headers={"Retry-After": "1"})
        try:
            probs = await asyncio.shield(future)  # a cancelled handler never cancels the batch
        except EngineError as exc:
            m.errors.inc(kind=f"engine_error:{exc.kind}")
            return _error(500, "engine_error", str(exc), engine_error=exc.kind)
        m.samples.inc(parsed.nr_samples)
        return Response(content=b'{"predictions":' + json.dumps(probs.tolist()).encode() + b"}",
                        media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 once the model and its DPUs are loaded; 503 while loading, after a failure, or shutting down."""
        body = {"status": state.status}
        if state.load_error:
            body["error"] = state.load_error
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

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
    return app
