"""updlrm.serving: the HTTP inference server (FastAPI + uvicorn) with a dynamic batcher.

Use::

    updlrm serve --model kaggle --row-scale 0.1 --backend cpu --max-batch 64 --max-wait-ms 2 --port 8000
    updlrm serve --model my_checkpoint.pt --backend pim --plan plan.json      # DPUs load before /healthz is ready
    curl -s localhost:8000/healthz                                           # {"status": "ready"}
    curl -s localhost:8000/v1/model                                          # tables, n_dense, backend, plan
    curl -s -XPOST localhost:8000/v1/predict -d '{"dense": [...13 numbers], "sparse": {"C1": [3], ..., "C26": [0]}}'
    curl -s localhost:8000/metrics                                           # Prometheus text
    updlrm loadtest --url http://127.0.0.1:8000 --concurrency 64 --requests 5000 --duration 30
    updlrm loadtest --samples-per-request 16 --format msgpack                # columnar batches, MessagePack

API docs (OpenAPI) at ``/docs`` (Swagger UI served from the swagger-ui-bundle package, so it
works offline) and ``/openapi.json``. From Python: :mod:`updlrm.client`.

Parts: :mod:`.schema` (request/response models, validation at the boundary), :mod:`.batcher`
(merge requests into engine batches, split answers, bounded queue), :mod:`.metrics`
(Prometheus text), :mod:`.app` (routes and lifecycle), :mod:`.loader` (settings, model +
engine loading), :mod:`.engine_process` (the engine in a child process, ``--engine-process``;
replaced when it dies, bounded by ``--engine-max-restarts``),
:mod:`.protocol` (connection limits under the app: read timeouts, header and connection caps,
refusals from the headers, bounded shutdown), :mod:`.server` (process: bind, serve, graceful
SIGTERM), :mod:`.loadtest` (closed-loop load generator behind ``updlrm loadtest``).
"""

from .batcher import DynamicBatcher, EngineError, MergedBatch, QueueFullError, ShuttingDownError, merge_requests
from .loader import LoadedModel, ServeSettings, load_model
from .schema import ParsedRequest, RequestError, RequestValidator

__all__ = [
    "DynamicBatcher", "EngineError", "MergedBatch", "QueueFullError", "ShuttingDownError", "merge_requests",
    "LoadedModel", "ServeSettings", "load_model", "ParsedRequest", "RequestError", "RequestValidator",
    "create_app", "run_server",
]


def create_app(*args, **kwargs):
    """See :func:`updlrm.serving.app.create_app` (imported lazily: FastAPI is only needed to serve)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


def run_server(*args, **kwargs):
    """See :func:`updlrm.serving.server.run_server`."""
    from .server import run_server as _run_server

    return _run_server(*args, **kwargs)
