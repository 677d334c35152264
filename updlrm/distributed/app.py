"""HTTP serving of a model spread over Ray shard servers: the same API as ``updlrm serve``.

Ingress choice: the project's own FastAPI app (:func:`updlrm.serving.app.create_app`, with its
dynamic batcher, request validation against :mod:`updlrm.serving.schema`, bounded queue, ASGI
fast path and graceful shutdown), fed by a loader that returns a :class:`ShardedEngine`, rather
than Ray Serve. Ray Serve would put an HTTP proxy actor and a replica actor between the client
and the front end (two more processes and hops on every request, on a 2-core machine that has
none to spare), would need the batcher, limits and error mapping rewritten for its deployment
API, and is built for stateless replicas; our shard servers are stateful (each owns its part of
the plan), which Ray core actors model directly. The front end itself is stateless, so several
of these servers can sit behind any load balancer.

This module adds only what the distributed case needs, as a thin ASGI layer around that app:

* ``GET /healthz``: ``{"status": ..., "shards": [per host: status, pid, restarts, calls,
  errors, failovers, p50/p99 call ms]}``. Status ``ready`` or ``degraded`` (a host is down,
  every shard still has a live replica): 200; ``loading`` (a shard has no live replica while
  Ray restarts it) or ``failed``: 503.
* ``GET /metrics``: the server's metrics plus per-shard ones (``updlrm_shard_*{host=...}``).
* ``POST /v1/predict``: answers of batches that failed because a shard was unavailable
  (:class:`ShardUnavailableError`) or died mid-batch with no replica left
  (:class:`ShardFailedError`) become 503 + ``Retry-After`` (kind ``shard_unavailable``) instead
  of the engine-error 500: the request was not answered wrongly, it can be retried.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Optional

from updlrm.serving.loader import LoadedModel, ServeSettings, build_dlrm
from updlrm.serving.metrics import Gauge, Registry

log = logging.getLogger("updlrm.distributed")

#: Engine-error kinds (exception class names) that mean "a shard is unavailable": answered 503.
UNAVAILABLE_KINDS = ("ShardUnavailableError", "ShardFailedError")


@dataclass
class RaySettings:
    """What ``updlrm serve --ray`` adds to :class:`ServeSettings`.

    address: "local" (start a local Ray cluster with ``num_cpus``) or a cluster address.
    host_plan: a host plan file (``updlrm partition --hosts ... --save-plan``); else a plan is
    made with ``hosts`` x ``dpus_per_host``, ``replicas``, ``dpu_strategy``. The shard servers'
    backend is ``ServeSettings.backend`` (cpu or pim) on ``device``.
    """

    address: str = "local"
    hosts: int = 2
    replicas: int = 1
    dpus_per_host: int = 64
    dpu_strategy: str = "row_uniform"
    host_plan: Optional[str] = None
    device: str = "emulator"
    num_cpus: Optional[int] = None
    object_store_bytes: Optional[int] = 256 << 20
    call_timeout_s: float = 30.0
    max_restarts: int = 10
    #: Ray custom resource marking an UPMEM host (one shard server per host); None: anywhere
    host_resource: Optional[str] = None

    def check(self) -> None:
        if self.hosts < 1 or self.dpus_per_host < 1:
            raise ValueError(f"hosts and dpus_per_host must be >= 1, got {self.hosts}, {self.dpus_per_host}")
        if not 1 <= self.replicas <= self.hosts:
            raise ValueError(f"replicas must be in [1, hosts={self.hosts}], got {self.replicas}")
        if not self.call_timeout_s > 0:
            raise ValueError(f"call_timeout_s must be > 0, got {self.call_timeout_s}")


def sharded_runner(engine):
    """``run_batch`` for a :class:`ShardedEngine`: MergedBatch -> (probabilities [B], stats)."""
    import torch

    from updlrm.batch import Batch

    def run_batch(merged) -> tuple:
        batch = Batch(torch.from_numpy(merged.dense), torch.from_numpy(merged.indices),
                      torch.from_numpy(merged.offsets))
        probs = engine.predict(batch)
        return probs.detach().cpu().numpy(), engine.last_stats

    return run_batch


def ray_loader(ray_settings: RaySettings):
    """A loader for :func:`updlrm.serving.app.create_app`: connect to Ray, build the model and its
    host plan, start the shard servers; returns a :class:`LoadedModel` around a ShardedEngine."""

    def load(settings: ServeSettings) -> LoadedModel:
        import torch

        from updlrm.partition.hosts import load_host_plan, make_host_plan

        from .cluster import connect, shutdown
        from .frontend import ShardedEngine

        if settings.backend not in ("cpu", "pim"):
            raise ValueError(f"shard servers run backend cpu or pim, not {settings.backend!r}")
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        model = build_dlrm(settings).eval()
        tables = list(model.config.tables)
        if ray_settings.host_plan:
            plan = load_host_plan(ray_settings.host_plan)
        else:
            plan = make_host_plan(tables, ray_settings.hosts, ray_settings.dpus_per_host, ray_settings.replicas,
                                  dpu_strategy=ray_settings.dpu_strategy if settings.backend == "pim" else None)
        started_here = connect(ray_settings.address, num_cpus=ray_settings.num_cpus,
                               object_store_bytes=ray_settings.object_store_bytes)
        engine = ShardedEngine(model, plan, backend=settings.backend, device=ray_settings.device,
                               dtype=settings.dtype, call_timeout_s=ray_settings.call_timeout_s,
                               max_restarts=ray_settings.max_restarts, torch_threads=settings.torch_threads or 1,
                               host_resource=ray_settings.host_resource)

        def close() -> None:
            engine.close()
            if started_here:
                shutdown()

        def health() -> tuple:
            status, why = engine.health()
            return ("ready", None) if status in ("ready", "degraded") else (status, why)

        return LoadedModel(
            name=model.config.name, backend=f"ray:{settings.backend}", n_dense=int(model.config.n_dense),
            tables=tables, run_batch=sharded_runner(engine), close=close, plan_summary=plan.summary(),
            engine=engine, health=health, restarts=lambda: sum(h["restarts"] for h in engine.host_states()))

    return load


class ShardMetrics:
    """Per-shard-server metrics, read from the engine's host states at scrape time."""

    def __init__(self):
        r = self.registry = Registry()
        self.up = r.add(Gauge("updlrm_shard_up", "1 while the host's shard server answers, else 0.", ("host",)))
        self.restarts = r.add(Gauge("updlrm_shard_restarts_total", "Times the host's shard server came back with "
                                    "a new process after dying (restarted by Ray).", ("host",)))
        self.calls = r.add(Gauge("updlrm_shard_calls_total", "Embedding calls the host answered.", ("host",)))
        self.errors = r.add(Gauge("updlrm_shard_errors_total", "Calls to the host that failed (dead actor, timeout).",
                                  ("host",)))
        self.failovers = r.add(Gauge("updlrm_shard_failovers_total", "Shard calls moved from this host to a replica.",
                                     ("host",)))
        self.p50 = r.add(Gauge("updlrm_shard_call_p50_seconds", "Median of the host's recent call latencies.", ("host",)))
        self.p99 = r.add(Gauge("updlrm_shard_call_p99_seconds", "p99 of the host's recent call latencies.", ("host",)))

    def render(self, engine) -> str:
        for h in engine.host_states():
            host = str(h["host"])
            self.up.set(1 if h["status"] == "up" else 0, host=host)
            self.restarts.set(h["restarts"], host=host)
            self.calls.set(h["calls"], host=host)
            self.errors.set(h["errors"], host=host)
            self.failovers.set(h["failovers"], host=host)
            if h["call_p50_ms"] is not None:
                self.p50.set(h["call_p50_ms"] / 1e3, host=host)
                self.p99.set(h["call_p99_ms"] / 1e3, host=host)
        return self.registry.render()


