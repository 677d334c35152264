"""The server against heavy and hostile clients (issue 10, serving): real server processes on
127.0.0.1, raw sockets where a well-behaved HTTP client cannot express the attack.

Each test names the item it covers. References: the cpu Engine in this process on the same
inputs (the named config's seeded init gives the server bit-identical parameters).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import msgspec
import numpy as np
import pytest

from test_serving_http import CONFIG, NAMES, ServerProcess, close, random_inputs, serve_cli

from updlrm.client import Client
from updlrm.engine import Engine
from updlrm.model import DLRM

SLOW = 4321.5  # a dense value that makes the test server's engine sleep 4 s on its batch

SLOW_SERVER = textwrap.dedent(f"""
    import sys
    import time
    from updlrm.serving.loader import ServeSettings, load_model
    from updlrm.serving.server import run_server

    def loader(settings):
        model = load_model(settings)
        real = model.run_batch
        def run_batch(merged):
            if (merged.dense == {SLOW}).any():
                time.sleep(4.0)
            return real(merged)
        model.run_batch = run_batch
        return model

    settings = ServeSettings(model="tiny", port=0, max_batch=4, max_wait_ms=1, max_queue=8, max_request_samples=8)
    sys.exit(run_server(settings, loader, log_level="warning"))
""")


@pytest.fixture(scope="module")
def engine():
    with Engine(DLRM(CONFIG), backend="cpu") as e:
        yield e


@pytest.fixture(scope="module")
def server():
    srv = serve_cli("--model", "tiny", "--header-timeout", "1", "--body-timeout", "1.5", "--keep-alive", "1")
    yield srv
    rc = srv.terminate()
    assert rc == 0, srv.output


def _addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _raw(url: str, data: bytes, wait_s: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (or ``wait_s``)."""
    with socket.create_connection(_addr(url), timeout=wait_s) as s:
        s.sendall(data)
        return _read_all(s, wait_s)


def _send_until_answered(url: str, head: bytes, piece: bytes, total: int) -> tuple[bytes, int]:
    """Send ``head``, then ``piece`` repeatedly (``total`` bytes at most) until the server answers;
    returns (what it answered until it closed, bytes of ``piece`` sent)."""
    sent, answer = 0, b""
    with socket.create_connection(_addr(url), timeout=10) as s:
        try:
            s.sendall(head)
            while sent < total and not answer:
                s.sendall(piece)
                sent += len(piece)
                if select.select([s], [], [], 0)[0]:
                    answer = s.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer += _read_all(s, 3)
        except OSError:
            pass
    return answer, sent


def _read_all(s: socket.socket, wait_s: float) -> bytes:
    out, deadline = b"", time.monotonic() + wait_s
    s.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:  # closed with our bytes unread: also a close
            return out + b"<EOF>"
        if not chunk:
            return out + b"<EOF>"
        out += chunk
    return out


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else -1


def _json_body(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1].removesuffix(b"<EOF>"))


# -- item 5: reject before parsing; big bodies off the event loop --------------------------------

def test_a_full_queue_refuses_before_reading_the_body(engine, tmp_path):
    script = tmp_path / "slow_server.py"
    script.write_text(SLOW_SERVER)
    srv = ServerProcess([sys.executable, str(script)])
    try:
        batch, samples = random_inputs(13, seed=31)
        expected = engine.predict(batch).numpy()
        slow = samples[0] | {"dense": [SLOW] + samples[0]["dense"][1:]}
        with ThreadPoolExecutor(13) as pool:
            running = pool.submit(httpx.post, srv.url + "/v1/predict", json=slow, timeout=30)
            time.sleep(0.3)  # the slow batch holds the engine; of the next 12 samples, a full batch of 4
            # is staged behind it and 8 fill the queue (8)
            queued = [pool.submit(httpx.post, srv.url + "/v1/predict", json=s, timeout=30) for s in samples[1:13]]
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # until the queue holds its 8 samples
                if re.search(r"^updlrm_queue_depth_samples 8$", httpx.get(srv.url + "/metrics").text, re.M):
                    break
                time.sleep(0.02)
            # a malformed body: refused from the headers (503), not parsed (which would say 422)
            refused = httpx.post(srv.url + "/v1/predict", content=b'{"dense": [1, 2', timeout=30)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["kind"] == "overloaded" and int(refused.headers["retry-after"]) >= 1
            assert running.result().status_code == 200
            for k, f in enumerate(queued):
                close(f.result().json()["predictions"], expected[k + 1:k + 2])
        after = httpx.post(srv.url + "/v1/predict", content=b'{"dense": [1, 2', timeout=30)
        assert after.status_code == 422 and "malformed JSON" in after.json()["error"]["message"]

    finally:
        rc = srv.terminate()
    assert rc == 0, srv.output


