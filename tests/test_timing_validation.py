"""The timing model against a published end-to-end DLRM-on-UPMEM point: PIM-Embedding-Lookup's
1,920-DPU run (upmem/PERF.md, logged 3.4-4.0 ms per batch). The counters are built analytically
by benchmarks/bench_timing_validation.py from their kernel and host code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from updlrm.timing_model import TimingModel

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_timing_validation.py"


@pytest.fixture(scope="module")
def validation():
    spec = importlib.util.spec_from_file_location("bench_timing_validation", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_published_point_within_30_percent(validation):
    topo, kernel, transfers = validation.published_point()
    assert topo.nr_dpus == 1920 and topo.nr_ranks == 31
    mb = TimingModel.default().model_batch(topo, kernel, transfers)
    lo, hi = validation.LOGGED_MS
    mid_s = (lo + hi) / 2 * 1e-3
    assert mb.seconds == pytest.approx(mid_s, rel=0.30)
    # what makes the point: transfers dominate (4 system-wide transfers on 31 ranks)
    transfers_s = mb.get("cpu_to_dpu").seconds + mb.get("dpu_to_cpu").seconds
    assert transfers_s > 0.7 * mb.seconds
    assert mb.get("cpu_to_dpu").detail["transfers"] == 3


def test_published_point_counts(validation):
    _, kernel, transfers = validation.published_point()
    # 32 samples x 128 lookups per DPU, one 8-byte row read each, plus tasklet 0's staging
    assert kernel.lookups.max() == kernel.lookups.min() == 4096
    assert kernel.dma_read_ops[0].sum() == 4096 + 1 + 8 + 1
    assert transfers.to_dpu_lengths.tolist() == [16384.0, 128.0, 8.0]
