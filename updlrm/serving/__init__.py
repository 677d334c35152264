"""updlrm.serving: the HTTP inference server (FastAPI + uvicorn) with a dynamic batcher.

Parts: :mod:`.schema` (request/response models, validation at the boundary), :mod:`.batcher`
(merge requests into engine batches, split answers, bounded queue), :mod:`.metrics`
(Prometheus text), :mod:`.app` (routes and lifecycle), :mod:`.loader` (settings, model +
engine loading), :mod:`.server` (process: bind, serve, graceful SIGTERM), :mod:`.loadtest`
(closed-loop load generator behind ``updlrm loadtest``). The client is :mod:`updlrm.client`.
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
