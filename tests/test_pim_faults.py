"""PIM backend failure paths: kernel error statuses and DPU faults raise DpuFaultError and leave
the backend usable; bad inputs and unavailable devices give clear errors; the int32 scale never
overflows at its bag limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from updlrm.errors import BackendUnavailableError, DpuFaultError, InvalidBatchError
from updlrm.partition import PlanError, TableSpec, Topology, make_plan
from updlrm.pim import PimEmbedding, fixed_point_scales

REPO = Path(__file__).resolve().parents[1]


def _plan(rows, dim, nr_dpus, nr_tasklets=16):
    return make_plan([TableSpec("t0", rows, dim)], Topology(nr_dpus=nr_dpus, nr_tasklets=nr_tasklets), "row_uniform")


def _ref(w, idx, offs):
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(w).double(), mode="sum")
    return bag(torch.from_numpy(idx), torch.from_numpy(offs[:-1])).numpy()


def lying_spec(pim, table: int, shift: int) -> tuple[dict, dict, int]:
    """(good, bad, first) native plan specs: ``bad`` moves the boundary between ``table``'s last two
    base ranges ``shift`` rows up, so ids first .. first+shift-1 map to local rows past the end
    of the earlier range's shard: the kernel meets them as a host/DPU disagreement would give (an
    error status), while the ids themselves stay valid for the table."""
    scales = np.zeros(0) if pim.scales is None else np.repeat(pim.scales, pim._layout.dims)
    good = pim._layout.native_spec(pim.dtype, scales)
    bad = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in good.items()}
    ranges = np.flatnonzero((bad["group_table"] == table) & (bad["group_kind"] == 0))
    ranges = ranges[np.argsort(bad["group_lo"][ranges])]
    prev, last = ranges[-2], ranges[-1]
    first = int(bad["group_lo"][last])
    bad["group_hi"][prev] += shift
    bad["group_lo"][last] += shift
    return good, bad, first


def test_kernel_error_status_raises_and_next_batch_works():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 16)).astype(np.float32)
    with PimEmbedding([w], _plan(64, 16, 2)) as pim:
        idx = rng.integers(0, 64, size=40).astype(np.int64)
        offs = np.array([0, 10, 25, 40], dtype=np.int64)
        good, bad, first = lying_spec(pim, 0, 20)
        pim._rt.set_plan(bad)
        bad_idx = idx % first  # only the first range, but for one id
        bad_idx[17] = first + 13  # local row first+13 of the first range's shard (first rows)
        with pytest.raises(DpuFaultError) as info:
            pim.lookup(bad_idx, offs, 3)
        e = info.value
        assert e.dpu == 0 and 0 <= e.tasklet < 16
        assert "local row" in e.reason and str(first + 13) in e.reason
        pim._rt.set_plan(good)
        got = pim.lookup(idx, offs, 3)
        np.testing.assert_allclose(got[:, 0], _ref(w, idx, offs), rtol=1e-5, atol=1e-5)


POISON = r"""
/* The real lookup kernel, plus an unaligned MRAM read when a DPU gets exactly 7 lookups. */
#include <stdint.h>
#define main updlrm_lookup_main
#include "emb_lookup.c"
#undef main
static uint64_t poison_buf[2] __dma_aligned;
int main(void)
{
    if (me() == 0 && UPDLRM_ARGS.nr_lookups == 7)
        mram_read((__mram_ptr void *)(uintptr_t)((uint32_t)(uintptr_t)DPU_MRAM_HEAP_POINTER + 4), poison_buf, 8);
    return updlrm_lookup_main();
}
"""


def test_dpu_fault_raises_with_dpu_tasklet_reason_and_next_batch_works(tmp_path):
    emu = pytest.importorskip("updlrm.emu")
    src = tmp_path / "poisoned_lookup.c"
    src.write_text(POISON)
    kernel = emu.compile_kernel(
        str(src), nr_tasklets=4, include_dirs=[str(REPO / "dpu_kernels"), str(REPO / "dpu_kernels" / "include")],
        out_dir=str(tmp_path),
    )
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 8)).astype(np.float32)
    with PimEmbedding([w], _plan(32, 8, 1, nr_tasklets=4), kernel_path=str(kernel)) as pim:
        idx = rng.integers(0, 32, size=7).astype(np.int64)
        offs = np.array([0, 3, 7], dtype=np.int64)
        with pytest.raises(DpuFaultError) as info:
            pim.lookup(idx, offs, 2)
        assert info.value.dpu == 0 and info.value.tasklet == 0
        assert "align" in info.value.reason.lower()  # the emulator names the bad access
        idx5 = idx[:5]
        offs5 = np.array([0, 3, 5], dtype=np.int64)
        got = pim.lookup(idx5, offs5, 2)
        np.testing.assert_allclose(got[:, 0], _ref(w, idx5, offs5), rtol=1e-5, atol=1e-5)


def test_int32_bag_over_limit_is_rejected_and_state_unchanged():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((20, 4)).astype(np.float32)
    with PimEmbedding([w], _plan(20, 4, 2), dtype="int32", max_bag_lookups=8) as pim:
        idx = rng.integers(0, 20, size=12).astype(np.int64)
        with pytest.raises(InvalidBatchError, match=r"table 0, sample 1: bag of 9 lookups exceeds max_bag_lookups=8"):
            pim.lookup(idx, np.array([0, 3, 12], dtype=np.int64), 2)
        offs = np.array([0, 4, 12], dtype=np.int64)
        got = pim.lookup(idx, offs, 2)
        bound = pim.fixed_point_bound(np.diff(offs).reshape(1, 2))[0]
        err = np.abs(got[:, 0] - _ref(w, idx, offs)).max(axis=1)
        assert np.all(err <= bound)


def test_int32_scale_never_overflows_at_the_bag_limit():
    """A bag of max_bag_lookups copies of the largest-magnitude row: no int32 wrap-around."""
    M = 1000
    w = np.full((4, 6), -0.25, dtype=np.float32)
    w[2] = 3.0  # max |w|
    w[3, ::2] = -3.0
    scales = fixed_point_scales([w], M)
    assert np.all(np.abs(np.rint(w.astype(np.float64) * scales[0])) * M <= 2**31 - 1)
    with PimEmbedding([w], _plan(4, 6, 1), dtype="int32", max_bag_lookups=M) as pim:
        idx = np.array([2] * M + [3] * M, dtype=np.int64)
        offs = np.array([0, M, 2 * M], dtype=np.int64)
        got = pim.lookup(idx, offs, 2)[:, 0]
        ref = _ref(w, idx, offs)
        bound = pim.fixed_point_bound(np.array([[M, M]]))[0]
        assert np.all(np.abs(got - ref).max(axis=1) <= bound)
        assert got[0, 0] > 2999 and got[1, 0] < -2999  # no wrap-around to the other sign


def test_simulator_and_hw_need_the_sdk_module():
    w = np.zeros((8, 4), dtype=np.float32)
    try:
        import updlrm._native._sdk  # noqa: F401
    except ImportError:
        for device in ("simulator", "hw"):
            with pytest.raises(BackendUnavailableError, match="SDK"):
                PimEmbedding([w], _plan(8, 4, 1), device=device)
    else:  # pragma: no cover - only where the SDK was found at build time
        pytest.skip("the SDK module exists here")


def test_bad_arguments():
    w = np.zeros((8, 4), dtype=np.float32)
    plan = _plan(8, 4, 1)
    with pytest.raises(ValueError, match="dtype"):
        PimEmbedding([w], plan, dtype="fp16")
    with pytest.raises(ValueError, match="device"):
        PimEmbedding([w], plan, device="gpu")
    with pytest.raises(ValueError, match="1 weight tensors for a plan of"):
        PimEmbedding([w], make_plan([TableSpec("a", 8, 4), TableSpec("b", 8, 4)], Topology(nr_dpus=1), "row_uniform"))
    with pytest.raises(PlanError):
        PimEmbedding([np.zeros((9, 4), dtype=np.float32)], plan)  # shape differs from the plan
    with pytest.raises(ValueError, match="NaN"):
        PimEmbedding([np.full((8, 4), np.nan, dtype=np.float32)], plan)


def test_capacity_too_small_for_one_lookup_is_a_plan_error():
    w = np.ones((8, 600), dtype=np.float32)
    plan = _plan(8, 600, 1).replace(request_bytes=64, output_bytes=1024)  # a 2,400-byte row
    with PimEmbedding([w], plan) as pim:
        with pytest.raises(PlanError, match="output_bytes=1024"):
            pim.lookup(np.array([1], dtype=np.int64), np.array([0, 1], dtype=np.int64), 1)


def test_closed_backend_raises():
    w = np.zeros((8, 4), dtype=np.float32)
    pim = PimEmbedding([w], _plan(8, 4, 1))
    pim.close()
    pim.close()  # idempotent
    with pytest.raises(Exception, match="closed"):
        pim.lookup(np.zeros(0, dtype=np.int64), np.array([0, 0], dtype=np.int64), 1)


def test_kernel_rejects_a_layout_past_mram_then_recovers():
    """Launch args whose output region ends past the 64 MiB MRAM: the kernel reports
    UPDLRM_ERR_BAD_LAYOUT instead of writing out of range; the correct layout works again."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 4)).astype(np.float32)
    with PimEmbedding([w], _plan(16, 4, 1)) as pim:
        good = pim._layout.native_spec("fp32", np.zeros(0))
        bad = dict(good, output_offset=(64 << 20) - 64, request_capacity=good["request_capacity"])
        pim._rt.set_plan(bad)
        idx = np.array([1, 2, 3], dtype=np.int64)
        offs = np.array([0, 3], dtype=np.int64)
        with pytest.raises(DpuFaultError, match="exceed MRAM") as info:
            pim.lookup(idx, offs, 1)
        assert info.value.dpu == 0
        pim._rt.set_plan(good)
        np.testing.assert_allclose(pim.lookup(idx, offs, 1)[:, 0], _ref(w, idx, offs), rtol=1e-5, atol=1e-6)


