"""Isolation: a kernel crash (SIGSEGV, SIGFPE, a host stack overflow, abort(), a failed assert) or an
endless loop becomes a DpuFaultError naming the DPU, the tasklet and the signal (and the source
line where the kernel's line tables tell it); the process lives and the same set runs again.
Kernel: tests/kernels/crash.c (only DPU 1's tasklet 1 misbehaves)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from updlrm.emu import EmuDpuSet, compile_kernel
from updlrm.errors import DpuFaultError

KERNELS = Path(__file__).parent / "kernels"

CASES = [
    (1, r"SIGSEGV \(invalid memory access at \(nil\)\) in kernel code at crash\.c:\d+ \(main\)"),
    (2, r"SIGFPE \(arithmetic exception: integer division by zero or overflow\) in kernel code at crash\.c:\d+"),
    (4, r"SIGSEGV \(stack overflow: .*\) in kernel code at crash\.c:\d+ \(deep\)"),
    (5, r"assertion failed: divisor == 12345 at .*crash\.c:\d+"),
    (6, r"SIGABRT \(abort\(\) called\)"),
]


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("emu_crash")


def _crash_kernel(build_dir, mode):
    return compile_kernel(KERNELS / "crash.c", nr_tasklets=4, defines=[f"MODE={mode}"], out_dir=build_dir)


def _run_and_reuse(so, timeout=None):
    with EmuDpuSet(3, so, workers=2) as dpus:
        dpus.copy_to("victim", np.array([1], np.uint32), dpu=1)
        with pytest.raises(DpuFaultError) as info:
            dpus.launch(timeout=timeout)
        # the other DPUs finished their work
        done = dpus.push_from("done", 16, dtype=np.uint32)
        assert done[0].tolist() == [1, 1, 1, 1] and done[1][0] == 1
        # the set is reusable: the same DPUs run again and finish
        dpus.copy_to("victim", np.array([0], np.uint32), dpu=1)
        dpus.launch()
        assert (dpus.push_from("done", 16, dtype=np.uint32) == 1).all()
        return info.value


@pytest.mark.parametrize("mode,pattern", CASES)
def test_crash_becomes_a_fault_naming_dpu_tasklet_and_signal(build_dir, mode, pattern):
    exc = _run_and_reuse(_crash_kernel(build_dir, mode))
    assert exc.dpu == 1 and exc.tasklet == 1
    assert __import__("re").search(pattern, exc.reason), exc.reason


def test_endless_loop_times_out_per_call_and_the_set_stays_usable(build_dir):
    so = _crash_kernel(build_dir, 3)
    t0 = time.perf_counter()
    exc = _run_and_reuse(so, timeout=0.5)
    elapsed = time.perf_counter() - t0
    assert exc.dpu == 1 and exc.tasklet == 1
    assert "launch timed out after 500 ms" in exc.reason and "crash.c" in exc.reason
    assert elapsed < 30


def test_endless_loop_of_dmas_times_out_at_a_scheduling_point(build_dir):
    exc = _run_and_reuse(_crash_kernel(build_dir, 7), timeout=0.5)
    assert exc.dpu == 1 and exc.tasklet == 1 and "launch timed out after 500 ms" in exc.reason


def test_timeout_default_from_the_profile_and_async_launch(build_dir):
    so = _crash_kernel(build_dir, 3)
    with EmuDpuSet(2, so, profile="timeoutMs=300") as dpus:
        dpus.copy_to("victim", np.array([1], np.uint32), dpu=1)
        dpus.launch(sync=False)  # dpu_launch(ASYNCHRONOUS) + dpu_sync
        with pytest.raises(DpuFaultError, match="timed out after 300 ms"):
            dpus.sync()
    with pytest.raises(ValueError):
        EmuDpuSet(1, so).set_timeout(-1)


def test_crash_is_caught_after_faulthandler_replaces_the_handler(build_dir):
    import faulthandler

    so = _crash_kernel(build_dir, 1)
    with EmuDpuSet(2, so) as dpus:
        dpus.launch()  # handlers installed
        was = faulthandler.is_enabled()
        faulthandler.enable()  # installs its own SIGSEGV handler over ours
        try:
            dpus.copy_to("victim", np.array([1], np.uint32), dpu=1)
            with pytest.raises(DpuFaultError, match="SIGSEGV"):
                dpus.launch()
        finally:
            if not was:
                faulthandler.disable()
