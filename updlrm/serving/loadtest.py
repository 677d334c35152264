"""Closed-loop load generator for the inference server (``updlrm loadtest``).

``concurrency`` workers each hold one keep-alive HTTP/1.1 connection and send predict requests
back to back until ``requests`` have been sent or ``duration_s`` has passed, whichever comes
first. Bodies (random valid samples for the served model, from ``/v1/model``) are built before
the clock starts, and the HTTP client is a small one written on asyncio streams so that the load
generator costs little CPU next to the server on the same machine.

Accounting: every request carries a unique ``X-Request-Id``; an answer must echo it. The report
counts, per request, exactly one outcome: an HTTP answer (by status and the server's error kind)
or a transport failure: ``connect_error`` (the connection was refused: the request never went
out), ``closed_before_answer`` (the request went out but the server closed the connection
before sending a byte: it may never have read it, as when a server closes idle keep-alive
connections at shutdown), ``server_closed`` (the server had already closed the kept-alive
connection when the request was to be written: it never went out, the worker reconnects),
``broken_answer`` (the connection broke inside a response), ``timeout``, or ``client_error:<type>``
(anything else that went wrong in the load generator for that request). ``lost`` counts requests that went out and got no answer (the last three kinds),
``mismatched`` answers carrying another request's id, ``duplicates`` ids answered twice; "every
request answered exactly once" holds when all three are 0. (Whether the *server* answered every
request it accepted is its own count: ``updlrm serve`` logs accepted and answered at exit.)

Loopback only by default: a URL whose host is not a loopback address is refused unless
``allow_remote`` is set. Bounds: concurrency <= 1024, requests <= 10,000,000, duration <= 3600 s.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

import numpy as np

MAX_CONCURRENCY = 1024
MAX_REQUESTS = 10_000_000
MAX_DURATION_S = 3600.0


@dataclass
class LoadtestReport:
    """Outcome of one load test. Latencies in seconds (successful requests only)."""

    url: str
    concurrency: int
    samples_per_request: int
    wall_s: float
    sent: int
    outcomes: dict  # kind -> count; "ok" for 200
    latencies_s: np.ndarray
    lost: int  # sent, no answer
    mismatched: int  # answered with another request's id
    duplicates: int  # more than one answer for an id
    body_format: str = "samples"
    no_retry_after: int = 0  # 503 answers without a Retry-After header

    @property
    def ok(self) -> int:
        return int(self.outcomes.get("ok", 0))

    @property
    def qps(self) -> float:
        """Successful requests per second."""
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def errors(self) -> dict:
        return {k: v for k, v in self.outcomes.items() if k != "ok"}

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1e3) if self.latencies_s.size else float("nan")

    @property
    def every_request_answered_once(self) -> bool:
        return self.lost == 0 and self.mismatched == 0 and self.duplicates == 0

    def to_dict(self) -> dict:
        return {
            "url": self.url, "concurrency": self.concurrency, "samples_per_request": self.samples_per_request,
            "body_format": self.body_format, "rejections_without_retry_after": self.no_retry_after,
            "wall_s": self.wall_s, "sent": self.sent, "ok": self.ok, "qps": self.qps,
            "samples_per_s": self.qps * self.samples_per_request,
            "latency_ms": {"p50": self.percentile_ms(50), "p90": self.percentile_ms(90),
                           "p99": self.percentile_ms(99), "max": self.percentile_ms(100)},
            "errors": self.errors, "lost": self.lost, "mismatched": self.mismatched,
            "duplicates": self.duplicates, "every_request_answered_once": self.every_request_answered_once,
        }

    def format(self) -> str:
        d = self.to_dict()
        lat = d["latency_ms"]
        lines = [
            f"url {self.url}  concurrency {self.concurrency}  samples/request {self.samples_per_request}  "
            f"format {self.body_format}",
            f"sent {self.sent}  ok {self.ok}  in {self.wall_s:.2f} s  ->  {self.qps:.1f} req/s "
            f"({d['samples_per_s']:.1f} samples/s)",
            f"latency ms  p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  max {lat['max']:.2f}",
            "errors " + (", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none")
            + (f"  ({self.no_retry_after} 503 answer(s) without Retry-After)" if self.no_retry_after else ""),
            f"every request answered exactly once: {'yes' if self.every_request_answered_once else 'NO'} "
            f"(lost {self.lost}, mismatched {self.mismatched}, duplicates {self.duplicates})",
        ]
        return "\n".join(lines)


def is_loopback_host(host: str) -> bool:
    """True when ``host`` names only loopback addresses (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


class _Connection:
    """One keep-alive HTTP/1.1 connection that sends a request and reads exactly its response."""

    def __init__(self, host: str, port: int, timeout_s: float):
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                          self.timeout_s)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes, request_id: str,
                   content_type: str = "application/json") -> tuple[str, int, dict, bytes]:
        """Returns (stage, status, headers, body); stage 'connect' or 'sent' on failure raises."""
        if self.writer is not None and (self.writer.is_closing() or self.reader.at_eof()):
            self.close()  # the server closed this kept-alive connection since the last answer
            raise _TransportError("server_closed", "the server had closed the kept-alive connection")
        if self.writer is None:
            try:
                await self._open()
            except (OSError, asyncio.TimeoutError) as exc:
                raise _TransportError("connect_error", str(exc)) from None
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nX-Request-Id: {request_id}\r\n\r\n").encode()
        try:
            self.writer.write(head + body)
        except (RuntimeError, OSError) as exc:  # uvloop raises RuntimeError on a transport closed under it
            self.close()
            raise _TransportError("server_closed", f"{type(exc).__name__}: {exc}") from None
        try:
            return await asyncio.wait_for(self._read_response(), self.timeout_s)
        except asyncio.TimeoutError:
            self.close()
            raise _TransportError("timeout", f"no answer within {self.timeout_s} s") from None
        except _ClosedBeforeAnswer as exc:
            self.close()
            raise _TransportError("closed_before_answer", str(exc)) from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.close()
            raise _TransportError("broken_answer", f"{type(exc).__name__}: {exc}") from None

    async def _read_response(self) -> tuple[str, int, dict, bytes]:
        try:
            status_line = await self.reader.readline()
        except OSError as exc:
            raise _ClosedBeforeAnswer(f"connection failed before any answer byte: {exc}") from None
        if not status_line:
            raise _ClosedBeforeAnswer("server closed the connection before answering")
        parts = status_line.split(b" ", 2)
        status = int(parts[1])
        headers = {}
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionResetError("server closed the connection inside the headers")
            if line in (b"\r\n", b"\n"):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readline()
            body = b"".join(chunks)
        else:
            raise ValueError("response has neither Content-Length nor chunked encoding")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return "answered", status, headers, body