def test_concurrent_lookups_from_threads_are_serialized_and_correct():
    """The native runtime releases the GIL; batches from several threads must not interleave."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    w = rng.standard_normal((200, 16)).astype(np.float32)
    batches = []
    for k in range(8):
        lens = rng.integers(0, 30, size=16)
        offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        batches.append((rng.integers(0, 200, size=int(lens.sum())).astype(np.int64), offs))
    with PimEmbedding([w], _plan(200, 16, 4)) as pim:
        with ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda b: pim.lookup(b[0], b[1], 16), batches * 3))
    for (idx, offs), got in zip(batches * 3, outs):
        np.testing.assert_allclose(got[:, 0], _ref(w, idx, offs), rtol=1e-5, atol=1e-5)


def test_failed_batch_keeps_last_stats_of_the_good_one():
    """A faulting batch raises with its own stats on the exception; last_stats stays the previous
    good batch's (the object and its counters)."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    with PimEmbedding([w], _plan(64, 8, 2)) as pim:
        idx = rng.integers(0, 64, size=40).astype(np.int64)
        offs = np.array([0, 10, 25, 40], dtype=np.int64)
        pim.lookup(idx, offs, 3)
        good = pim.last_stats
        assert int(np.sum(good.counters["lookups"])) == 40
        good_spec, bad_spec, first = lying_spec(pim, 0, 20)
        pim._rt.set_plan(bad_spec)
        bad_idx, bad_offs = idx[:12].copy(), np.array([0, 5, 12], dtype=np.int64)
        bad_idx[3] = first + 3  # past its shard's rows: a kernel error status
        with pytest.raises(DpuFaultError) as info:
            pim.lookup(bad_idx, bad_offs, 2)
        assert pim.last_stats is good
        assert int(np.sum(pim.last_stats.counters["lookups"])) == 40
        failed = info.value.stats
        assert failed is not good and int(np.sum(failed.counters["lookups"])) == 12
        pim._rt.set_plan(good_spec)
        bad_idx[3] = 7
        pim.lookup(bad_idx, bad_offs, 2)
        assert pim.last_stats is not good and int(np.sum(pim.last_stats.counters["lookups"])) == 12
