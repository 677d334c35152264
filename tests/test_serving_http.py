"""End-to-end tests of the inference server: real server processes on 127.0.0.1 (random free
port) started by the tests, driven by many concurrent clients.

Reference: ``updlrm.Engine(DLRM(configs.get("tiny")), backend="cpu").predict`` in this process on
the same inputs (the named config's seeded init gives the server bit-identical parameters).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from updlrm import configs, model_io
from updlrm.batch import Batch
from updlrm.client import AsyncClient, Client, ServerError, samples_from_batch
from updlrm.engine import Engine
from updlrm.model import DLRM
from updlrm.partition import Topology, make_plan, save_plan
from updlrm.serving.loadtest import run_loadtest_async

START_TIMEOUT_S = 90
CONFIG = configs.get("tiny")
NAMES = [t.name for t in CONFIG.tables]
POISON = 1234.5  # a dense value the fault-injecting server turns into a DpuFaultError

FAULTY_SERVER = textwrap.dedent(f"""
    import sys
    import time
    from updlrm.errors import DpuFaultError
    from updlrm.serving.loader import ServeSettings, load_model
    from updlrm.serving.server import run_server

    def loader(settings):
        time.sleep(2.0)  # a slow load (like DPUs being loaded): /healthz must say "loading" meanwhile
        model = load_model(settings)
        real = model.run_batch
        def run_batch(merged):
            if (merged.dense == {POISON}).any():
                raise DpuFaultError("DPU 7 faulted (injected by the test)", dpu=7, tasklet=2, reason="injected")
            return real(merged)
        model.run_batch = run_batch
        return model

    settings = ServeSettings(model="tiny", port=0, max_batch=16, max_wait_ms=5)
    sys.exit(run_server(settings, loader, log_level="warning"))
""")


class ServerProcess:
    """A server subprocess; collects its output and parses the URL it announces."""

    def __init__(self, argv: list[str]):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._url_ready = threading.Event()
        self.url = None
        threading.Thread(target=self._read, daemon=True).start()
        if not self._url_ready.wait(START_TIMEOUT_S) or self.url is None:
            self.kill()
            raise RuntimeError("server did not start:\n" + self.output)
        self.early = None  # (healthz, predict) answers as soon as the port accepts connections
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.early is None and time.monotonic() < deadline:
            try:
                self.early = (httpx.get(self.url + "/healthz"), httpx.post(self.url + "/v1/predict", json={}))
            except httpx.TransportError:
                time.sleep(0.02)
        try:
            with Client(self.url) as c:
                c.wait_ready(timeout_s=START_TIMEOUT_S)
        except ServerError as exc:
            self.kill()
            raise RuntimeError(f"server did not get ready ({exc}); early answers "
                               f"{[r.text for r in self.early or ()]}; output:\n{self.output}") from None

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                self._url_ready.set()
        self._url_ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def terminate(self, timeout_s: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def serve_cli(*args: str) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "updlrm.cli", "serve", "--port", "0", "--log-level", "warning", *args])


@pytest.fixture(scope="module")
def engine():
    with Engine(DLRM(CONFIG), backend="cpu") as e:
        yield e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    script = tmp_path_factory.mktemp("srv") / "faulty_server.py"
    script.write_text(FAULTY_SERVER)
    srv = ServerProcess([sys.executable, str(script)])
    yield srv
    rc = srv.terminate()
    assert rc == 0, srv.output


def random_inputs(n: int, seed: int, max_len: int = 4) -> tuple[Batch, list[dict]]:
    """n distinct samples (bags of 0..max_len ids) as a Batch and as request samples."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len + 1, size=(len(NAMES), n))
    ids_t = [rng.integers(0, t.rows, size=int(lengths[k].sum())) for k, t in enumerate(CONFIG.tables)]
    dense = rng.standard_normal((n, CONFIG.n_dense)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths.reshape(-1))])
    batch = Batch(torch.from_numpy(dense), torch.from_numpy(np.concatenate(ids_t)), torch.from_numpy(offsets))
    samples = []
    for i in range(n):  # built here, independently of updlrm.client.samples_from_batch
        sparse = {}
        for k, name in enumerate(NAMES):
            start = int(lengths[k, :i].sum())
            sparse[name] = ids_t[k][start:start + int(lengths[k, i])].tolist()
        samples.append({"dense": dense[i].tolist(), "sparse": sparse})
    return batch, samples


def close(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=1e-5, atol=1e-6)


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- correctness under concurrency ----------------------------------------------------------------