def create_ray_app(settings: ServeSettings, ray_settings: RaySettings, on_load_failure=None, stopping=None):
    """The ASGI app of ``updlrm serve --ray``: the serving app over a :class:`ShardedEngine` plus
    the shard-aware ``/healthz``, ``/metrics`` and 503 mapping of the module docstring."""
    from updlrm.serving.app import create_app

    ray_settings.check()
    inner = create_app(settings, ray_loader(ray_settings), on_load_failure=on_load_failure, stopping=stopping)
    return ShardAwareApp(inner)


class ShardAwareApp:
    """ASGI wrapper of the serving app (see the module docstring). ``.inner`` is the wrapped app,
    ``.state`` its server state (``.state.model.engine`` is the ShardedEngine once loaded)."""

    def __init__(self, inner):
        self.inner = inner
        self.state = inner.state
        self.shard_metrics = ShardMetrics()

    def _engine(self):
        model = self.state.model
        return None if model is None else model.engine

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == "/healthz" and method == "GET":
            await self._healthz(send)
        elif path == "/metrics" and method == "GET":
            await self._metrics(scope, receive, send)
        elif path == "/v1/predict" and method == "POST":
            await self._predict(scope, receive, send)
        else:
            await self.inner(scope, receive, send)

    async def _healthz(self, send) -> None:
        status, error = self.state.health()
        engine = self._engine()
        body: dict = {"status": status}
        if engine is not None:
            if status == "ready":
                status, error = engine.health()
                body["status"] = status
            body["shards"] = engine.host_states()
        if error:
            body["error"] = error
        await _send_json(send, 200 if status in ("ready", "degraded") else 503, body)

    async def _metrics(self, scope, receive, send) -> None:
        text = self.state.metrics.render()
        engine = self._engine()
        if engine is not None:
            text += self.shard_metrics.render(engine)
        data = text.encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", Registry.CONTENT_TYPE.encode()),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def _predict(self, scope, receive, send) -> None:
        held: dict = {}

        async def capture(message) -> None:
            if message["type"] == "http.response.start":
                held["start"] = message
                return
            if message["type"] == "http.response.body" and "start" in held:
                start = held.pop("start")
                if start["status"] == 500:
                    message, start = _as_unavailable(message, start)
                await send(start)
            await send(message)

        await self.inner(scope, receive, capture)