class _ClosedBeforeAnswer(Exception):
    pass


class _TransportError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _outcome(status: int, body: bytes) -> str:
    if status == 200:
        return "ok"
    try:
        kind = json.loads(body)["error"]["kind"]
    except (ValueError, KeyError, TypeError):
        kind = None
    return f"{status}:{kind}" if kind else f"http_{status}"


BODY_FORMATS = ("samples", "columnar", "msgpack")


def build_bodies(model_info: dict, count: int, samples_per_request: int, lookups: int, seed: int,
                 body_format: str = "samples") -> list[bytes]:
    """``count`` distinct request bodies of random valid samples for the served model: JSON samples
    (one object for one sample, else ``{"samples": [...]}``), a JSON columnar ``{"batch": ...}``, or
    that batch in MessagePack with raw little-endian arrays (``body_format``)."""
    from updlrm.client import random_samples

    if body_format not in BODY_FORMATS:
        raise ValueError(f"body_format must be one of {BODY_FORMATS}, got {body_format!r}")
    rng = np.random.default_rng(seed)
    samples = random_samples(model_info, count * samples_per_request, rng, lookups=lookups)
    k = samples_per_request
    if body_format == "samples":
        if k == 1:
            return [json.dumps(s).encode() for s in samples]
        return [json.dumps({"samples": samples[i * k:(i + 1) * k]}).encode() for i in range(count)]
    import msgspec

    names = [t["name"] for t in model_info["tables"]]
    out = []
    for i in range(count):
        chunk = samples[i * k:(i + 1) * k]
        dense = [s["dense"] for s in chunk]
        ids = {n: [x for s in chunk for x in s["sparse"][n]] for n in names}
        lengths = {n: [len(s["sparse"][n]) for s in chunk] for n in names}
        if body_format == "columnar":
            out.append(json.dumps({"batch": {"dense": dense, "sparse": {
                n: {"ids": ids[n], "lengths": lengths[n]} for n in names}}}).encode())
        else:
            out.append(msgspec.msgpack.encode({"batch": {
                "dense": np.asarray(dense, dtype="<f4").tobytes(),
                "sparse": {n: {"ids": np.asarray(ids[n], dtype="<i8").tobytes(),
                               "lengths": np.asarray(lengths[n], dtype="<i8").tobytes()} for n in names}}}))
    return out