def test_predictions_equal_engine_under_64_concurrent_clients(server, engine):
    n_clients, per_client = 64, 4
    sizes = np.random.default_rng(7).integers(1, 5, size=(n_clients, per_client))  # 1 = single sample
    total = int(sizes.sum())
    batch, samples = random_inputs(total, seed=11)
    expected = engine.predict(batch).numpy()
    # distinct inputs give answers far apart compared with the tolerance, so any mix-up shows
    assert np.unique(np.round(expected, 5)).size > total * 0.9

    async def client(c: AsyncClient, k: int, start: int):
        out = []
        for j in range(per_client):
            n = int(sizes[k, j])
            chunk = samples[start:start + n]
            got = await c.predict(chunk[0] if n == 1 else chunk, request_id=f"c{k}-{j}")
            out.append((start, got))
            start += n
        return out

    async def main():
        starts = np.concatenate([[0], np.cumsum(sizes.sum(axis=1))])
        async with AsyncClient(server.url, max_connections=n_clients) as c:
            return await asyncio.gather(*(client(c, k, int(starts[k])) for k in range(n_clients)))

    results = asyncio.run(main())
    got = np.full(total, np.nan)
    for out in results:
        for start, preds in out:
            got[start:start + len(preds)] = preds
    close(got, expected)
    text = Client(server.url).metrics()
    assert metric(text, "updlrm_batch_size_samples_sum") / metric(text, "updlrm_batch_size_samples_count") > 1.5
    assert metric(text, "updlrm_batch_size_samples_count") < n_clients * per_client  # really merged


def test_client_helpers_round_trip(server, engine):
    batch, _ = random_inputs(5, seed=3)
    with Client(server.url) as c:
        got = c.predict(samples_from_batch(batch, NAMES))
        info = c.model()
    close(got, engine.predict(batch).numpy())
    assert info["n_dense"] == CONFIG.n_dense and info["backend"] == "cpu"
    assert [(t["name"], t["rows"], t["dim"]) for t in info["tables"]] == [(t.name, t.rows, t.dim) for t in CONFIG.tables]


def test_pim_backend_with_a_plan_file_serves_the_same_predictions_with_modeled_dpu_phases(engine, tmp_path):
    plan = make_plan(list(CONFIG.tables), Topology(nr_dpus=6), strategy="table_wise")
    save_plan(plan, tmp_path / "plan.json")
    srv = serve_cli("--model", "tiny", "--backend", "pim", "--plan", str(tmp_path / "plan.json"),
                    "--max-batch", "32", "--max-wait-ms", "5")
    try:
        batch, samples = random_inputs(64, seed=17)
        expected = engine.predict(batch).numpy()  # cpu reference; fp32 PIM sums differ only by rounding

        async def main():
            async with AsyncClient(srv.url, max_connections=64) as c:
                return await asyncio.gather(*(c.predict(s) for s in samples))

        got = np.concatenate(asyncio.run(main()))
        close(got, expected)
        with Client(srv.url) as c:
            info = c.model()
            text = c.metrics()
        assert info["backend"] == "pim" and info["plan"]["strategy"] == "table_wise"
        assert info["plan"]["nr_dpus"] == 6 and info["plan"]["nr_shards"] == len(plan.shards)
        assert re.search(r'updlrm_phase_seconds_count\{phase="kernel",source="emulator-wall"\} \d+', text)
        assert re.search(r'updlrm_phase_seconds_count\{phase="kernel",source="modeled"\} \d+', text)
    finally:
        rc = srv.terminate()
    assert rc == 0, srv.output


