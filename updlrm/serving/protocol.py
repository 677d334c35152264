"""Connection limits the inference server enforces below the app: timeouts, header size, a cap
on connections, and a bounded graceful shutdown.

uvicorn (0.29-0.54) has a keep-alive timeout but no header or body read timeout, no header size
limit with its httptools parser, and ``limit_concurrency`` answers 503 only once a request has
been parsed. So the server runs uvicorn with :class:`GuardedHttpToolsProtocol`, a subclass of
uvicorn's httptools protocol (``uvicorn.Config(http=...)`` takes a protocol class) that adds,
per connection::

    connect ──idle──> first byte ──headers──> headers complete ──body──> message complete ─┐
       ^  keep_alive_s             header_timeout_s              body_timeout_s            │
       └───────────────────────────── answer sent (keep-alive) ───────────────────────────┘

* a new connection beyond ``max_connections`` gets ``503`` (kind ``too_many_connections``,
  ``Retry-After``) and is closed, so idle clients cannot use up the file descriptors;
* idle connections (before the first request too) are closed after ``keep_alive_s``;
* headers not complete within ``header_timeout_s`` of their first byte, or a body not complete
  within ``body_timeout_s`` of its headers: ``408`` and the connection is closed;
* a request line + headers over ``max_header_bytes``: ``431`` and the connection is closed (the
  parser is fed nothing more);
* ``POST /v1/predict`` that the app would refuse from its state alone (overloaded, not ready,
  shutting down) is answered by the app's ``refuse_early(headers)`` right here, when its headers
  are complete: no ASGI task or scope is made and its body is skipped by the parser. Under a
  flood this halves the server's CPU per refusal. The answer goes out at once, but when it is an
  ``overloaded`` 503 the connection is not read again for the ``Retry-After`` it carries (at most
  ``refusal_pause_s``): a client that ignores Retry-After waits for it anyway, so 1,000 clients
  retrying in a tight loop cost about 1,000 refusals a second instead of all the CPU the batcher
  needs.

:class:`GuardedServer` bounds the graceful shutdown: after SIGTERM it stops accepting, lets
requests in progress finish for up to ``shutdown_timeout_s``, then closes the connections left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from dataclasses import dataclass
from typing import Optional

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("updlrm.serving")


@dataclass
class ServerLimits:
    """Limits of the HTTP layer (seconds, bytes, counts). ``max_connections`` None: derived from the
    process's file-descriptor limit (see :func:`connection_cap`)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_header_bytes: int = 16 << 10
    max_connections: Optional[int] = None
    max_request_id_chars: int = 128
    shutdown_timeout_s: float = 30.0
    #: longest a connection that got an overloaded 503 is not read (its Retry-After, at most this)
    refusal_pause_s: float = 1.0
    #: a batch the engine has not finished after this long fails (504) and the engine is
    #: reported stuck; an engine process is killed and replaced
    batch_timeout_s: float = 30.0

    def check(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s", "shutdown_timeout_s", "batch_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_header_bytes < 1024:
            raise ValueError(f"max_header_bytes must be >= 1024, got {self.max_header_bytes}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        if self.max_request_id_chars < 1:
            raise ValueError(f"max_request_id_chars must be >= 1, got {self.max_request_id_chars}")


#: file descriptors kept free for everything but client connections (model files, pipes, logs)
FD_RESERVE = 64


def connection_cap(requested: Optional[int]) -> int:
    """The connection cap: ``requested``, or 4096, lowered to fit the file-descriptor limit. The
    soft limit is first raised to the hard limit where that is needed and allowed."""
    want = requested if requested is not None else 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want + 4 * FD_RESERVE:
        new = hard if hard == resource.RLIM_INFINITY else min(hard, want + 4 * FD_RESERVE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return want
    fit = max(1, int(soft) - _open_fds() - FD_RESERVE)
    if fit < want:
        log.warning("connection cap %d lowered to %d by the file-descriptor limit (%d)", want, fit, soft)
    return min(want, fit)


def _open_fds() -> int:
    try:
        import os

        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 32


def _raw_response(status: int, reason: str, kind: str, message: str, extra: tuple = ()) -> bytes:
    body = json.dumps({"error": {"kind": kind, "message": message}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _HeadersTooLarge(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`ServerLimits` (see the module doc).
    Make a class bound to limits with :meth:`bind`."""

    limits = ServerLimits()
    cap = 4096
    #: refuse_early(headers) -> (full response bytes, keep the connection?, seconds not to read it), or None
    refuse_early = None
    early_path = b"/v1/predict"

    @classmethod
    def bind(cls, limits: ServerLimits, cap: int, refuse_early=None) -> type:
        hook = staticmethod(refuse_early) if refuse_early is not None else None
        return type("GuardedHttpToolsProtocol", (cls,), {"limits": limits, "cap": cap, "refuse_early": hook})

    # -- connection -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer: Optional[asyncio.TimerHandle] = None
        self._phase = "idle"  # idle | headers | body
        self._header_bytes = 0
        self._refused = False
        self._skipping = False  # the body of a request answered from its headers
        if len(self.connections) > self.cap:
            self._refused = True
            log.warning("refused a connection: %d open, limit %d", len(self.connections) - 1, self.cap)
            transport.write(_raw_response(503, "Service Unavailable", "too_many_connections",
                                          f"the server holds its limit of {self.cap} connections; retry later",
                                          ("retry-after: 1",)))
            transport.close()
            return
        # uvicorn arms its keep-alive timer only after a response; arm it for a fresh connection too
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def _cancel_timer(self) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()
            self._timer = None

    def _arm(self, seconds: float, callback) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(seconds, callback)

    def _reject(self, status: int, reason: str, kind: str, message: str) -> None:
        """Answer ``status`` (unless a response has started) and close the connection."""
        self._cancel_timer()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        in_body = self._phase == "body" and not self._skipping and cycle is not None
        responded = self._skipping or (in_body and cycle.response_started)
        if not responded:
            self.transport.write(_raw_response(status, reason, kind, message))
        if in_body and not cycle.response_complete:
            cycle.disconnected = True  # the app sees http.disconnect and sends nothing
            cycle.message_event.set()
        self.transport.close()

    # -- data -------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused or self.parser is None:
            return
        self._unset_keepalive_if_required()
        was_reading_headers = self._phase != "body"
        try:
            self.parser.feed_data(data)
        except _HeadersTooLarge:
            self._headers_too_large()
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadersTooLarge) or isinstance(exc.__cause__, _HeadersTooLarge):
                self._headers_too_large()
                return
            raise
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
            return
        if was_reading_headers and self._phase == "headers":  # headers still incomplete after this chunk
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._headers_too_large()

    def _headers_too_large(self) -> None:
        log.warning("refused a request whose headers exceed %d bytes", self.limits.max_header_bytes)
        self._reject(431, "Request Header Fields Too Large", "headers_too_large",
                     f"request line and headers exceed {self.limits.max_header_bytes} bytes")

    # -- parser callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "headers"
        self._header_bytes = 0
        self._counted = 0
        self._arm(self.limits.header_timeout_s, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._counted += n
        if self._counted > self.limits.max_header_bytes:
            raise _HeadersTooLarge()

    def on_headers_complete(self) -> None:
        self._phase = "body"
        self._arm(self.limits.body_timeout_s, self._body_timeout)
        if (self.refuse_early is not None and self.url.split(b"?", 1)[0] == self.early_path
                and (self.cycle is None or self.cycle.response_complete) and not self.pipeline
                and self.parser.get_method() == b"POST"):
            answer = self.refuse_early(self.headers)
            if answer is not None:
                response, keep_alive, pause_s = answer
                self._skipping = True
                self.transport.write(response)
                if not (keep_alive and self.parser.should_keep_alive()):
                    self._cancel_timer()
                    self.transport.close()
                else:
                    self.on_response_complete()  # re-arms keep-alive; the body is skipped as it comes
                    pause_s = min(pause_s, self.limits.refusal_pause_s)
                    if pause_s > 0 and not self.transport.is_closing():
                        self.transport.pause_reading()
                        self.loop.call_later(pause_s, self._resume_after_refusal)
                return
        super().on_headers_complete()

    def _resume_after_refusal(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def on_body(self, body: bytes) -> None:
        if not self._skipping:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = "idle"
        self._cancel_timer()
        if self._skipping:
            self._skipping = False
            return
        super().on_message_complete()

    # -- timeouts ---------------------------------------------------------------------------------
    def _header_timeout(self) -> None:
        self._timer = None
        log.warning("closed a connection whose request headers took longer than %g s", self.limits.header_timeout_s)
        self._reject(408, "Request Timeout", "timeout", f"request headers not received within "
                     f"{self.limits.header_timeout_s:g} s")

    def _body_timeout(self) -> None:
        self._timer = None
        log.warning("closed a connection whose request body took longer than %g s", self.limits.body_timeout_s)
        self._reject(408, "Request Timeout", "timeout", f"request body not received within "
                     f"{self.limits.body_timeout_s:g} s")


class GuardedServer(uvicorn.Server):
    """uvicorn's server with a bounded graceful shutdown: connections still open
    ``shutdown_timeout_s`` after the signal are closed (uvicorn then cancels their tasks)."""

    def __init__(self, config: uvicorn.Config, shutdown_timeout_s: float):
        super().__init__(config)
        self.shutdown_timeout_s = shutdown_timeout_s

    async def shutdown(self, sockets=None) -> None:
        loop = asyncio.get_running_loop()

        def close_stragglers() -> None:
            left = list(self.server_state.connections)
            if left:
                log.error("graceful shutdown: closing %d connection(s) still open after %g s", len(left),
                          self.shutdown_timeout_s)
            for conn in left:
                transport = getattr(conn, "transport", None)
                if transport is not None and not transport.is_closing():
                    transport.close()

        timer = loop.call_later(self.shutdown_timeout_s, close_stragglers)
        try:
            await super().shutdown(sockets=sockets)
        finally:
            timer.cancel()
