"""Running the inference server process: bind, serve with uvicorn, shut down gracefully.

``run_server(settings)`` binds ``host:port`` itself (port 0 picks a free port), prints one line
``updlrm serve: listening on http://HOST:PORT`` (tests and scripts wait for it), and serves until
SIGTERM or SIGINT. On the signal uvicorn stops accepting connections, lets every request already
received finish (the batcher keeps running them) for up to ``limits.shutdown_timeout_s``, closes
the connections left, then the app closes the engine; the function returns 0. It returns 1 when
the model fails to load.

HTTP: uvicorn (httptools + uvloop where installed) with the connection limits of
:mod:`updlrm.serving.protocol` (read timeouts, header size, connection cap).
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from typing import Callable, Optional

from .loader import LoadedModel, ServeSettings, load_model
from .protocol import GuardedHttpToolsProtocol, GuardedServer, ServerLimits, connection_cap

log = logging.getLogger("updlrm.serving")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def run_server(settings: ServeSettings, loader: Callable[[ServeSettings], LoadedModel] = load_model,
               log_level: str = "info", announce: Callable[[str], None] | None = None,
               limits: Optional[ServerLimits] = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code (0 after a graceful stop)."""
    import uvicorn

    from .app import create_app

    settings.check()
    limits = limits or ServerLimits()
    limits.check()
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = _bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    from .loadtest import is_loopback_host

    if not is_loopback_host(host):
        log.warning("listening on %s, reachable from other machines: the server has no authentication", host)
    exit_code = {"code": 0}
    server: Optional[GuardedServer] = None

    def on_load_failure(message: str) -> None:
        exit_code["code"] = 1
        if server is not None:
            server.should_exit = True

    app = create_app(settings, loader, on_load_failure=on_load_failure,
                     stopping=lambda: server is not None and server.should_exit, limits=limits)
    cap = connection_cap(limits.max_connections)
    protocol = GuardedHttpToolsProtocol.bind(limits, cap, refuse_early=app.refuse_early)
    # proxy_headers off: the server trusts no forwarding proxy (and skips that middleware's cost).
    # uvicorn cancels the tasks still running 1 s after GuardedServer closed their connections.
    config = uvicorn.Config(app, log_level=log_level.lower(), access_log=False, lifespan="on", http=protocol,
                            timeout_keep_alive=limits.keep_alive_s, backlog=2048, proxy_headers=False,
                            timeout_graceful_shutdown=int(limits.shutdown_timeout_s) + 1)
    server = GuardedServer(config, limits.shutdown_timeout_s)
    url_host = f"[{host}]" if ":" in host else host
    line = f"updlrm serve: listening on http://{url_host}:{port}"
    (announce or (lambda s: (print(s, flush=True))))(line)
    # uvicorn re-raises the signal it caught once it has shut down; with the default handler a
    # SIGTERM would then kill the process (exit -15) after the graceful stop. These handlers make
    # that re-raise a no-op, so a graceful stop exits 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not server.started and exit_code["code"] == 0:
        exit_code["code"] = 1
    sys.stdout.flush()
    return exit_code["code"]
