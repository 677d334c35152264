"""The HTTP layer of the inference server (FastAPI): routes, error mapping, lifecycle.

Routes (OpenAPI schema at ``/openapi.json``, docs at ``/docs``):

* ``POST /v1/predict`` - one sample, a list, or a columnar batch, as JSON or MessagePack (see
  :mod:`updlrm.serving.schema`); 200 ``{"predictions": [...]}``; 422 invalid request (message
  names field, table, position, allowed range); 413 request too large (a chunked body is not
  read past the limit); 503 + ``Retry-After`` when the queue is full, the model is still loading
  (or its engine process restarting), the engine is stuck, or the server is shutting down; 504
  when the engine did not finish the batch within the batch deadline; 500 when the engine failed
  the batch (e.g. ``EngineProcessDied``: the batch's engine process died). An ``X-Request-Id``
  header of up to ``max_request_id_chars`` printable characters is echoed back (a longer one: 400).
* ``GET /healthz`` - 200 ``{"status": "ready"}`` once the model (and DPUs) are loaded, else 503
  with ``loading`` / ``restarting`` (a dead or stuck engine process is replaced) / ``stuck`` (a
  batch ran past its deadline and the engine has not returned) / ``failed`` / ``shutting_down``
  and an ``error`` saying why.
* ``GET /metrics`` - Prometheus text (:mod:`updlrm.serving.metrics`).
* ``GET /v1/model`` - tables, shapes, backend, batching limits, plan summary.

Admission is decided before a request's body is read or parsed: a request the server would
refuse (not ready, queue full counting the requests being parsed, shutting down) is answered 503
at once from its headers (by the connection layer, :mod:`.protocol`, when the server runs under
:func:`updlrm.serving.run_server`). Bodies over 64 KiB are parsed in a worker thread, not on the
event loop; the thread still takes the GIL for each C call of the parse (msgspec's decode, NumPy's
conversion), so a 15 MB body holds the loop for up to ~0.3 s at a time here, not for the whole
parse.

``/docs`` serves Swagger UI from the ``swagger_ui_bundle`` package (no CDN), so it works offline.

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
from .protocol import ServerLimits
from .schema import (BatchRequest, ErrorResponse, ModelInfo, PredictResponse, RequestError, RequestValidator, Sample,
                     SampleList)

#: bodies larger than this are parsed in the parse thread instead of on the event loop
PARSE_INLINE_BYTES = 64 << 10

log = logging.getLogger("updlrm.serving")


class ServerState:
    """Mutable state of one server: the loaded model, batcher, metrics, and request accounting."""

    def __init__(self, settings: ServeSettings, limits: ServerLimits):
        self.settings = settings
        self.limits = limits
        self.reading = 0  # predict requests admitted whose body is being read or parsed
        self.parse_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="updlrm-parse")
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
        if engine_status == "ready" and self.batcher is not None and self.batcher.stuck:
            return "stuck", self.batcher.stuck
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

    ta = pydantic.TypeAdapter(Union[Sample, SampleList, list[Sample], BatchRequest])
    schema = ta.json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    packed = pydantic.TypeAdapter(BatchRequest).json_schema(ref_template="#/components/schemas/{model}")
    defs.update(packed.pop("$defs", {}))
    defs["BatchRequest"] = packed
    body = {"required": True, "content": {
        "application/json": {"schema": schema},
        "application/msgpack": {"schema": {"$ref": "#/components/schemas/BatchRequest"},
                                "description": "a columnar batch in MessagePack; dense, ids and lengths may be raw "
                                               "little-endian bytes (float32 / int64, numpy tobytes())"}}}
    return body, defs


def create_app(settings: ServeSettings, loader: Callable[[ServeSettings], LoadedModel],
               on_load_failure: Callable[[str], None] | None = None,
               stopping: Callable[[], bool] | None = None,
               limits: Optional[ServerLimits] = None) -> "PredictFastPath":
    """The FastAPI app serving the model ``loader(settings)`` returns (called in the engine thread).

    ``on_load_failure(message)`` is called if loading fails; ``stopping()`` says whether the
    server has begun a graceful shutdown: answers then carry ``Connection: close`` so that
    keep-alive clients reconnect (and find the port closed) instead of sending on a connection
    the server is about to close.
    """
    settings.check()
    limits = limits or ServerLimits()
    limits.check()
    state = ServerState(settings, limits)

    def on_batch_timeout(reason: str) -> None:
        engine = state.model.engine if state.model is not None else None
        abort = getattr(engine, "abort", None)
        if abort is not None:  # an engine process: kill it, a new one is started
            abort(reason)

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
        inflight = int(getattr(model, "max_inflight", 1))
        if inflight > 1:  # a pipelined (pim) engine takes a second batch while one runs: one thread each
            old, state.executor = state.executor, ThreadPoolExecutor(max_workers=inflight, thread_name_prefix="updlrm-engine")
            old.shutdown(wait=False)
        state.batcher = DynamicBatcher(model.run_batch, state.executor, max_batch=settings.max_batch,
                                       max_wait_s=settings.max_wait_ms / 1e3, max_queue=settings.max_queue,
                                       observer=state.observe_batch, batch_timeout_s=limits.batch_timeout_s,
                                       on_timeout=on_batch_timeout, max_inflight=inflight)
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
        state.parse_executor.shutdown(wait=False)
        state.status = "stopped"
        log.warning("stopped: %d predict request(s) accepted, %d answered", state.accepted, state.answered)

    app = FastAPI(title="updlrm inference server", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="DLRM click-probability predictions; embedding lookups on CPU, GPU or (emulated) "
                              "UPMEM PIM.")
    app.state.updlrm = state
    request_body, body_defs = _openapi_request_body()
    error_responses = {
        413: {"model": ErrorResponse, "description": "too many samples or ids, or body too large"},
        422: {"model": ErrorResponse, "description": "invalid request (field, table, position, allowed range)"},
        400: {"model": ErrorResponse, "description": "bad header (e.g. an X-Request-Id too long)"},
        500: {"model": ErrorResponse, "description": "the engine failed the batch holding this request"},
        503: {"model": ErrorResponse, "description": "overloaded / loading / restarting / stuck / shutting down; "
                                                     "see Retry-After"},
        504: {"model": ErrorResponse, "description": "the engine did not finish the batch within the deadline"},
    }

    class _ClientGone(Exception):
        pass

    class _TooLarge(Exception):
        pass

    def _refusal() -> Optional[tuple[int, dict, bytes, str]]:
        """A cheap answer for a request the server would refuse, from state alone (no body read)."""
        if state.status != "ready":
            kind = "not_ready" if state.status in ("loading", "failed") else "shutting_down"
            msg = {"loading": "model is still loading", "failed": f"model failed to load: {state.load_error}"}.get(
                state.status, "server is shutting down")
            return (*_error_bytes(503, kind, msg, headers={"Retry-After": "1"}), kind)
        engine_status, reason = state.model.health()
        if engine_status != "ready":  # the engine process died or was killed: a new one loads, or restarts gave up
            if engine_status in ("restarting", "loading"):
                return (*_error_bytes(503, "not_ready", f"engine is restarting: {reason}", headers={"Retry-After": "1"}),
                        "not_ready")
            return (*_error_bytes(503, "not_ready", f"engine failed: {reason}"), "not_ready")
        batcher = state.batcher
        if batcher.stuck:
            return (*_error_bytes(503, "not_ready", f"engine is stuck: {batcher.stuck}",
                                  headers={"Retry-After": str(max(1, round(limits.batch_timeout_s)))}), "not_ready")
        if batcher.closing:
            return (*_error_bytes(503, "shutting_down", "server is shutting down", headers={"Retry-After": "1"}),
                    "shutting_down")
        if not batcher.admissible(state.reading):
            retry = batcher.retry_after_s()
            return (*_error_bytes(503, "overloaded", f"queue full: {batcher.queued_rows} samples waiting and "
                                  f"{state.reading} request(s) being read, limit {batcher.max_queue} samples",
                                  headers={"Retry-After": str(retry)}), "overloaded")
        return None

    def _request_id_error(request_id: str) -> Optional[tuple[int, dict, bytes]]:
        if len(request_id) > limits.max_request_id_chars or not request_id.isprintable():
            return _error_bytes(400, "invalid_request", f"X-Request-Id of {len(request_id)} characters: at most "
                                f"{limits.max_request_id_chars} printable characters", field="X-Request-Id",
                                allowed=f"1..{limits.max_request_id_chars} printable characters")
        return None

    async def handle_predict(read_body: Callable[[], Awaitable[bytes]], content_length: Optional[str],
                             request_id: Optional[str], content_type: Optional[str] = None) -> tuple[int, dict, bytes]:
        """The whole predict exchange: (status, extra headers, JSON body). Refusals are decided
        from the headers and the server's state before the body is read; a request counts as
        accepted once it is answered from its headers or its body has been read in full; every
        accepted request gets one answer."""
        t0 = time.perf_counter()
        m = state.metrics
        bad_id = _request_id_error(request_id) if request_id is not None else None
        refusal = _refusal() if bad_id is None else None
        if bad_id is not None:
            status, headers, body = bad_id
            m.errors.inc(kind="invalid_request")
            request_id = None  # not echoed
            state.accepted += 1
            state.answered += 1
        elif refusal is not None:
            status, headers, body, kind = refusal
            m.errors.inc(kind=kind)
            state.accepted += 1
            state.answered += 1
        elif content_length is not None and content_length.isdigit() and int(content_length) > settings.max_body_bytes:
            status, headers, body = _error_bytes(413, "invalid_request", f"body of {content_length} bytes exceeds "
                                                 "the limit", field="body", allowed=f"<= {settings.max_body_bytes} bytes",
                                                 headers={"Connection": "close"})  # the body is not read
            m.errors.inc(kind="invalid_request")
        else:
            state.reading += 1
            released = False
            try:
                try:
                    raw = await read_body()  # _ClientGone propagates: nobody to answer
                except _TooLarge:
                    raw = None
                state.accepted += 1
                if raw is None:
                    status, headers, body = _error_bytes(
                        413, "invalid_request", f"body exceeds the limit of {settings.max_body_bytes} bytes (not read "
                        "further)", field="body", allowed=f"<= {settings.max_body_bytes} bytes",
                        headers={"Connection": "close"})
                    m.errors.inc(kind="invalid_request")
                else:
                    def release() -> None:
                        nonlocal released
                        if not released:
                            released = True
                            state.reading -= 1

                    try:
                        status, headers, body = await _predict(raw, content_type, release)
                    except Exception as exc:  # noqa: BLE001 - every accepted request gets an answer
                        log.exception("predict failed unexpectedly")
                        m.errors.inc(kind="internal")
                        status, headers, body = _error_bytes(500, "internal", f"{type(exc).__name__}: {exc}")
                state.answered += 1
            finally:
                if not released:
                    state.reading -= 1
        if request_id is not None:
            headers["X-Request-Id"] = request_id
        if stopping is not None and stopping():
            headers["Connection"] = "close"
        m.requests.inc(code=str(status))
        m.request_latency.observe(time.perf_counter() - t0)
        return status, headers, body

    async def _predict(raw: bytes, content_type: Optional[str], release: Callable[[], None]) -> tuple[int, dict, bytes]:
        m = state.metrics
        try:
            if len(raw) > PARSE_INLINE_BYTES:  # keep the event loop free for the batcher and other requests
                loop = asyncio.get_running_loop()
                parsed = await loop.run_in_executor(state.parse_executor, state.validator.parse_fast, raw, content_type)
            else:
                parsed = state.validator.parse_fast(raw, content_type)
        except RequestError as exc:
            m.errors.inc(kind="invalid_request")
            return exc.status, {}, json.dumps(exc.body()).encode()
        finally:
            release()
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
            if exc.kind == "EngineTimeout":
                return _error_bytes(504, "engine_timeout", str(exc), engine_error=exc.kind)
            return _error_bytes(500, "engine_error", str(exc), engine_error=exc.kind)
        m.samples.inc(parsed.nr_samples)
        return 200, {}, b'{"predictions":' + json.dumps(probs.tolist()).encode() + b"}"

    @app.post("/v1/predict", response_model=PredictResponse, responses=error_responses,
              openapi_extra={"requestBody": request_body})
    async def predict(request: Request) -> Response:
        """Click probabilities for one sample, a list of samples, or a columnar batch, in order.

        (Served by the ASGI fast path below; this route documents the API and serves the same
        answers when the app is mounted without it.)"""
        async def read_body() -> bytes:
            raw = await request.body()
            if len(raw) > settings.max_body_bytes:
                raise _TooLarge()
            return raw

        status, headers, body = await handle_predict(read_body, request.headers.get("content-length"),
                                                     request.headers.get("x-request-id"),
                                                     request.headers.get("content-type"))
        return Response(content=body, status_code=status, headers=headers, media_type="application/json")

    async def fast_predict(scope, receive, send) -> None:
        """POST /v1/predict straight on ASGI: skips FastAPI's routing, middleware and Request/
        Response objects, which cost about as much as the rest of a small request together."""
        length = request_id = content_type = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value.decode("latin-1")
            elif key == b"x-request-id":
                request_id = value.decode("latin-1")
            elif key == b"content-type":
                content_type = value.decode("latin-1")

        async def read_body() -> bytes:
            chunks, size = [], 0
            limit = settings.max_body_bytes
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:  # stop reading: answered 413, the connection is closed
                    raise _TooLarge()
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)

        try:
            status, headers, body = await handle_predict(read_body, length, request_id, content_type)
        except _ClientGone:
            return
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    def refuse_early(raw_headers: list) -> Optional[tuple[bytes, bool, float]]:
        """For the connection layer (:mod:`.protocol`): the whole answer to a predict request that
        is refused from the server's state alone, built from its headers, whether to keep the
        connection, and how long not to read it (an overloaded refusal's Retry-After); or None to
        serve the request."""
        request_id = None
        for key, value in raw_headers:
            if key == b"x-request-id":
                request_id = value.decode("latin-1")
                if _request_id_error(request_id) is not None:
                    return None  # the app answers 400
        refusal = _refusal()
        if refusal is None:
            return None
        status, headers, body, kind = refusal
        m = state.metrics
        m.errors.inc(kind=kind)
        m.requests.inc(code=str(status))
        m.request_latency.observe(0.0)
        state.accepted += 1
        state.answered += 1
        keep_alive = not (stopping is not None and stopping())
        lines = [f"HTTP/1.1 {status} Service Unavailable", "content-type: application/json",
                 f"content-length: {len(body)}"]
        lines += [f"{k.lower()}: {v}" for k, v in headers.items()]
        if request_id is not None:
            lines.append(f"x-request-id: {request_id}")
        if not keep_alive:
            lines.append("connection: close")
        pause_s = float(headers.get("Retry-After", 0)) if kind == "overloaded" else 0.0
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, keep_alive, pause_s

    _mount_docs(app)

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
    return PredictFastPath(app, fast_predict, refuse_early)


def _mount_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the assets the swagger_ui_bundle package ships (no CDN, so it
    works offline); without that package /docs says how to get it, and /openapi.json still works."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse

    try:
        from starlette.staticfiles import StaticFiles
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        swagger_ui_path = None

    if swagger_ui_path is not None:
        app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="swagger-ui-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if swagger_ui_path is None:
            return HTMLResponse("<p>Swagger UI needs the swagger-ui-bundle package (pip install swagger-ui-bundle); "
                                "the API schema is at <a href='/openapi.json'>/openapi.json</a>.</p>", status_code=200)
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=app.title + " - docs",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon-32x32.png")


class PredictFastPath:
    """ASGI app: ``POST /v1/predict`` goes to ``handler``; everything else (other routes,
    lifespan, docs) to the FastAPI ``app``. ``.app`` and ``.state`` give the FastAPI app and the
    server state; ``.refuse_early(headers)`` answers a predict request the server refuses from
    its state alone, for the connection layer."""

    def __init__(self, app: FastAPI, handler, refuse_early=None):
        self.app = app
        self.handler = handler
        self.refuse_early = refuse_early
        self.state = app.state.updlrm

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/predict" and scope["method"] == "POST":
            await self.handler(scope, receive, send)
        else:
            await self.app(scope, receive, send)
