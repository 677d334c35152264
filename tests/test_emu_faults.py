"""Emulator faults: deliberately bad kernels (tests/kernels/bad.c, one MODE each) give a
DpuFaultError naming the DPU, the tasklet and the bad access; the same set then runs a good
kernel (and the same kernel on a non-faulting DPU assignment) normally."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from updlrm.emu import EmuDpuSet, compile_kernel
from updlrm.errors import DpuFaultError

KERNELS = Path(__file__).parent / "kernels"
NR_DPUS = 4
FAULT_DPU = 2  # gets dpu_tag 1 = FAULT_TAG
FAULT_TASKLET = 3


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("emu_bad_kernels")


@pytest.fixture(scope="module")
def good(build_dir):
    return compile_kernel(KERNELS / "good.c", nr_tasklets=16, defines=["ROUNDS=5"], out_dir=build_dir)


def _bad(build_dir, mode):
    return compile_kernel(KERNELS / "bad.c", nr_tasklets=16, defines=[f"MODE={mode}", "UPDLRM_EMU_NO_STATIC_DMA_CHECK"], out_dir=build_dir)


def _tag(dpus, culprit=FAULT_DPU):
    for d in range(dpus.nr_dpus):
        dpus.copy_to("dpu_tag", np.array([1 if d == culprit else 100 + d], np.uint32), dpu=d)


def _assert_recovers(dpus, good_kernel, bad_kernel):
    """After a fault: the same kernel without a culprit runs, then a good kernel runs."""
    _tag(dpus, culprit=-1)
    dpus.launch()
    for d in range(dpus.nr_dpus):
        assert int(dpus.copy_from("done", 4, d, dtype=np.uint32)[0]) >= 1
    dpus.load(good_kernel)
    dpus.launch()
    for d in range(dpus.nr_dpus):
        assert int(dpus.copy_from("counter", 4, d, dtype=np.uint32)[0]) == 16 * 5
        assert int(dpus.copy_from("violations", 4, d, dtype=np.uint32)[0]) == 0


CASES = [
    (1, r"mram_read MRAM address is not 8-byte aligned \(mram 0x0800[0-9a-f]{3}4"),
    (2, r"mram_read size 4 is not a multiple of 8 in \[8, 2048\]"),
    (3, r"mram_read size 4096 is not a multiple of 8 in \[8, 2048\]"),
    (4, r"mram_read: MRAM address 0xc000000 is outside MRAM \[0x08000000, 0x0c000000\)"),
    (5, r"mram_read WRAM address is not 8-byte aligned"),
    (6, r"mem_alloc\(60000\) exceeds the WRAM heap: \d+ of \d+ bytes left"),
    (11, r"mram_read WRAM range is not inside WRAM globals, a mem_alloc block or a tasklet stack \(mram 0x08[0-9a-f]{6} -> wram 0x10000, 8 bytes\)"),
    (12, r"halt\(\) called"),
    (10, r"mram_read: MRAM range \[0x0bfffff8, 0x0c000008\) runs past the end of MRAM"),
]


@pytest.mark.parametrize("mode,reason", CASES, ids=[f"mode{m}" for m, _ in CASES])
def test_bad_access_faults_with_dpu_tasklet_and_reason(build_dir, good, mode, reason):
    bad = _bad(build_dir, mode)
    with EmuDpuSet(NR_DPUS, bad, workers=2) as dpus:
        _tag(dpus)
        with pytest.raises(DpuFaultError, match=reason) as info:
            dpus.launch()
        err = info.value
        assert err.dpu == FAULT_DPU
        assert err.tasklet == FAULT_TASKLET
        assert f"DPU {FAULT_DPU}, tasklet {FAULT_TASKLET}" in str(err)
        assert err.reason.startswith(f"tasklet {FAULT_TASKLET}: ")
        assert dpus.last_fault()[:2] == (FAULT_DPU, FAULT_TASKLET)
        c = dpus.counters()
        np.testing.assert_array_equal(c["faulted"], [0, 0, 1, 0])
        # The other DPUs finished their launch.
        done = [int(dpus.copy_from("done", 4, d, dtype=np.uint32)[0]) for d in range(NR_DPUS)]
        assert done == [1, 1, 0, 1]
        _assert_recovers(dpus, good, bad)


def test_barrier_skipped_by_one_tasklet_is_a_deadlock_fault(build_dir, good):
    bad = _bad(build_dir, 7)
    with EmuDpuSet(NR_DPUS, bad) as dpus:
        _tag(dpus)
        with pytest.raises(DpuFaultError, match=r"deadlock in barrier_wait: the barrier expects 16 tasklets but only 15") as info:
            dpus.launch()
        assert info.value.dpu == FAULT_DPU
        assert 0 <= info.value.tasklet < 16
        _assert_recovers(dpus, good, bad)


def test_barrier_count_above_nr_tasklets_faults(build_dir, good):
    bad = _bad(build_dir, 8)
    with EmuDpuSet(2, bad) as dpus:
        with pytest.raises(DpuFaultError, match=r"barrier for 17 tasklets, but the DPU runs 16") as info:
            dpus.launch()
        assert info.value.dpu == 0 and info.value.tasklet == 0
        dpus.load(good)
        dpus.launch()


def test_wram_over_budget_at_load(build_dir, good):
    bad = _bad(build_dir, 9)
    with EmuDpuSet(2, good) as dpus:
        with pytest.raises(DpuFaultError, match=r"WRAM over budget at load .*16 tasklets x 1024 B stacks") as info:
            dpus.load(bad)
        assert info.value.tasklet == -1
        # The set keeps its previous program.
        dpus.launch()
        assert int(dpus.copy_from("counter", 4, 1, dtype=np.uint32)[0]) == 80
    # The same kernel fits with one tasklet (60,000 B + 1 x 1,024 B <= 64 KiB).
    one = compile_kernel(KERNELS / "bad.c", nr_tasklets=1, defines=["MODE=9", "UPDLRM_EMU_NO_STATIC_DMA_CHECK"], out_dir=build_dir)
    with EmuDpuSet(1, one) as dpus:
        dpus.launch()


def test_fault_in_async_launch_is_reported_by_sync(build_dir, good):
    bad = _bad(build_dir, 2)
    with EmuDpuSet(NR_DPUS, bad, workers=2) as dpus:
        _tag(dpus)
        dpus.launch(sync=False)
        with pytest.raises(DpuFaultError) as info:
            dpus.sync()
        assert (info.value.dpu, info.value.tasklet) == (FAULT_DPU, FAULT_TASKLET)
        _assert_recovers(dpus, good, bad)
