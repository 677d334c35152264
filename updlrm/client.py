"""Python client of the updlrm inference server (``updlrm serve``), sync and async, on httpx.

::

    from updlrm.client import Client
    with Client("http://127.0.0.1:8000") as c:
        c.wait_ready(timeout_s=60)
        info = c.model()                       # tables, n_dense, backend, ...
        p = c.predict({"dense": [...13 floats], "sparse": {"C1": [4], ..., "C26": [0]}})   # [p]
        ps = c.predict([sample_a, sample_b])   # [p_a, p_b], in order
        ps = c.predict_packed(dense, {"C1": ids_c1, ...}, lengths={"C2": lens_c2})   # many samples, compact

``predict_packed`` sends NumPy arrays as one columnar batch in MessagePack with raw
little-endian bytes (see :func:`pack_batch`): nothing is printed or parsed per number, which is
what clients sending many samples per request should use.

A failed request raises :class:`ServerError` carrying the HTTP status, the server's error
``kind`` (invalid_request, overloaded, not_ready, shutting_down, engine_error, ...), its message,
the offending ``field``/``table``/``position``/``allowed`` range when given, and ``retry_after_s``
for 503s. ``retries`` (default 0) retries 503 answers after their Retry-After, at most that
many times. Helpers convert between :class:`updlrm.batch.Batch` and request samples.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional, Sequence, Union

import httpx
import numpy as np

from updlrm.errors import UpdlrmError

__all__ = ["Client", "AsyncClient", "ServerError", "samples_from_batch", "random_samples", "pack_batch"]

MSGPACK = "application/msgpack"


def pack_batch(dense, ids: dict, lengths: Optional[dict] = None) -> bytes:
    """A columnar predict body in MessagePack: ``dense`` [n, n_dense] (float32), per table name the
    flat ids of all its bags in sample order, and per table the bag sizes [n] (a table missing from
    ``lengths``: one id per sample). Arrays go as little-endian float32 / int64 bytes."""
    import msgspec

    lengths = lengths or {}
    cols = {}
    for name, t_ids in ids.items():
        col = {"ids": np.ascontiguousarray(t_ids, dtype="<i8").tobytes()}
        if name in lengths:
            col["lengths"] = np.ascontiguousarray(lengths[name], dtype="<i8").tobytes()
        cols[name] = col
    return msgspec.msgpack.encode({"batch": {"dense": np.ascontiguousarray(dense, dtype="<f4").tobytes(),
                                             "sparse": cols}})

SampleDict = dict
Samples = Union[SampleDict, Sequence[SampleDict]]


class ServerError(UpdlrmError):
    """The server answered with an error (or not at all: ``status`` 0, ``kind`` 'transport')."""

    def __init__(self, status: int, kind: str, message: str, *, field: str | None = None,
                 table: str | None = None, position: int | None = None, allowed: str | None = None,
                 retry_after_s: float | None = None):
        super().__init__(f"HTTP {status} {kind}: {message}" if status else f"{kind}: {message}")
        self.status = status
        self.kind = kind
        self.message = message
        self.field = field
        self.table = table
        self.position = position
        self.allowed = allowed
        self.retry_after_s = retry_after_s


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        err = response.json().get("error", {})
    except ValueError:
        err = {}
    if not isinstance(err, dict):
        err = {"message": str(err)}
    retry = response.headers.get("retry-after")
    raise ServerError(response.status_code, err.get("kind") or f"http_{response.status_code}",
                      err.get("message") or response.text[:200], field=err.get("field"), table=err.get("table"),
                      position=err.get("position"), allowed=err.get("allowed"),
                      retry_after_s=float(retry) if retry and retry.replace(".", "", 1).isdigit() else None)


def _body(samples: Samples) -> dict | list:
    if isinstance(samples, dict):
        return samples
    return {"samples": list(samples)}


def _check_answer(samples: Samples, data: Any) -> list[float]:
    preds = data.get("predictions") if isinstance(data, dict) else None
    expected = 1 if isinstance(samples, dict) else len(samples)
    if not isinstance(preds, list) or len(preds) != expected:
        raise ServerError(200, "bad_answer", f"expected {expected} predictions, got {str(data)[:200]}")
    return [float(p) for p in preds]


class Client:
    """Blocking client. ``url``: server base URL; ``timeout_s``: per request; ``retries``: 503 retries."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout_s: float = 30.0, retries: int = 0):
        self.url = url.rstrip("/")
        self.retries = int(retries)
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def predict(self, samples: Samples, request_id: str | None = None) -> list[float]:
        """Click probabilities of one sample (a dict) or a list of samples, in order."""
        headers = {"X-Request-Id": request_id} if request_id else None
        for attempt in range(self.retries + 1):
            r = self._http.post("/v1/predict", json=_body(samples), headers=headers)
            if r.status_code == 503 and attempt < self.retries:
                time.sleep(float(r.headers.get("retry-after", "1") or 1))
                continue
            _raise_for(r)
            return _check_answer(samples, r.json())
        raise AssertionError("unreachable")

    def predict_packed(self, dense, ids: dict, lengths: Optional[dict] = None,
                       request_id: str | None = None) -> list[float]:
        """Click probabilities of the ``len(dense)`` samples given as arrays (see :func:`pack_batch`)."""
        body = pack_batch(dense, ids, lengths)
        headers = {"Content-Type": MSGPACK, **({"X-Request-Id": request_id} if request_id else {})}
        n = int(np.asarray(dense).shape[0])
        for attempt in range(self.retries + 1):
            r = self._http.post("/v1/predict", content=body, headers=headers)
            if r.status_code == 503 and attempt < self.retries:
                time.sleep(float(r.headers.get("retry-after", "1") or 1))
                continue
            _raise_for(r)
            return _check_answer([None] * n, r.json())
        raise AssertionError("unreachable")

    def health(self) -> dict:
        """``/healthz`` body: {"status": "ready" | "loading" | "restarting" | "stuck" | "failed" |
        "shutting_down", "error": why (when not ready)}."""
        return self._http.get("/healthz").json()

    def ready(self) -> bool:
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.1) -> None:
        """Block until ``/healthz`` says ready; ServerError if it failed or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                r = self._http.get("/healthz")
                if r.status_code == 200:
                    return
                if r.json().get("status") == "failed":
                    raise ServerError(r.status_code, "not_ready", f"server failed: {r.json().get('error')}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(0, "timeout", f"server at {self.url} not ready after {timeout_s} s")
            time.sleep(poll_s)

    def model(self) -> dict:
        """``/v1/model``: name, backend, n_dense, tables [{name, rows, dim}], batching limits, plan."""
        r = self._http.get("/v1/model")
        _raise_for(r)
        return r.json()

    def metrics(self) -> str:
        """``/metrics`` in Prometheus text format."""
        return self._http.get("/metrics").text

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """asyncio client with the same methods as :class:`Client` (``await c.predict(...)``)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout_s: float = 30.0, retries: int = 0,
                 max_connections: int = 100):
        self.url = url.rstrip("/")
        self.retries = int(retries)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s, limits=limits)

    async def predict(self, samples: Samples, request_id: str | None = None) -> list[float]:
        headers = {"X-Request-Id": request_id} if request_id else None
        for attempt in range(self.retries + 1):
            r = await self._http.post("/v1/predict", json=_body(samples), headers=headers)
            if r.status_code == 503 and attempt < self.retries:
                await asyncio.sleep(float(r.headers.get("retry-after", "1") or 1))
                continue
            _raise_for(r)
            return _check_answer(samples, r.json())
        raise AssertionError("unreachable")

    async def health(self) -> dict:
        return (await self._http.get("/healthz")).json()

    async def model(self) -> dict:
        r = await self._http.get("/v1/model")
        _raise_for(r)
        return r.json()

    async def metrics(self) -> str:
        return (await self._http.get("/metrics")).text

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