def test_a_15_mb_request_is_parsed_off_the_event_loop(server, engine):
    rng = np.random.default_rng(3)
    n = 256
    dense = rng.standard_normal((n, CONFIG.n_dense)).astype(np.float32)
    bags = {t.name: rng.integers(0, t.rows, (n, 4000)) for t in CONFIG.tables}
    body = json.dumps({"samples": [{"dense": dense[i].tolist(), "sparse": {k: v[i].tolist() for k, v in bags.items()}}
                                   for i in range(n)]}).encode()
    assert 12 << 20 < len(body) < 16 << 20
    lags: list[float] = []
    done = threading.Event()

    def poll():
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                lags.append(time.perf_counter() - t0)
                time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        t0 = time.perf_counter()
        for _ in range(2):
            r = httpx.post(server.url + "/v1/predict", content=body, headers={"content-type": "application/json"},
                           timeout=60)
            assert r.status_code == 200, r.text[:300]
        big_s = (time.perf_counter() - t0) / 2
    finally:
        done.set()
        poller.join()
    assert len(r.json()["predictions"]) == n
    # /healthz is answered while the big body is parsed (on the loop it would wait for the whole parse)
    assert len(lags) >= 3 and max(lags) < max(0.5, 0.6 * big_s), (max(lags), big_s)


# -- item 6: a hung engine process ----------------------------------------------------------------

