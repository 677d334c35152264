"""One model across Ray shard servers (updlrm.distributed) on a local multi-process cluster.

References: single-process ``updlrm.Engine.predict`` / ``embed`` on the same model and batches
(cpu backend: torch EmbeddingBag). Shard servers are real Ray actor processes with emulated DPUs;
failover is tested by SIGKILLing a shard server's process while clients keep sending requests.
One Ray cluster (2 CPUs, no dashboard) serves the whole module and is shut down after it.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch

pytest.importorskip("ray")

from updlrm import configs  # noqa: E402
from updlrm.batch import random_batch  # noqa: E402
from updlrm.client import samples_from_batch  # noqa: E402
from updlrm.configs import DLRMConfig  # noqa: E402
from updlrm.distributed import ShardedEngine, ShardUnavailableError, connect, shutdown  # noqa: E402
from updlrm.engine import Engine  # noqa: E402
from updlrm.model import DLRM  # noqa: E402
from updlrm.partition import TableSpec  # noqa: E402
from updlrm.partition.hosts import make_host_plan  # noqa: E402
from updlrm.partition.lab import zipf_workload  # noqa: E402

# Five tables; with split_share 0.1 the larger ones are cut in row ranges carrying hot-row copies.
CONFIG = DLRMConfig("five", 3, 8, (16, 8), (16, 1), tuple(
    TableSpec(n, r, 8) for n, r in (("A", 600, ), ("B", 40), ("C", 1500), ("D", 7), ("E", 90))))
WAIT_S = 60


@pytest.fixture(scope="module")
def cluster():
    started = connect("local", num_cpus=2, object_store_bytes=128 << 20)
    yield
    if started:
        shutdown()


@pytest.fixture(scope="module")
def model():
    return DLRM(CONFIG).eval()


@pytest.fixture(scope="module")
def profile():
    return zipf_workload(list(CONFIG.tables), alpha=1.05, pooling=4, batch_size=64, profile_batches=2,
                         eval_batches=1).profile


def _batches(n=3, b=24):
    return [random_batch(CONFIG, b, pooling=4, seed=10 + i) for i in range(n)]


@pytest.mark.parametrize("backend", ["cpu", "pim"])
@pytest.mark.parametrize("hosts,replicas", [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_predictions_equal_single_process(cluster, model, profile, hosts, replicas, backend):
    plan = make_host_plan(list(CONFIG.tables), hosts, 4, replicas, profile=profile, hot_rows=5, split_share=0.1,
                          dpu_strategy="row_uniform")
    assert any(len(plan.table_shards(t)) > 1 for t in range(CONFIG.nr_tables))  # row ranges take part
    ref = Engine(model, backend="cpu")
    single = Engine(model, backend="pim", nr_dpus=4) if backend == "pim" else ref
    with ShardedEngine(model, plan, backend=backend) as sharded:
        for i, batch in enumerate(_batches()):
            probs = sharded.predict(batch)
            pooled = sharded.embed_arrays(batch.indices.numpy(), batch.offsets.numpy(), batch.batch_size)
            ref_pooled = ref.embed(batch)
            # fp32 partial sums added in another order: within the engine's own error bound
            bound = 2 * single.pooled_error_bound(batch).float()
            assert ((pooled - ref_pooled).abs() <= bound).all(), f"batch {i}: pooled off by more than the fp32 bound"
            x = model.bottom(batch.dense)
            p_bound = model.probability_error_bound(x, ref_pooled, bound).float() + 1e-6
            for other in {id(ref): ref, id(single): single}.values():
                assert ((probs - other.predict(batch)).abs() <= p_bound).all(), f"batch {i}"
    if single is not ref:
        single.close()


def test_whole_tables_on_cpu_shards_are_bit_identical(cluster, model):
    plan = make_host_plan(list(CONFIG.tables), 3, 4, 2, dpu_strategy=None, split_share=1.0)
    assert all(len(plan.table_shards(t)) == 1 for t in range(CONFIG.nr_tables))
    ref = Engine(model, backend="cpu")
    with ShardedEngine(model, plan, backend="cpu") as sharded:
        for batch in _batches(3):  # 3 batches: the replica rotation moves shards between hosts
            assert torch.equal(sharded.predict(batch), ref.predict(batch))


# -- failover over HTTP ----------------------------------------------------------------------

class _Server:
    """``updlrm serve --ray`` in this process: the shard-aware app under uvicorn in a thread."""

    def __init__(self, hosts: int, replicas: int):
        import uvicorn

        from updlrm.distributed.app import RaySettings, create_ray_app
        from updlrm.serving.loader import ServeSettings

        settings = ServeSettings(model="tiny", backend="cpu", port=0, max_batch=16, max_wait_ms=2)
        self.app = create_ray_app(settings, RaySettings(address="local", hosts=hosts, replicas=replicas,
                                                        call_timeout_s=20))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not become ready")

    @property
    def engine(self) -> ShardedEngine:
        return self.app.state.model.engine

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture(scope="module")
def tiny_reference():
    cfg = configs.get("tiny")
    batch = random_batch(cfg, 48, pooling=2, seed=3)
    probs = Engine(DLRM(cfg), backend="cpu").predict(batch).numpy()
    return samples_from_batch(batch, [t.name for t in cfg.tables]), probs


def _load(url, samples, probs, stop: threading.Event, out: list, seed: int) -> None:
    """Closed-loop client: requests of 1-3 random samples until ``stop``; records (status, ok, body)."""
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            pick = rng.choice(len(samples), size=int(rng.integers(1, 4)), replace=False)
            r = client.post("/v1/predict", json={"samples": [samples[i] for i in pick]})
            ok = None
            if r.status_code == 200:
                ok = np.allclose(r.json()["predictions"], probs[pick], rtol=0, atol=1e-6)
            out.append((r.status_code, ok, r.headers.get("retry-after"), r.text[:300]))


def _kill_under_load(server: _Server, samples, probs, host: int = 0, clients: int = 3):
    engine = server.engine
    stop, results = threading.Event(), []
    threads = [threading.Thread(target=_load, args=(server.url, samples, probs, stop, results, s)) for s in range(clients)]
    for t in threads:
        t.start()
    while len(results) < 20:
        time.sleep(0.05)
    pid = engine.shard_pid(host)
    before = len(results)
    os.kill(pid, signal.SIGKILL)
    # keep the load on until Ray has restarted the actor and the front end uses it again
    deadline = time.monotonic() + WAIT_S
    health = []  # (HTTP status, /healthz status) seen while waiting
    while time.monotonic() < deadline:
        st = engine.host_states()[host]
        if st["status"] == "up" and st["restarts"] >= 1:
            break
        r = httpx.get(server.url + "/healthz", timeout=10)
        health.append((r.status_code, r.json()["status"]))
        time.sleep(0.1)
    during = len(results) - before
    server.health_seen = health
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    return results, before, during, pid


def test_failover_with_replicas_loses_nothing(cluster, tiny_reference):
    samples, probs = tiny_reference
    server = _Server(hosts=2, replicas=2)
    try:
        results, before, during, pid = _kill_under_load(server, samples, probs)
        st = server.engine.host_states()
        assert st[0]["status"] == "up" and st[0]["restarts"] == 1 and st[0]["pid"] != pid
        assert during > 0, "no request was sent while the shard server was down"
        bad = [r for r in results if r[0] != 200 or not r[1]]
        assert not bad, f"{len(bad)} of {len(results)} requests failed or were wrong, e.g. {bad[:2]}"
        assert st[0]["errors"] >= 1 and st[1]["calls"] > 0
        # every shard always had a live copy: /healthz never said 503 (ready, or degraded while down)
        assert server.health_seen and all(code == 200 and st in ("ready", "degraded") for code, st in server.health_seen)
        # serving resumed on the restarted server without anyone stepping in
        calls = server.engine.host_states()[0]["calls"]
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in range(6):
                r = client.post("/v1/predict", json=samples[i])
                assert r.status_code == 200 and np.allclose(r.json()["predictions"], probs[i:i + 1], atol=1e-6)
            health = client.get("/healthz").json()
            metrics = client.get("/metrics").text
        assert server.engine.host_states()[0]["calls"] > calls
        assert health["status"] == "ready" and [s["status"] for s in health["shards"]] == ["up", "up"]
        assert 'updlrm_shard_restarts_total{host="0"} 1' in metrics and 'updlrm_shard_up{host="0"} 1' in metrics
        # while host 0 is marked down (as after a failed call), /healthz says degraded and host 1 serves
        with server.engine._lock:
            server.engine.hosts[0].status = "down"
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                r = client.get("/healthz")
                assert r.status_code == 200 and r.json()["status"] == "degraded"
                assert [s["status"] for s in r.json()["shards"]] == ["down", "up"]
                r = client.post("/v1/predict", json={"samples": samples[:4]})
                assert r.status_code == 200 and np.allclose(r.json()["predictions"], probs[:4], atol=1e-6)
        finally:
            with server.engine._lock:
                server.engine.hosts[0].status = "up"
    finally:
        server.close()


def test_failover_without_replicas_answers_503_never_wrong(cluster, tiny_reference):
    samples, probs = tiny_reference
    server = _Server(hosts=2, replicas=1)
    try:
        results, before, during, pid = _kill_under_load(server, samples, probs)
        codes = [r[0] for r in results]
        assert set(codes) <= {200, 503}, f"unexpected statuses {sorted(set(codes))}: {[r for r in results if r[0] not in (200, 503)][:2]}"
        assert all(r[1] for r in results if r[0] == 200), "a 200 answer was wrong"
        unavailable = [r for r in results if r[0] == 503]
        assert unavailable, "no request got 503 while its shard server was down"
        assert all(r[2] == "1" for r in unavailable), "a 503 lacks Retry-After"
        assert all("host 0" in r[3] for r in unavailable), unavailable[:2]
        # while a shard has no live copy: /healthz 503 "loading", and predict fails fast with 503
        with server.engine._lock:
            server.engine.hosts[0].status = "down"
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                r = client.get("/healthz")
                assert r.status_code == 503 and r.json()["status"] == "loading"
                t0 = time.perf_counter()
                r = client.post("/v1/predict", json=samples[0])
                assert r.status_code == 503 and r.headers["retry-after"] == "1" and time.perf_counter() - t0 < 1.0
        finally:
            with server.engine._lock:
                server.engine.hosts[0].status = "up"
        # after the restart: serving resumes without operator action
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in range(6):
                r = client.post("/v1/predict", json=samples[i])
                assert r.status_code == 200 and np.allclose(r.json()["predictions"], probs[i:i + 1], atol=1e-6)
            assert client.get("/healthz").json()["status"] == "ready"
    finally:
        server.close()


def test_unavailable_shard_fails_fast(cluster, model):
    """While a shard has no live replica, predict raises at once (no waiting on the restart)."""
    plan = make_host_plan(list(CONFIG.tables), 2, 4, 1, dpu_strategy=None)
    with ShardedEngine(model, plan, backend="cpu") as sharded:
        batch = _batches(1)[0]
        with sharded._lock:  # as the front end marks a host whose call failed
            sharded.hosts[1].status = "down"
        t0 = time.perf_counter()
        with pytest.raises(ShardUnavailableError, match="host 1 down"):
            sharded.predict(batch)
        assert time.perf_counter() - t0 < 1.0
        assert sharded.health()[0] == "loading"
        with sharded._lock:
            sharded.hosts[1].status = "up"
        assert sharded.health() == ("ready", None)
        assert sharded.predict(batch).shape == (batch.batch_size,)


def test_restarts_exhausted_reports_failed(cluster, model):
    """With no restarts left the host ends "failed" (not "loading" forever); its replica serves on."""
    plan = make_host_plan(list(CONFIG.tables), 2, 4, 2, dpu_strategy=None)
    ref = Engine(model, backend="cpu")
    with ShardedEngine(model, plan, backend="cpu", max_restarts=0, failed_after_s=1.0) as sharded:
        batch = _batches(1)[0]
        os.kill(sharded.shard_pid(0), signal.SIGKILL)
        for _ in range(3):  # the first call finds host 0 dead and moves to host 1
            torch.testing.assert_close(sharded.predict(batch), ref.predict(batch), rtol=0, atol=1e-6)
        deadline = time.monotonic() + WAIT_S
        while sharded.host_states()[0]["status"] != "failed" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sharded.host_states()[0]["status"] == "failed"
        status, why = sharded.health()
        assert status == "degraded" and "host 0 failed" in why


def test_serve_command_with_ray(tiny_reference):
    """`updlrm serve --ray local` end to end in its own process: ready, correct answers, the
    shard-aware /healthz and /v1/model, and a graceful SIGTERM (exit 0, Ray stopped)."""
    import subprocess
    import sys

    samples, probs = tiny_reference
    proc = subprocess.Popen([sys.executable, "-m", "updlrm.cli", "serve", "--ray", "local", "--model", "tiny",
                             "--hosts", "2", "--replicas", "2", "--port", "0", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on http://" in line, line
        url = line.split("listening on ")[1].split()[0]
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            r = httpx.get(url + "/healthz", timeout=10)
            if r.status_code == 200:
                break
            assert r.json()["status"] == "loading"
            time.sleep(0.3)
        assert r.status_code == 200 and len(r.json()["shards"]) == 2
        info = httpx.get(url + "/v1/model", timeout=10).json()
        assert info["backend"] == "ray:cpu" and info["plan"]["nr_hosts"] == 2 and info["plan"]["replicas"] == 2
        r = httpx.post(url + "/v1/predict", json={"samples": samples[:8]}, timeout=30)
        assert r.status_code == 200 and np.allclose(r.json()["predictions"], probs[:8], rtol=0, atol=1e-6)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