def test_loadtest_command_reports_every_request_answered(server):
    proc = subprocess.run([sys.executable, "-m", "updlrm.cli", "loadtest", "--url", server.url, "--concurrency", "16",
                           "--requests", "300", "--duration", "60", "--samples-per-request", "2", "--lookups", "3",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["sent"] == report["ok"] == 300 and report["errors"] == {}
    assert report["every_request_answered_once"] and report["qps"] > 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p90"] <= report["latency_ms"]["p99"]


# -- bad input ------------------------------------------------------------------------------------

def test_bad_requests_get_422_while_concurrent_good_requests_succeed(server, engine):
    batch, samples = random_inputs(96, seed=5)
    expected = engine.predict(batch).numpy()
    good = samples[0]
    t_last = CONFIG.tables[-1]
    bad_requests = [
        (b'{"dense": [1, 2', ["malformed JSON"], None),
        (json.dumps(good | {"dense": good["dense"][:-1]}), ["dense", f"takes {CONFIG.n_dense}"], None),
        (json.dumps({"samples": [good, good | {"sparse": good["sparse"] | {"nope": [1]}}]}), ["unknown table 'nope'"],
         "nope"),
        (json.dumps({"samples": [good, good | {"sparse": good["sparse"] | {t_last.name: [0, t_last.rows]}}]}),
         [f"row id {t_last.rows}", f"[0, {t_last.rows})", f"samples[1].sparse.{t_last.name}[1]"], t_last.name),
        (json.dumps({"samples": [{"dense": good["dense"], "sparse": {"T1": [[1]]}}]}), ["valid integer"], "T1"),
        (json.dumps([good, {"dense": good["dense"], "sparse": {k: v for k, v in good["sparse"].items() if k != "T2"}}]),
         ["lacks table 'T2'"], "T2"),
    ]

    async def good_traffic(c: AsyncClient, k: int):
        out = []
        for j in range(4):
            i = k * 4 + j
            out.append((i, (await c.predict(samples[i]))[0]))
        return out

    async def bad_traffic(http: httpx.AsyncClient):
        out = []
        for body, _, _ in bad_requests:
            r = await http.post("/v1/predict", content=body, headers={"content-type": "application/json"})
            out.append(r)
        return out

    async def main():
        async with AsyncClient(server.url, max_connections=32) as c, httpx.AsyncClient(base_url=server.url) as http:
            return await asyncio.gather(bad_traffic(http), *(good_traffic(c, k) for k in range(24)))

    bad, *goods = asyncio.run(main())
    for (body, fragments, table), r in zip(bad_requests, bad):
        assert r.status_code == 422, (body, r.text)
        err = r.json()["error"]
        assert err["kind"] == "invalid_request"
        for f in fragments:
            assert f in err["message"], err["message"]
        if table is not None:
            assert err["table"] == table, err
    for out in goods:
        for i, p in out:
            close(p, expected[i])


# -- engine faults --------------------------------------------------------------------------------

def test_engine_fault_fails_only_its_batch_and_is_counted(server, engine):
    batch, samples = random_inputs(8, seed=9)
    expected = engine.predict(batch).numpy()
    poisoned = samples[0] | {"dense": [POISON] + samples[0]["dense"][1:]}
    with Client(server.url) as c:
        before = metric(c.metrics(), 'updlrm_errors_total{kind="engine_error:DpuFaultError"}')
        with pytest.raises(ServerError) as info:
            c.predict(poisoned)
        assert info.value.status == 500 and info.value.kind == "engine_error"
        assert "DpuFaultError" in info.value.message and "DPU 7" in info.value.message
        close(c.predict(samples), expected)  # the server goes on
        text = c.metrics()
    assert metric(text, 'updlrm_errors_total{kind="engine_error:DpuFaultError"}') == before + 1
    assert metric(text, 'updlrm_batches_total{outcome="error"}') >= 1
    assert "DPU 7 faulted" in server.output  # logged


def test_not_ready_until_loaded(server):
    health, predict = server.early  # the fixture's server takes 2 s to load its model
    assert health.status_code == 503 and health.json() == {"status": "loading"}
    assert predict.status_code == 503 and predict.json()["error"]["kind"] == "not_ready"
    assert int(predict.headers["retry-after"]) >= 1


def test_health_model_metrics_and_openapi(server):
    with Client(server.url) as c:
        assert c.health() == {"status": "ready"}
        text = c.metrics()
        spec = httpx.get(server.url + "/openapi.json").json()
    for name in ("updlrm_requests_total", "updlrm_errors_total", "updlrm_batch_size_samples_bucket",
                 "updlrm_queue_depth_samples", "updlrm_request_latency_seconds_bucket", "updlrm_phase_seconds_bucket"):
        assert name in text, name
    assert re.search(r'updlrm_phase_seconds_count\{phase="embed",source="measured"\} \d+', text)
    body_schema = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "Sample" in json.dumps(body_schema) and "Sample" in spec["components"]["schemas"]


def test_model_that_fails_to_load_exits_1_with_the_reason(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "updlrm.cli", "serve", "--model", str(bad), "--port", "0",
                           "--log-level", "warning"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "loading the model failed" in proc.stderr and "broken.pt" in proc.stderr
    unknown = subprocess.run([sys.executable, "-m", "updlrm.cli", "serve", "--model", "no-such-model"],
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "neither a file nor a named config" in unknown.stderr


# -- overload -------------------------------------------------------------------------------------

def test_overload_gives_quick_503_with_retry_after_and_server_recovers(engine):
    # this server runs its engine in a child process (--engine-process); the end of the test kills
    # that child and checks that the server reports "restarting", starts a new one and serves again
    srv = serve_cli("--model", "tiny", "--max-batch", "4", "--max-wait-ms", "20", "--max-queue", "8",
                    "--max-request-samples", "8", "--engine-process")
    try:
        batch, samples = random_inputs(8 * 64, seed=13)
        expected = engine.predict(batch).numpy()

        async def one(http: httpx.AsyncClient, k: int):
            t0 = time.perf_counter()
            r = await http.post("/v1/predict", json={"samples": samples[8 * k:8 * k + 8]})
            return k, r, time.perf_counter() - t0

        async def main():
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=srv.url, limits=limits, timeout=60) as http:
                return await asyncio.gather(*(one(http, k) for k in range(64)))

        results = asyncio.run(main())
        rejected = [(r, dt) for _, r, dt in results if r.status_code == 503]
        accepted = [(k, r, dt) for k, r, dt in results if r.status_code == 200]
        assert rejected and accepted, [r.status_code for _, r, _ in results]
        assert {r.status_code for _, r, _ in results} <= {200, 503}
        for r, _ in rejected:
            assert r.json()["error"]["kind"] == "overloaded" and int(r.headers["retry-after"]) >= 1
        assert np.median([dt for _, dt in rejected]) < 1.0
        for k, r, _ in accepted:
            close(r.json()["predictions"], expected[8 * k:8 * k + 8])
        with Client(srv.url) as c:  # recovered
            close(c.predict(samples[:8]), expected[:8])
            assert c.ready()
            assert metric(c.metrics(), 'updlrm_errors_total{kind="overloaded"}') == len(rejected)
            children = subprocess.run(["pgrep", "-P", str(srv.proc.pid), "-f", "spawn_main"],
                                      capture_output=True, text=True).stdout.split()
            assert len(children) == 1, children
            os.kill(int(children[0]), signal.SIGKILL)
            # the server notices, starts a new engine process and says "restarting" until it is up
            deadline = time.monotonic() + 5
            while (health := httpx.get(srv.url + "/healthz")).status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert health.status_code == 503 and health.json()["status"] == "restarting", health.text
            assert "exit code -9" in health.json()["error"]
            during = httpx.post(srv.url + "/v1/predict", json=samples[0])  # a new process loads for ~2 s
            assert during.status_code == 503 and during.json()["error"]["kind"] == "not_ready", during.text
            assert "restarting" in during.json()["error"]["message"] and int(during.headers["retry-after"]) >= 1
            c.wait_ready(timeout_s=START_TIMEOUT_S)
            close(c.predict(samples[8:16]), expected[8:16])  # served by the new engine process
            text = c.metrics()
            assert metric(text, "updlrm_engine_restarts_total") == 1 and metric(text, "updlrm_ready") == 1
            new_children = subprocess.run(["pgrep", "-P", str(srv.proc.pid), "-f", "spawn_main"],
                                          capture_output=True, text=True).stdout.split()
            assert len(new_children) == 1 and new_children != children, (children, new_children)
    finally:
        rc = srv.terminate()
    assert rc == 0, srv.output


# -- graceful shutdown ----------------------------------------------------------------------------

def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(tmp_path):
    # this server loads a checkpoint (another seed than the named config) instead of a named config
    model = DLRM(configs.get("tiny", seed=5))
    ckpt = tmp_path / "tiny_seed5.pt"
    model_io.save(model, ckpt)
    srv = serve_cli("--model", str(ckpt), "--max-batch", "16", "--max-wait-ms", "5")
    batch, samples = random_inputs(6, seed=21)
    with Engine(model, backend="cpu") as ref, Client(srv.url) as c:
        close(c.predict(samples), ref.predict(batch).numpy())

    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, srv.proc.send_signal, signal.SIGTERM)
        return await run_loadtest_async(srv.url, concurrency=64, requests=10**6, duration_s=4.0, timeout_s=30)

    try:
        report = asyncio.run(main())
        rc = srv.proc.wait(60)
    finally:
        srv.kill()
    assert rc == 0, srv.output
    m = re.search(r"stopped: (\d+) predict request\(s\) accepted, (\d+) answered", srv.output)
    assert m, srv.output
    accepted, answered = int(m.group(1)), int(m.group(2))
    transport = {"connect_error", "closed_before_answer", "broken_answer", "timeout"}
    http_answers = sum(v for k, v in report.outcomes.items() if k not in transport)
    assert report.ok > 0 and report.outcomes.get("connect_error", 0) > 0  # load ran, then the port closed
    before_load = 2  # ServerProcess's early predict probe and the correctness check above
    assert accepted == answered == http_answers + before_load, (accepted, answered, report.to_dict())
    assert report.outcomes.get("timeout", 0) == 0 and report.outcomes.get("broken_answer", 0) == 0
    assert report.mismatched == 0 and report.duplicates == 0
