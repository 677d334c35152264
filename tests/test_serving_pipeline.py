"""The serving loader's PipelinedRunner: a pim engine with two batches in flight behind the batcher.

Answers must equal the engine's one-batch predict (itself checked against torch elsewhere),
whatever the interleaving of callers; a lone batch must not wait for a second one (the queue
running dry flushes the pipeline); a bad batch fails alone.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import updlrm
from updlrm.batch import random_batch
from updlrm.errors import InvalidBatchError
from updlrm.serving.batcher import MergedBatch
from updlrm.serving.loader import PipelinedRunner


def _merged(batch) -> MergedBatch:
    return MergedBatch(batch.dense.numpy(), batch.indices.numpy(), batch.offsets.numpy(),
                       np.array([0, batch.batch_size], dtype=np.int64))


@pytest.fixture(scope="module")
def engine():
    cfg = updlrm.configs.get("tiny")
    with updlrm.Engine(updlrm.DLRM(cfg), backend="pim", nr_dpus=5, strategy="row_uniform", dtype="int32") as eng:
        yield eng


def test_two_callers_get_their_own_answers(engine):
    cfg = engine.config
    batches = [random_batch(cfg, b, pooling=5, alpha=1.1, seed=s) for s, b in enumerate((9, 3, 17, 1, 12, 6, 8, 2))]
    want = [engine.predict(b).numpy() for b in batches]
    runner = PipelinedRunner(engine)
    try:
        with ThreadPoolExecutor(2) as pool:  # the batcher's two engine threads
            got = list(pool.map(lambda b: runner.run_batch(_merged(b)), batches))
    finally:
        runner.close()
    for w, (probs, stats) in zip(want, got):
        np.testing.assert_array_equal(probs, w)
        assert stats is not None


def test_a_lone_batch_is_answered_without_a_second_one(engine):
    batch = random_batch(engine.config, 4, pooling=3, seed=2)
    runner = PipelinedRunner(engine)
    try:
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", runner.run_batch(_merged(batch))))
        t.start()
        t.join(timeout=30)
        assert not t.is_alive(), "a lone batch waited for another"
    finally:
        runner.close()
    np.testing.assert_array_equal(box["r"][0], engine.predict(batch).numpy())


def test_a_bad_batch_fails_alone(engine):
    cfg = engine.config
    good = random_batch(cfg, 5, pooling=4, seed=3)
    bad = random_batch(cfg, 5, pooling=4, seed=4)
    bad.indices[0] = cfg.tables[0].rows + 3
    runner = PipelinedRunner(engine)
    try:
        with ThreadPoolExecutor(2) as pool:
            f_bad = pool.submit(runner.run_batch, _merged(bad))
            f_good = pool.submit(runner.run_batch, _merged(good))
            with pytest.raises(InvalidBatchError):
                f_bad.result(timeout=30)
            probs, _ = f_good.result(timeout=30)
    finally:
        runner.close()
    np.testing.assert_array_equal(probs, engine.predict(good).numpy())
    with pytest.raises(RuntimeError, match="closed"):
        runner.run_batch(_merged(good))