def _as_unavailable(message: dict, start: dict) -> tuple[dict, dict]:
    """A 500 engine-error answer whose engine error is a shard being unavailable -> 503 +
    Retry-After; anything else unchanged."""
    try:
        body = json.loads(message.get("body", b""))
        err = body["error"]
    except (ValueError, KeyError, TypeError):
        return message, start
    if err.get("kind") != "engine_error" or err.get("engine_error") not in UNAVAILABLE_KINDS:
        return message, start
    err["kind"] = "shard_unavailable"
    data = json.dumps(body).encode()
    headers = [(k, v) for k, v in start["headers"] if k not in (b"content-length",)]
    headers += [(b"content-length", str(len(data)).encode()), (b"retry-after", b"1")]
    return {**message, "body": data}, {**start, "status": 503, "headers": headers}


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def run_ray_server(settings: ServeSettings, ray_settings: RaySettings, log_level: str = "info") -> int:
    """Serve the sharded model until SIGTERM/SIGINT, like :func:`updlrm.serving.server.run_server`
    (prints ``updlrm serve: listening on http://HOST:PORT`` once bound); returns the exit code."""
    import uvicorn

    settings.check()
    ray_settings.check()
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    host, port = sock.getsockname()[:2]
    from .cluster import connect

    # Ray in the main thread, before uvicorn sets its signal handlers (ours win over Ray's); this
    # function then shuts it down, not the loader
    started_here = connect(ray_settings.address, num_cpus=ray_settings.num_cpus,
                           object_store_bytes=ray_settings.object_store_bytes)
    exit_code = {"code": 0}
    server: Optional[uvicorn.Server] = None

    def on_load_failure(message: str) -> None:
        exit_code["code"] = 1
        if server is not None:
            server.should_exit = True

    app = create_ray_app(settings, ray_settings, on_load_failure=on_load_failure,
                         stopping=lambda: server is not None and server.should_exit)
    config = uvicorn.Config(app, log_level=log_level.lower(), access_log=False, lifespan="on",
                            timeout_keep_alive=5, backlog=2048, proxy_headers=False)
    server = uvicorn.Server(config)
    url_host = f"[{host}]" if ":" in host else host
    print(f"updlrm serve: listening on http://{url_host}:{port} (model sharded over Ray: {ray_settings.address})",
          flush=True)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        if started_here:
            from .cluster import shutdown

            shutdown()
    if not server.started and exit_code["code"] == 0:
        exit_code["code"] = 1
    sys.stdout.flush()
    return exit_code["code"]
