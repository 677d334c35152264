"""Scheduling as on hardware (tests/kernels/sched.c): by default tasklets switch at every DMA
and synchronization call, so a kernel whose result depends on interleaving gets the DPU's answer:
the trace of DMAs is round-robin, a handshake chain's notifier writes before its waiter (PrIM
UNI's pattern). The "run" schedule (race-free fast path) runs each tasklet until it blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from updlrm.emu import MRAM_HEAP_SYMBOL, EmuDpuSet, compile_kernel

KERNELS = Path(__file__).parent / "kernels"
T, ROUNDS = 16, 4


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("emu_sched")


def _kernel(build_dir, mode, race_free=False):
    return compile_kernel(KERNELS / "sched.c", nr_tasklets=T, defines=[f"MODE={mode}", f"ROUNDS={ROUNDS}"],
                          out_dir=build_dir, race_free=race_free)


def test_tasklets_interleave_at_every_dma(build_dir):
    with EmuDpuSet(2, _kernel(build_dir, 1)) as dpus:
        dpus.launch()
        trace = dpus.push_from("trace", T * ROUNDS * 4, dtype=np.uint32)
        for d in range(2):
            # every window of NR_TASKLETS consecutive DMAs holds every tasklet once: round-robin
            for k in range(ROUNDS):
                assert sorted(trace[d, k * T:(k + 1) * T].tolist()) == list(range(T))
            # the tasklet that released the barrier goes on first, then the released ones in order
            assert trace[d, :T].tolist() == [T - 1, *range(T - 1)]
        assert dpus.counters()["switches"][0] >= T * ROUNDS


def test_run_until_block_schedule_does_not_interleave(build_dir):
    # kernels marked race-free (compile_kernel(race_free=True)) get this fast path by default
    for so, policy in ((_kernel(build_dir, 1), "run"), (_kernel(build_dir, 1, race_free=True), None)):
        with EmuDpuSet(1, so) as dpus:
            if policy:
                dpus.set_schedule(policy)
            dpus.launch()
            trace = dpus.copy_from("trace", T * ROUNDS * 4, 0, dtype=np.uint32)
            assert trace[:ROUNDS].tolist() == [T - 1] * ROUNDS  # one tasklet's DMAs back to back


def test_handshake_chain_gets_the_hardware_order(build_dir):
    with EmuDpuSet(1, _kernel(build_dir, 2)) as dpus:
        dpus.launch()
        words = dpus.copy_from(MRAM_HEAP_SYMBOL, (3 * T + 1) * 8, 0, dtype=np.uint64)
    # block t is words [3t, 3t+3) = 100 + t; the notifier's 4th (garbage) word is overwritten by
    # the waiter's block, which on a DPU is written after it; only the last block's garbage stays
    want = np.repeat(100 + np.arange(T, dtype=np.uint64), 3).tolist() + [0xDEAD]
    assert words.tolist() == want


def test_mutex_keeps_read_modify_write_atomic_across_dmas(build_dir):
    with EmuDpuSet(1, _kernel(build_dir, 4)) as dpus:
        for policy in ("rr", "random", "run"):
            dpus.set_schedule(policy, seed=3)
            dpus.launch()
            assert dpus.copy_from("total", 4, 0, dtype=np.uint32)[0] == T * ROUNDS


def test_unprotected_read_modify_write_loses_updates_as_on_a_dpu(build_dir):
    # all tasklets read `total`, then DMA, then write: each round adds 1 in all, not NR_TASKLETS
    with EmuDpuSet(1, _kernel(build_dir, 3)) as dpus:
        dpus.launch()
        assert dpus.copy_from("total", 4, 0, dtype=np.uint32)[0] == ROUNDS


def test_schedule_arguments_are_checked(build_dir):
    with EmuDpuSet(1, _kernel(build_dir, 4)) as dpus:
        with pytest.raises(ValueError, match="schedule"):
            dpus.set_schedule("fifo")
        with pytest.raises(ValueError, match="seed"):
            dpus.set_schedule("random", -1)
    from updlrm.errors import NativeError

    with pytest.raises(NativeError, match="schedule=fifo"):
        EmuDpuSet(1, profile="schedule=fifo")
