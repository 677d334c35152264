"""Unit tests of the serving parts without a server: request validation, batch merging (against
torch EmbeddingBag per request), the dynamic batcher's batching/splitting/overload/failure rules,
and the Prometheus exposition."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from updlrm.errors import DpuFaultError, InvalidBatchError
from updlrm.serving.batcher import DynamicBatcher, EngineError, QueueFullError, ShuttingDownError, merge_requests
from updlrm.serving.metrics import Counter, Gauge, Histogram, Registry
from updlrm.serving.schema import ParsedRequest, RequestError, RequestValidator

NAMES = ["a", "b", "c"]
ROWS = [10, 3, 1000]
N_DENSE = 2


def validator(**kw) -> RequestValidator:
    return RequestValidator(N_DENSE, NAMES, ROWS, **kw)


def sample(dense=(0.5, 1.0), a=(1,), b=(), c=(999, 0)) -> dict:
    return {"dense": list(dense), "sparse": {"a": list(a), "b": list(b), "c": list(c)}}


def body(doc) -> bytes:
    return json.dumps(doc).encode()


def rand_request(rng, n, n_dense=N_DENSE, rows=ROWS, max_len=4) -> ParsedRequest:
    lengths = rng.integers(0, max_len + 1, size=(len(rows), n)).astype(np.int64)
    ids = np.concatenate([rng.integers(0, rows[t], size=int(lengths[t].sum())) for t in range(len(rows))])
    dense = rng.standard_normal((n, n_dense)).astype(np.float32)
    return ParsedRequest(dense=dense, lengths=lengths, indices=ids.astype(np.int64))


# -- validation ----------------------------------------------------------------------------------

def test_single_and_listed_requests_parse_to_table_major_arrays():
    v = validator()
    one = v.parse(body(sample()))
    assert one.nr_samples == 1
    np.testing.assert_array_equal(one.lengths, [[1], [0], [2]])
    np.testing.assert_array_equal(one.indices, [1, 999, 0])
    two = v.parse(body({"samples": [sample(a=(2, 3)), sample(dense=(7, 8), a=(), b=(2,), c=(5,))]}))
    np.testing.assert_array_equal(two.lengths, [[2, 0], [0, 1], [2, 1]])
    np.testing.assert_array_equal(two.indices, [2, 3, 2, 999, 0, 5])  # a: s0,s1 | b: s1 | c: s0,s1
    np.testing.assert_array_equal(two.dense, np.array([[0.5, 1.0], [7, 8]], dtype=np.float32))
    bare = v.parse(body([sample(), sample()]))
    assert bare.nr_samples == 2


@pytest.mark.parametrize(
    "doc, status, must_contain, field",
    [
        (b"{not json", 422, ["malformed JSON"], "body"),
        ({"dense": [1.0], "sparse": sample()["sparse"]}, 422, ["dense has 1 values", "takes 2"], "sample.dense"),
        (sample() | {"sparse": {"a": [1], "b": [], "c": [], "zz": [1]}}, 422, ["unknown table 'zz'"], "sample.sparse.zz"),
        (sample() | {"sparse": {"a": [1], "c": []}}, 422, ["lacks table 'b'"], "sample.sparse.b"),
        ({"samples": [sample(), sample(c=(5, 1000))]}, 422, ["1000", "'c'", "[0, 1000)"], "samples[1].sparse.c[1]"),
        ({"samples": [sample(a=(-1,))]}, 422, ["-1", "[0, 10)"], "samples[0].sparse.a[0]"),
        ({"samples": [sample(b=(1, "x"))]}, 422, ["valid integer"], "samples[0].sparse.b[1]"),
        ({"samples": [sample(a=(1.5,))]}, 422, ["valid integer"], "samples[0].sparse.a[0]"),
        ({"samples": [sample(dense=("1", 2))]}, 422, ["valid number"], "samples[0].dense[0]"),
        ({"samples": [sample() | {"extra": 1}]}, 422, ["Extra inputs"], "samples[0].extra"),
        ({"samples": []}, 422, ["no samples"], "samples"),
        ({"samples": [sample()] * 5}, 413, ["5 samples"], "samples"),
        ({"samples": [sample(c=tuple(range(9)))]}, 413, ["9 ids"], "samples[0].sparse.c"),
        ({"dense": [1e39, 0], "sparse": sample()["sparse"]}, 422, ["overflows float32"], "sample.dense[0]"),
        (b"[1, 2]", 422, ["valid dictionary"], "samples[0]"),
        (b"42", 422, ["must be a sample object"], "body"),
        (b'{"dense": [NaN, 1], "sparse": {"a": [], "b": [], "c": []}}', 422, ["finite"], "sample.dense[0]"),
    ],
)
def test_bad_requests_name_field_table_position_and_range(doc, status, must_contain, field):
    v = validator(max_request_samples=4, max_lookups_per_bag=8)
    raw = doc if isinstance(doc, bytes) else body(doc)
    with pytest.raises(RequestError) as info:
        v.parse(raw)
    err = info.value
    assert err.status == status
    for text in must_contain:
        assert text in err.message, err.message
    assert err.field == field, err.message


def test_out_of_range_error_carries_table_position_and_allowed_range():
    with pytest.raises(RequestError) as info:
        validator().parse(body({"samples": [sample(), sample(c=(0, 1, 1000, 2000))]}))
    err = info.value
    assert (err.table, err.position, err.allowed) == ("c", 2, "[0, 1000)")
    assert "1 more bad id" in err.message


# -- merging ---------------------------------------------------------------------------------------

def embedding_bag_reference(weights, req: ParsedRequest) -> torch.Tensor:
    """Pooled [n, T, d] of one request with torch EmbeddingBag (sum), table by table."""
    out, start = [], 0
    for t, w in enumerate(weights):
        lens = torch.from_numpy(req.lengths[t])
        ids = torch.from_numpy(req.indices[start:start + int(lens.sum())])
        start += int(lens.sum())
        offs = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)[:-1]])
        out.append(torch.nn.functional.embedding_bag(ids, w, offs, mode="sum"))
    return torch.stack(out, dim=1)


def test_merge_requests_matches_per_request_embedding_bags():
    rng = np.random.default_rng(0)
    weights = [torch.randn(r, 4, generator=torch.Generator().manual_seed(r)) for r in ROWS]
    reqs = [rand_request(rng, n) for n in (1, 3, 1, 5, 2)]
    merged = merge_requests(reqs)
    b = merged.batch_size
    assert b == 12 and merged.offsets.shape == (len(ROWS) * b + 1,)
    np.testing.assert_array_equal(merged.row_starts, [0, 1, 4, 5, 10, 12])
    pooled = []
    for t, w in enumerate(weights):  # the merged batch, read table by table as the engine does
        lo, hi = merged.offsets[t * b], merged.offsets[(t + 1) * b]
        ids = torch.from_numpy(merged.indices[lo:hi])
        offs = torch.from_numpy(merged.offsets[t * b:(t + 1) * b] - lo)
        pooled.append(torch.nn.functional.embedding_bag(ids, w, offs, mode="sum"))
    pooled = torch.stack(pooled, dim=1)
    expected = torch.cat([embedding_bag_reference(weights, r) for r in reqs])
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(merged.dense, np.concatenate([r.dense for r in reqs]))


# -- the batcher -----------------------------------------------------------------------------------

def score(merged) -> np.ndarray:
    """A stand-in engine: per sample, dense sum + 1e-3 * sum of (table+1) * id (NumPy reference)."""
    b = merged.batch_size
    table_of_bag = np.repeat(np.arange(merged.nr_tables), b)
    lens = np.diff(merged.offsets)
    weight = np.repeat(table_of_bag + 1, lens)
    per_bag = np.zeros(len(lens))
    np.add.at(per_bag, np.repeat(np.arange(len(lens)), lens), merged.indices * weight)
    per_sample = per_bag.reshape(merged.nr_tables, b).sum(axis=0)
    return merged.dense.sum(axis=1).astype(np.float64) + 1e-3 * per_sample


def expected_scores(req: ParsedRequest) -> np.ndarray:
    return score(merge_requests([req]))


class Recorder:
    """run_batch that records batch sizes, checks one call at a time, and can sleep or fail."""

    def __init__(self, delay_s=0.0, fail_when=None):
        self.sizes, self.delay_s, self.fail_when = [], delay_s, fail_when
        self.active, self.max_active, self.lock = 0, 0, threading.Lock()

    def __call__(self, merged):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.sizes.append(merged.batch_size)
            if self.delay_s:
                time.sleep(self.delay_s)
            if self.fail_when is not None:
                err = self.fail_when(merged)
                if err is not None:
                    raise err
            return score(merged).astype(np.float32), None
        finally:
            with self.lock:
                self.active -= 1


def run(coro):
    return asyncio.run(coro)


def test_batcher_merges_concurrent_requests_and_splits_answers_in_order():
    rng = np.random.default_rng(1)
    reqs = [rand_request(rng, int(n)) for n in rng.integers(1, 4, size=80)]
    rec = Recorder(delay_s=0.005)

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = DynamicBatcher(rec, ex, max_batch=16, max_wait_s=0.01, max_queue=1000)
            b.start()
            futs = [b.submit(r) for r in reqs]
            got = await asyncio.gather(*futs)
            await b.close()
            return got

    got = run(main())
    for r, g in zip(reqs, got):
        np.testing.assert_allclose(g, expected_scores(r), rtol=1e-6, atol=1e-5)
    assert max(rec.sizes) <= 16 and sum(rec.sizes) == sum(r.nr_samples for r in reqs)
    assert len(rec.sizes) < len(reqs) / 3  # requests really were merged
    assert rec.max_active == 1  # one engine call at a time


def test_batcher_overlaps_filling_with_running_and_respects_max_wait():
    rng = np.random.default_rng(2)
    rec = Recorder(delay_s=0.3)  # long enough that a loaded machine still sees the overlap

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = DynamicBatcher(rec, ex, max_batch=64, max_wait_s=0.02, max_queue=1000)
            b.start()
            t0 = time.perf_counter()
            first = b.submit(rand_request(rng, 1))
            await first
            lone_latency = time.perf_counter() - t0
            # while one batch runs, 10 more requests arrive: they form the next batch together
            running = b.submit(rand_request(rng, 1))
            await asyncio.sleep(0.1)  # the batch of `running` is in the engine now
            more = [b.submit(rand_request(rng, 1)) for _ in range(10)]
            await asyncio.gather(running, *more)
            await b.close()
            return lone_latency

    lone = run(main())
    assert 0.02 + 0.3 <= lone < 0.02 + 0.3 + 0.5  # waited max_wait, then one service time
    assert rec.sizes == [1, 1, 10]


def test_queue_full_is_immediate_and_changes_nothing():
    rng = np.random.default_rng(3)
    rec = Recorder(delay_s=0.1)

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = DynamicBatcher(rec, ex, max_batch=4, max_wait_s=0.0, max_queue=6)
            b.start()
            running = b.submit(rand_request(rng, 4))
            await asyncio.sleep(0.02)  # in the engine
            queued = [b.submit(rand_request(rng, 3)), b.submit(rand_request(rng, 3))]
            assert b.queued_rows == 6
            t0 = time.perf_counter()
            with pytest.raises(QueueFullError) as info:
                b.submit(rand_request(rng, 1))
            assert time.perf_counter() - t0 < 0.01
            assert info.value.retry_after_s >= 1
            assert b.queued_rows == 6 and b.queued_requests == 2
            await asyncio.gather(running, *queued)
            ok_again = await b.submit(rand_request(rng, 2))  # recovered
            await b.close()
            with pytest.raises(ShuttingDownError):
                b.submit(rand_request(rng, 1))
            return ok_again

    assert run(main()).shape == (2,)


def test_engine_error_fails_only_its_batch_and_batcher_goes_on():
    rng = np.random.default_rng(4)
    poison = 1234.5

    def fail_when(merged):
        if (merged.dense == poison).any():
            return DpuFaultError("DPU 3 faulted: DMA of 12 bytes", dpu=3, tasklet=1, reason="size not multiple of 8")
        return None

    rec = Recorder(fail_when=fail_when)
    records = []

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = DynamicBatcher(rec, ex, max_batch=8, max_wait_s=0.05, max_queue=100, observer=records.append)
            b.start()
            bad = rand_request(rng, 1)
            bad.dense[0, 0] = poison
            same_batch = [b.submit(rand_request(rng, 1)), b.submit(bad), b.submit(rand_request(rng, 1))]
            res = await asyncio.gather(*same_batch, return_exceptions=True)
            later = rand_request(rng, 2)
            after = await b.submit(later)
            await b.close()
            return res, later, after

    res, later, after = run(main())
    assert all(isinstance(r, EngineError) and r.kind == "DpuFaultError" for r in res)
    assert "DPU 3" in str(res[1])
    np.testing.assert_allclose(after, expected_scores(later), rtol=1e-6, atol=1e-5)
    assert [r.error is not None for r in records] == [True, False]


def test_invalid_batch_from_engine_is_isolated_to_the_bad_request():
    rng = np.random.default_rng(5)
    poison = -777.0

    def fail_when(merged):
        if (merged.dense == poison).any():
            return InvalidBatchError("dense[0, 0] rejected")
        return None

    rec = Recorder(fail_when=fail_when)

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = DynamicBatcher(rec, ex, max_batch=8, max_wait_s=0.05, max_queue=100)
            b.start()
            reqs = [rand_request(rng, 2) for _ in range(3)]
            reqs[1].dense[1, 0] = poison
            res = await asyncio.gather(*(b.submit(r) for r in reqs), return_exceptions=True)
            await b.close()
            return reqs, res

    reqs, res = run(main())
    assert isinstance(res[1], EngineError) and res[1].kind == "InvalidBatchError"
    for i in (0, 2):
        np.testing.assert_allclose(res[i], expected_scores(reqs[i]), rtol=1e-6, atol=1e-5)


def test_close_runs_everything_queued():
    rng = np.random.default_rng(6)
    rec = Recorder(delay_s=0.01)

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = DynamicBatcher(rec, ex, max_batch=2, max_wait_s=10.0, max_queue=100)
            b.start()
            futs = [b.submit(rand_request(rng, 1)) for _ in range(7)]
            await b.close()  # does not wait the 10 s deadline
            return [f.done() and f.exception() is None for f in futs]

    t0 = time.perf_counter()
    assert all(run(main()))
    assert time.perf_counter() - t0 < 5


# -- metrics exposition ----------------------------------------------------------------------------

def test_prometheus_text_exposition():
    reg = Registry()
    c = reg.add(Counter("x_total", "things", ("kind",)))
    h = reg.add(Histogram("lat_seconds", "latency", (0.1, 1.0)))
    reg.add(Gauge("depth", "queue", read=lambda: 3))
    c.inc(kind='say "hi"')
    c.inc(2, kind="b")
    for v in (0.05, 0.1, 0.5, 7.0):
        h.observe(v)
    text = reg.render()
    lines = text.splitlines()
    assert "# TYPE x_total counter" in lines and "# TYPE lat_seconds histogram" in lines
    assert 'x_total{kind="say \\"hi\\""} 1' in lines and 'x_total{kind="b"} 2' in lines
    assert 'lat_seconds_bucket{le="0.1"} 2' in lines  # le is inclusive
    assert 'lat_seconds_bucket{le="1"} 3' in lines and 'lat_seconds_bucket{le="+Inf"} 4' in lines
    assert "lat_seconds_count 4" in lines and "lat_seconds_sum 7.65" in lines
    assert "depth 3" in lines
    with pytest.raises(ValueError):
        c.inc(kind="a", extra="b")
    with pytest.raises(ValueError):
        c.inc(-1, kind="a")


# -- load test arguments ---------------------------------------------------------------------------

def test_loadtest_is_loopback_only_and_bounded_by_default():
    from updlrm.serving.loadtest import is_loopback_host, run_loadtest

    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("10.1.2.3") and not is_loopback_host("8.8.8.8")
    with pytest.raises(ValueError, match="non-loopback"):
        run_loadtest("http://10.1.2.3:8000", requests=1)
    for kwargs, what in (({"concurrency": 0}, "concurrency"), ({"concurrency": 5000}, "concurrency"),
                         ({"requests": 0}, "requests"), ({"duration_s": 0}, "duration"),
                         ({"duration_s": 1e6}, "duration")):
        with pytest.raises(ValueError, match=what):
            run_loadtest("http://127.0.0.1:9", **kwargs)
    with pytest.raises(ValueError, match="http://HOST:PORT"):
        run_loadtest("ftp://127.0.0.1:9")


# -- the app in-process: the FastAPI route and the ASGI fast path answer alike -------------------

@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_fastapi_route_and_fast_path_give_the_same_answers():
    from fastapi.testclient import TestClient

    from updlrm.partition import TableSpec
    from updlrm.serving.app import create_app
    from updlrm.serving.loader import LoadedModel, ServeSettings

    def loader(settings):
        return LoadedModel(name="stand-in", backend="cpu", n_dense=N_DENSE,
                           tables=[TableSpec(n, r, 4) for n, r in zip(NAMES, ROWS)],
                           run_batch=lambda merged: (score(merged).astype(np.float32), None))

    doc = {"samples": [sample(), sample(dense=(3, 4), a=(9,), c=())]}
    expected = score(merge_requests([validator().parse(body(doc))]))
    answers = []
    for fast in (True, False):  # an app serves one lifespan: a new one for each path
        wrapper = create_app(ServeSettings(max_batch=8, max_wait_ms=1), loader)
        asgi = wrapper if fast else wrapper.app  # the fast path, or FastAPI's own route
        with TestClient(asgi) as client:
            deadline = time.monotonic() + 30
            while client.get("/healthz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.01)
            r = client.post("/v1/predict", json=doc, headers={"X-Request-Id": "r1"})
            assert r.status_code == 200 and r.headers["x-request-id"] == "r1"
            answers.append(r.json()["predictions"])
            bad = client.post("/v1/predict", json={"samples": [sample(a=(10,))]})
            assert bad.status_code == 422 and bad.json()["error"]["table"] == "a"
    np.testing.assert_allclose(answers[0], expected, rtol=1e-6)
    assert answers[0] == answers[1]


def test_a_dead_batching_loop_fails_queued_requests_instead_of_hanging():
    rng = np.random.default_rng(8)

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = DynamicBatcher(Recorder(), ex, max_batch=4, max_wait_s=10.0, max_queue=100)
            b.start()
            fut = b.submit(rand_request(rng, 1))
            b._running = None  # break the loop: checking the engine slots now raises
            b._wakeup.set()
            b.submit(rand_request(rng, 3))  # fills the batch: the loop goes for the engine
            with pytest.raises(EngineError) as info:
                await asyncio.wait_for(fut, 5)
            assert info.value.kind == "BatcherFailed"
            with pytest.raises(ShuttingDownError):
                b.submit(rand_request(rng, 1))
            await b.close()

    run(main())


# -- engine process: crash recovery ---------------------------------------------------------------

CRASH = 777.0  # a dense value on which the engine process below dies (like an emulator crash)


def crashing_loader(settings):
    """Runs in the spawned engine process (pickled by name): the tiny model, whose process exits
    with code 3 on a batch holding the dense value CRASH."""
    import os

    from updlrm.serving.loader import load_model

    model = load_model(settings)
    real = model.run_batch

    def run_batch(merged):
        if (merged.dense == CRASH).any():
            os._exit(3)
        return real(merged)

    model.run_batch = run_batch
    return model


def test_engine_process_is_restarted_after_a_crash_and_gives_up_past_the_bound():
    from updlrm import configs
    from updlrm.batch import Batch
    from updlrm.engine import Engine
    from updlrm.model import DLRM
    from updlrm.serving.batcher import MergedBatch
    from updlrm.serving.engine_process import EngineProcess
    from updlrm.serving.loader import ServeSettings

    config = configs.get("tiny")
    rng = np.random.default_rng(3)
    n = 5
    lengths = rng.integers(0, 4, size=(len(config.tables), n))
    indices = np.concatenate([rng.integers(0, t.rows, size=int(lengths[k].sum()))
                              for k, t in enumerate(config.tables)]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths.reshape(-1))]).astype(np.int64)
    dense = rng.standard_normal((n, config.n_dense)).astype(np.float32)
    with Engine(DLRM(config), backend="cpu") as ref:
        expected = ref.predict(Batch(torch.from_numpy(dense), torch.from_numpy(indices),
                                     torch.from_numpy(offsets))).numpy()
    good = MergedBatch(dense=dense, indices=indices, offsets=offsets, row_starts=np.array([0, n]))
    crash_dense = dense.copy()
    crash_dense[2, 1] = CRASH
    bad = MergedBatch(dense=crash_dense, indices=indices, offsets=offsets, row_starts=np.array([0, n]))

    settings = ServeSettings(model="tiny", engine_max_restarts=1, engine_restart_window_s=600)
    proc = EngineProcess(settings, load_timeout_s=120, loader=crashing_loader)
    try:
        np.testing.assert_allclose(proc.run_batch(good)[0], expected, rtol=1e-5, atol=1e-6)
        first_pid = proc._child.process.pid
        with pytest.raises(EngineError) as info:  # the crash fails only this batch ...
            proc.run_batch(bad)
        assert info.value.kind == "EngineProcessDied" and "exit code 3" in info.value.message
        status, reason = proc.health()  # ... and a new process is loading
        assert status == "restarting" and "exit code 3" in reason, (status, reason)
        assert proc.restarts == 1
        # the next batch waits for the new process and is served by it
        np.testing.assert_allclose(proc.run_batch(good)[0], expected, rtol=1e-5, atol=1e-6)
        assert proc.health() == ("ready", None) and proc._child.process.pid != first_pid
        # a second death within the window exceeds engine_max_restarts=1: failed for good, with why
        with pytest.raises(EngineError):
            proc.run_batch(bad)
        status, reason = proc.health()
        assert status == "failed" and "at most 1 restarts" in reason and "exit code 3" in reason, reason
        assert proc.restarts == 1
        with pytest.raises(EngineError) as info:
            proc.run_batch(good)
        assert info.value.kind == "EngineProcessDied" and "at most 1 restarts" in info.value.message
    finally:
        proc.close(timeout_s=10)
    assert not proc._child.process.is_alive()


# -- batch deadline and staging (issue 10) ---------------------------------------------------------

class Gate:
    """run_batch that blocks each batch until released (a hung engine), recording batch sizes."""

    def __init__(self):
        self.open = threading.Event()
        self.sizes = []

    def __call__(self, merged):
        self.sizes.append(merged.batch_size)
        assert self.open.wait(30), "gate never opened"
        return score(merged).astype(np.float32), None


def test_a_batch_past_its_deadline_fails_with_engine_timeout_and_the_batcher_reports_stuck():
    rng = np.random.default_rng(12)
    reqs = [rand_request(rng, 2) for _ in range(2)]
    gate, timeouts = Gate(), []

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = DynamicBatcher(gate, ex, max_batch=4, max_wait_s=0.001, max_queue=16, batch_timeout_s=0.3,
                               on_timeout=timeouts.append)
            b.start()
            t0 = time.perf_counter()
            with pytest.raises(EngineError) as info:
                await asyncio.wait_for(b.submit(reqs[0]), 10)
            assert info.value.kind == "EngineTimeout" and "within 0.3 s" in info.value.message
            assert 0.25 < time.perf_counter() - t0 < 5
            assert b.stuck is not None and timeouts == [b.stuck]
            gate.open.set()  # the engine returns: no longer stuck, and serves again
            got = await asyncio.wait_for(b.submit(reqs[1]), 10)
            assert b.stuck is None
            np.testing.assert_allclose(got, score(merge_requests([reqs[1]])), rtol=1e-6)
            await b.close()

    run(main())


def test_a_full_batch_is_staged_behind_the_running_one_and_a_partial_one_keeps_growing():
    rng = np.random.default_rng(13)
    first, *rest = [rand_request(rng, 1) for _ in range(7)]
    gate = Gate()

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = DynamicBatcher(gate, ex, max_batch=4, max_wait_s=0.001, max_queue=16)
            b.start()
            futs = [b.submit(first)]
            await asyncio.sleep(0.05)  # batch [first] runs (blocked)
            futs += [b.submit(r) for r in rest[:2]]
            await asyncio.sleep(0.05)  # 2 samples: not a full batch, it waits for the engine
            assert b.inflight_batches == 1 and b.queued_rows == 2
            futs += [b.submit(r) for r in rest[2:]]
            await asyncio.sleep(0.05)  # 6 queued: a full batch of 4 is staged, 2 keep waiting
            assert b.inflight_batches == 2 and b.queued_rows == 2
            gate.open.set()
            got = await asyncio.wait_for(asyncio.gather(*futs), 10)
            await b.close()
            return got

    got = run(main())
    assert gate.sizes == [1, 4, 2]
    for req, p in zip([first] + rest, got):
        np.testing.assert_allclose(p, score(merge_requests([req])), rtol=1e-6)