def test_a_stopped_engine_process_fails_its_batch_with_504_and_is_replaced(engine):
    srv = serve_cli("--model", "tiny", "--engine-process", "--batch-timeout", "1.5", "--max-wait-ms", "1")
    try:
        batch, samples = random_inputs(2, seed=41)
        expected = engine.predict(batch).numpy()
        children = subprocess.run(["pgrep", "-P", str(srv.proc.pid), "-f", "spawn_main"],
                                  capture_output=True, text=True).stdout.split()
        assert len(children) == 1, children
        os.kill(int(children[0]), signal.SIGSTOP)
        t0 = time.perf_counter()
        r = httpx.post(srv.url + "/v1/predict", json=samples[0], timeout=20)
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        assert err["kind"] == "engine_timeout" and "within 1.5 s" in err["message"]
        assert time.perf_counter() - t0 < 10
        health = httpx.get(srv.url + "/healthz")
        assert health.status_code == 503 and health.json()["status"] in ("stuck", "restarting"), health.text
        assert "stuck" in health.json()["error"] or "did not finish" in health.json()["error"]
        during = httpx.post(srv.url + "/v1/predict", json=samples[0])
        assert during.status_code == 503 and int(during.headers["retry-after"]) >= 1
        deadline = time.monotonic() + 60
        while httpx.get(srv.url + "/healthz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        close(httpx.post(srv.url + "/v1/predict", json={"samples": samples}).json()["predictions"], expected)
        assert "killing engine process" in srv.output
    finally:
        for pid in subprocess.run(["pgrep", "-P", str(srv.proc.pid)], capture_output=True, text=True).stdout.split():
            try:
                os.kill(int(pid), signal.SIGCONT)
            except ProcessLookupError:
                pass
        rc = srv.terminate()
    assert rc == 0, srv.output


# -- item 7: read timeouts, idle timeout, bounded shutdown, connection cap ------------------------

def test_half_sent_requests_and_idle_connections_are_closed(server):
    t0 = time.perf_counter()
    head = _raw(server.url, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: appl", wait_s=6)
    assert _status(head) == 408 and head.endswith(b"<EOF>"), head
    assert "headers" in _json_body(head)["error"]["message"]
    body = _raw(server.url, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"dense\"",
                wait_s=6)
    assert _status(body) == 408 and body.endswith(b"<EOF>") and b"body" in body, body
    idle = _raw(server.url, b"", wait_s=6)
    assert idle == b"<EOF>", idle  # a connection that never sends is closed after the keep-alive time
    assert time.perf_counter() - t0 < 15
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_sigterm_finishes_in_bounded_time_despite_a_half_sent_request():
    srv = serve_cli("--model", "tiny", "--body-timeout", "120", "--shutdown-timeout", "1.5")
    s = socket.create_connection(_addr(srv.url))
    try:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        time.sleep(0.3)
        t0 = time.perf_counter()
        rc = srv.terminate(timeout_s=20)
        assert rc == 0 and time.perf_counter() - t0 < 10, srv.output
        assert _read_all(s, 2).endswith(b"<EOF>")  # the straggler was closed
        assert "still open after" in srv.output
    finally:
        s.close()
        srv.kill()


def _serve_with_fd_limit(n: int, *args: str) -> ServerProcess:
    """``updlrm serve`` in a process whose file-descriptor limit is ``n`` (soft and hard)."""
    boot = (f"import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({n}, {n})); "
            "sys.argv = ['updlrm'] + sys.argv[1:]; runpy.run_module('updlrm.cli', run_name='__main__')")
    return ServerProcess([sys.executable, "-c", boot, "serve", "--port", "0", "--log-level", "warning", *args])


def test_idle_connections_beyond_the_cap_get_a_clear_refusal_not_a_lockout():
    srv = _serve_with_fd_limit(256, "--model", "tiny", "--keep-alive", "2")
    socks = []
    try:
        for _ in range(300):
            socks.append(socket.create_connection(_addr(srv.url), timeout=5))
        time.sleep(0.5)
        # a new client is refused at once with a clear answer (not left hanging in the backlog)
        t0 = time.perf_counter()
        r = httpx.get(srv.url + "/healthz", timeout=5)
        assert r.status_code == 503 and r.json()["error"]["kind"] == "too_many_connections", r.text
        assert "limit of" in r.json()["error"]["message"] and time.perf_counter() - t0 < 3
        # once the idle ones time out, new clients are served again
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(srv.url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert httpx.get(srv.url + "/healthz", timeout=5).status_code == 200
        assert "refused a connection" in srv.output
    finally:
        for s in socks:
            s.close()
        rc = srv.terminate()
    assert rc == 0, srv.output


# -- item 8: client errors are 4xx without a traceback -------------------------------------------

def test_deep_nesting_and_huge_integers_are_422_without_a_traceback(server):
    deep = b'{"dense": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    huge = json.dumps({"dense": [1] * CONFIG.n_dense, "sparse": {n: [0] for n in NAMES}}).replace(
        '"sparse": {"' + NAMES[0] + '": [0]', '"sparse": {"' + NAMES[0] + '": [' + "9" * 5000 + "]").encode()
    deep_list = b"[" * 100_000 + b"]" * 100_000
    huge_dense = b'{"dense": [' + b"9" * 5000 + b'], "sparse": {}}'
    for body in (deep, huge, deep_list, huge_dense):
        r = httpx.post(server.url + "/v1/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (body[:40], r.status_code, r.text[:300])
        assert r.json()["error"]["kind"] == "invalid_request" and r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/predict", content=huge)
    assert "integer" in r.json()["error"]["message"] or "digits" in r.json()["error"]["message"], r.text
    assert "Traceback" not in server.output and "internal" not in server.output


# -- item 9: chunked bodies stop at the limit ----------------------------------------------------

def test_a_chunked_body_is_refused_at_the_size_limit_not_read_to_the_end(server):
    chunk = b"x" * 65536
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    answer, sent = _send_until_answered(server.url, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                        b"Content-Type: application/json\r\n\r\n", frame, 64 << 20)
    assert _status(answer) == 413, answer[:200]
    assert b"not read further" in answer and answer.endswith(b"<EOF>")
    assert sent < 24 << 20, sent  # the limit is 16 MiB: the server answered long before the end


# -- item 10: header size and request ids --------------------------------------------------------

def test_huge_headers_are_refused_and_only_short_request_ids_are_echoed(server, engine):
    huge, sent = _send_until_answered(server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: ",
                                      b"a" * 4096, 32 << 20)
    assert _status(huge) == 431 and huge.endswith(b"<EOF>"), huge[:200]
    assert sent < 4 << 20  # refused long before the end of a 32 MB header
    many, _ = _send_until_answered(server.url, b"GET /healthz HTTP/1.1\r\n", b"X-Pad: " + b"b" * 100 + b"\r\n", 8 << 20)
    assert _status(many) == 431, many[:200]
    batch, samples = random_inputs(1, seed=2)
    ok = httpx.post(server.url + "/v1/predict", json=samples[0], headers={"X-Request-Id": "r" * 128})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "r" * 128
    close(ok.json()["predictions"], engine.predict(batch).numpy())
    long_id = httpx.post(server.url + "/v1/predict", json=samples[0], headers={"X-Request-Id": "r" * 129})
    assert long_id.status_code == 400 and "x-request-id" not in long_id.headers
    assert long_id.json()["error"]["field"] == "X-Request-Id"


# -- item 11: loadtest survives a server that closes connections ---------------------------------

class ClosingServer:
    """A stand-in server: answers /v1/model, then one predict per connection (keep-alive claimed)
    before closing it, so a client's next write goes to a closed connection."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = False
        self.info = json.dumps({"n_dense": 2, "tables": [{"name": "a", "rows": 10, "dim": 4}]}).encode()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                got = conn.recv(65536)
                if not got:
                    return
                data += got
            head = data.split(b"\r\n\r\n", 1)[0]
            if head.startswith(b"GET /v1/model"):
                body = self.info
            else:
                rid = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"x-request-id")]
                body = b'{"predictions": [0.5]}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: " + rid[0] +
                             b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                # then reset the connection (as a server does that exits with requests unread)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def test_loadtest_counts_server_closed_connections_and_always_reports():
    srv = ClosingServer()
    try:
        proc = subprocess.run([sys.executable, "-m", "updlrm.cli", "loadtest", "--url", srv.url, "--concurrency", "4",
                               "--requests", "200", "--duration", "30", "--json"],
                              capture_output=True, text=True, timeout=120)
    finally:
        srv.stop = True
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    closed = report["errors"].get("server_closed", 0) + report["errors"].get("closed_before_answer", 0)
    assert report["ok"] > 0 and closed > 0 and set(report["errors"]) <= {"server_closed", "closed_before_answer"}, report
    assert report["ok"] + sum(report["errors"].values()) == report["sent"] == 200
    assert report["mismatched"] == 0 and report["duplicates"] == 0


# -- item 12: /docs offline ----------------------------------------------------------------------

def test_docs_page_uses_only_local_assets(server):
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert "cdn" not in page.text and "https://" not in page.text.split("<body>")[0]
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        r = httpx.get(server.url + asset)
        assert r.status_code == 200 and len(r.content) > 10_000, asset
        assert asset.rsplit("/", 1)[1] in page.text


# -- item 13: compact formats --------------------------------------------------------------------

def _columnar(batch_samples: list[dict]) -> dict:
    return {"dense": [s["dense"] for s in batch_samples],
            "sparse": {n: {"ids": [i for s in batch_samples for i in s["sparse"][n]],
                           "lengths": [len(s["sparse"][n]) for s in batch_samples]} for n in NAMES}}


def test_columnar_json_and_msgpack_bytes_give_the_engines_predictions(server, engine):
    batch, samples = random_inputs(12, seed=51)
    expected = engine.predict(batch).numpy()
    col = _columnar(samples)
    as_json = httpx.post(server.url + "/v1/predict", json={"batch": col})
    assert as_json.status_code == 200, as_json.text
    close(as_json.json()["predictions"], expected)
    packed = {"batch": {"dense": np.asarray(col["dense"], dtype="<f4").tobytes(),
                        "sparse": {n: {"ids": np.asarray(c["ids"], dtype="<i8").tobytes(),
                                       "lengths": np.asarray(c["lengths"], dtype="<i8").tobytes()}
                                   for n, c in col["sparse"].items()}}}
    as_msgpack = httpx.post(server.url + "/v1/predict", content=msgspec.msgpack.encode(packed),
                            headers={"content-type": "application/msgpack"})
    assert as_msgpack.status_code == 200, as_msgpack.text
    close(as_msgpack.json()["predictions"], expected)
    with Client(server.url) as c:  # the client's helper sends the same bytes from arrays
        lens = {n: col["sparse"][n]["lengths"] for n in NAMES}
        close(c.predict_packed(np.asarray(col["dense"]), {n: col["sparse"][n]["ids"] for n in NAMES}, lens), expected)
    one_hot = {"dense": col["dense"][:2], "sparse": {n: {"ids": [0, 1]} for n in NAMES}}  # lengths omitted: 1 each
    r = httpx.post(server.url + "/v1/predict", json={"batch": one_hot})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    # errors still name the field and the table
    t = CONFIG.tables[1]
    bad = col | {"sparse": col["sparse"] | {t.name: {"ids": [t.rows] + col["sparse"][t.name]["ids"][1:],
                                                      "lengths": col["sparse"][t.name]["lengths"]}}}
    err = httpx.post(server.url + "/v1/predict", json={"batch": bad}).json()["error"]
    assert err["field"] == f"batch.sparse.{t.name}.ids[0]" and err["table"] == t.name, err
    packed["batch"]["sparse"][t.name]["ids"] = np.asarray([t.rows] * len(col["sparse"][t.name]["ids"]), "<i8").tobytes()
    err = httpx.post(server.url + "/v1/predict", content=msgspec.msgpack.encode(packed),
                     headers={"content-type": "application/msgpack"}).json()["error"]
    assert err["table"] == t.name and f"[0, {t.rows})" in err["message"], err
    spec = httpx.get(server.url + "/openapi.json").json()
    content = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "application/msgpack" in content and "BatchRequest" in json.dumps(content["application/json"])
    assert "TableColumn" in spec["components"]["schemas"]