def samples_from_batch(batch, table_names: Sequence[str]) -> list[dict]:
    """The request samples of a :class:`updlrm.batch.Batch` (B samples, tables named in order)."""
    b = batch.batch_size
    if batch.nr_tables != len(table_names):
        raise ValueError(f"batch has {batch.nr_tables} tables but {len(table_names)} names were given")
    dense = batch.dense.numpy().tolist()
    offsets = batch.offsets.numpy()
    ids = batch.indices.numpy()
    bags = np.split(ids, offsets[1:-1])  # T*B bags, table-major
    out = []
    for i in range(b):  # per sample and table (not per lookup)
        out.append({"dense": dense[i],
                    "sparse": {name: bags[t * b + i].tolist() for t, name in enumerate(table_names)}})
    return out


def random_samples(model_info: dict, n: int, rng: np.random.Generator, lookups: int = 1) -> list[dict]:
    """``n`` valid random samples for the model ``/v1/model`` describes: uniform ids,
    ``lookups`` per bag, dense features log(1 + Exp(10)) like :func:`updlrm.batch.random_batch`."""
    tables = model_info["tables"]
    rows = np.array([t["rows"] for t in tables], dtype=np.int64)
    ids = (rng.random((n, len(tables), lookups)) * rows[None, :, None]).astype(np.int64).tolist()
    dense = np.log1p(rng.exponential(10.0, size=(n, int(model_info["n_dense"])))).astype(np.float32).tolist()
    return [{"dense": dense[i], "sparse": {t["name"]: ids[i][k] for k, t in enumerate(tables)}} for i in range(n)]