async def run_loadtest_async(url: str, concurrency: int = 64, requests: int = 1000, duration_s: float = 10.0,
                             samples_per_request: int = 1, lookups: int = 1, seed: int = 0,
                             timeout_s: float = 30.0, allow_remote: bool = False,
                             distinct_bodies: int = 512, warmup_requests: int = 0,
                             body_format: str = "samples") -> LoadtestReport:
    """Run the load test; see the module docstring. Raises ValueError on bad arguments."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"url must look like http://HOST:PORT, got {url!r}")
    if not allow_remote and not is_loopback_host(parts.hostname):
        raise ValueError(f"refusing to load-test non-loopback host {parts.hostname!r}; pass allow_remote "
                         "(--allow-remote) if you mean it")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be in [1, {MAX_CONCURRENCY}], got {concurrency}")
    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"requests must be in [1, {MAX_REQUESTS}], got {requests}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration must be in (0, {MAX_DURATION_S}] s, got {duration_s}")
    if samples_per_request < 1 or lookups < 0:
        raise ValueError("samples_per_request must be >= 1 and lookups >= 0")
    host, port = parts.hostname, parts.port or 80

    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as http:
        r = await http.get("/v1/model")
        r.raise_for_status()
        info = r.json()
    bodies = build_bodies(info, max(1, min(distinct_bodies, requests)), samples_per_request, lookups, seed,
                          body_format)
    content_type = "application/msgpack" if body_format == "msgpack" else "application/json"

    outcomes: Counter = Counter()
    latencies: list[float] = []
    answers: Counter = Counter()
    state = {"next": 0, "lost": 0, "mismatched": 0, "no_retry_after": 0}
    path = "/v1/predict"

    async def warm(conn: _Connection, n: int) -> None:
        for i in range(n):
            try:
                await conn.post(path, bodies[i % len(bodies)], f"warmup-{i}", content_type)
            except _TransportError:
                return

    conns = [_Connection(host, port, timeout_s) for _ in range(concurrency)]
    if warmup_requests:
        per = max(1, warmup_requests // concurrency)
        await asyncio.gather(*(warm(c, per) for c in conns))
    t_start = time.perf_counter()
    t_end = t_start + duration_s

    async def worker(conn: _Connection) -> None:
        while state["next"] < requests and time.perf_counter() < t_end:
            i = state["next"]
            state["next"] += 1
            rid = f"lt-{i}"
            t0 = time.perf_counter()
            try:
                _, status, headers, body = await conn.post(path, bodies[i % len(bodies)], rid, content_type)
            except _TransportError as exc:
                outcomes[exc.kind] += 1
                if exc.kind not in ("connect_error", "server_closed"):
                    state["lost"] += 1
                if exc.kind == "connect_error":
                    await asyncio.sleep(0.05)
                continue
            except Exception as exc:  # noqa: BLE001 - counted by kind; the report is always printed
                conn.close()
                outcomes[f"client_error:{type(exc).__name__}"] += 1
                state["lost"] += 1
                continue
            elapsed = time.perf_counter() - t0
            echoed = headers.get("x-request-id")
            if echoed != rid:
                state["mismatched"] += 1
            answers[echoed] += 1
            kind = _outcome(status, body)
            outcomes[kind] += 1
            if status == 503 and "retry-after" not in headers:
                state["no_retry_after"] += 1
            if kind == "ok":
                latencies.append(elapsed)

    try:
        await asyncio.gather(*(worker(c) for c in conns), return_exceptions=True)
    finally:
        for c in conns:
            c.close()
    wall = time.perf_counter() - t_start
    duplicates = sum(n - 1 for n in answers.values() if n > 1)
    return LoadtestReport(url=url, concurrency=concurrency, samples_per_request=samples_per_request, wall_s=wall,
                          sent=state["next"], outcomes=dict(outcomes), latencies_s=np.asarray(latencies),
                          lost=state["lost"], mismatched=state["mismatched"], duplicates=duplicates,
                          body_format=body_format, no_retry_after=state["no_retry_after"])


def run_loadtest(*args, **kwargs) -> LoadtestReport:
    """Blocking wrapper of :func:`run_loadtest_async` (on uvloop when installed: less client CPU)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_loadtest_async(*args, **kwargs))
    return uvloop.run(run_loadtest_async(*args, **kwargs))
