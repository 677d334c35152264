"""Emulator runtime: per-DPU WRAM globals that persist, barriers and mutexes with 16 tasklets,
exact DMA counters against hand arithmetic, printf logs, async launches, 2,560 DPUs x 16 tasklets.

Kernel: tests/kernels/good.c (its header describes the DMA pattern these tests recompute)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from updlrm.emu import EmuDpuSet, compile_kernel

KERNELS = Path(__file__).parent / "kernels"
HEAP = "__sys_used_mram_end"
OUT_OFFSET = 1 << 20
ROUNDS = 50


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("emu_kernels")


@pytest.fixture(scope="module")
def good16(build_dir):
    return compile_kernel(KERNELS / "good.c", nr_tasklets=16, defines=[f"ROUNDS={ROUNDS}"], out_dir=build_dir)


def _u32(dpus, name, d):
    return int(dpus.copy_from(name, 4, d, dtype=np.uint32)[0])


def _u64(dpus, name, d):
    return int(dpus.copy_from(name, 8, d, dtype=np.uint64)[0])


def test_wram_globals_persist_per_dpu_and_sync_primitives_hold(good16):
    n = 6
    with EmuDpuSet(n, good16, workers=2) as dpus:
        tags = np.array([7, 11, 13, 17, 19, 23], np.uint32)
        for d in range(n):
            dpus.copy_to("dpu_tag", tags[d : d + 1], dpu=d)
        for launch in range(1, 4):
            dpus.launch()
            for d in range(n):
                assert _u32(dpus, "launches", d) == launch
                assert _u64(dpus, "acc", d) == launch * int(tags[d])
                assert _u32(dpus, "counter", d) == 16 * ROUNDS  # mutex-protected counter
                assert _u32(dpus, "violations", d) == 0  # mutual exclusion and barrier phases held
        # Reloading the kernel restores the initial values of the globals.
        dpus.load(good16)
        assert _u32(dpus, "launches", 0) == 0


def test_dma_counters_and_modeled_cycles_are_exact(good16):
    n = 3
    rng = np.random.default_rng(5)
    with EmuDpuSet(n, good16) as dpus:
        data = rng.integers(0, 2**63, size=(n, 16 * 16 * 16), dtype=np.uint64)  # 16 blocks x 16 tasklets
        dpus.push_to(HEAP, data)
        dpus.reset_transfer_counters()
        dpus.push_to(HEAP, data)
        dpus.launch()
        c = dpus.counters()
        t = np.arange(16)
        for d in range(n):
            np.testing.assert_array_equal(c["dma_read_ops"][d], t + 1)
            np.testing.assert_array_equal(c["dma_read_bytes"][d], 128 * (t + 1))
            np.testing.assert_array_equal(c["dma_write_ops"][d], np.ones(16))
            np.testing.assert_array_equal(c["dma_write_bytes"][d], 8 * (t + 1))
            # perfcounter model: reads 77 + 128/2 cycles, writes 61 + bytes/2 (perfcounter.h).
            want_cycles = int(((t + 1) * (77 + 64)).sum() + (61 + 4 * (t + 1)).sum())
            assert c["modeled_cycles"][d] == want_cycles
            assert _u64(dpus, "cycles", d) == want_cycles
            assert c["host_to_dpu_bytes"][d] == data[d].nbytes
            assert c["wram_heap_peak_bytes"][d] == 16 * 128
            assert c["wram_static_bytes"][d] >= 16 * 1024
            assert c["faulted"][d] == 0
            assert c["wall_ns"][d] > 0
        # The written bytes: tasklet t copies the first t+1 words of its block t to OUT + t*2048.
        out = dpus.push_from(HEAP, 16 * 2048, offset=OUT_OFFSET, dtype=np.uint64).reshape(n, 16, 256)
        blocks = data.reshape(n, 16, 16, 16)
        for tt in range(16):
            np.testing.assert_array_equal(out[:, tt, : tt + 1], blocks[:, tt, tt, : tt + 1])
        c2 = dpus.counters()
        assert c2["dpu_to_host_bytes"][0] == 16 * 2048 + 8  # the pull + the 8-byte "cycles" read


def test_printf_goes_to_the_dpu_log(good16):
    with EmuDpuSet(2, good16) as dpus:
        dpus.copy_to("dpu_tag", np.array([42], np.uint32), dpu=1)
        dpus.launch()
        assert dpus.log(1) == f"dpu_tag=42 launches=1 counter={16 * ROUNDS}\n"
        assert dpus.log(0).startswith("dpu_tag=0 ")
        with pytest.raises(IndexError, match="outside 0..1"):
            dpus.log(2)


def test_one_tasklet_build_runs(build_dir):
    so = compile_kernel(KERNELS / "good.c", nr_tasklets=1, defines=["ROUNDS=3"], out_dir=build_dir)
    with EmuDpuSet(2, so) as dpus:
        dpus.launch()
        assert _u32(dpus, "counter", 1) == 3
        c = dpus.counters()
        assert c["dma_read_ops"].shape == (2, 1)
        assert c["dma_read_ops"][0, 0] == 1


def test_async_launch_then_sync_and_transfers_wait(good16):
    with EmuDpuSet(4, good16, workers=2) as dpus:
        dpus.launch(sync=False)
        # A transfer on a running set waits for the launch to end.
        assert _u32(dpus, "counter", 3) == 16 * ROUNDS
        dpus.sync()
        dpus.launch(sync=False)
        dpus.sync()
        assert _u32(dpus, "launches", 2) == 2


def test_2560_dpus_x_16_tasklets(good16):
    with EmuDpuSet(2560, good16) as dpus:
        t0 = time.perf_counter()
        dpus.launch()
        dt = time.perf_counter() - t0
        print(f"\n2,560 DPUs x 16 tasklets, one launch: {dt:.3f} s emulator wall time")
        c = dpus.counters()
        assert int(c["dma_read_ops"].sum()) == 2560 * int(np.arange(1, 17).sum())
        assert _u32(dpus, "counter", 2559) == 16 * ROUNDS
        assert _u32(dpus, "violations", 1234) == 0


def test_semaphores_trylock_and_persistent_heap(build_dir):
    items = 200
    so = compile_kernel(KERNELS / "sync.c", nr_tasklets=16, defines=[f"ITEMS={items}"], out_dir=build_dir)
    with EmuDpuSet(3, so, workers=2) as dpus:
        for launch in range(1, 4):
            dpus.launch()
            for d in range(3):
                assert _u64(dpus, "consumed_sum", d) == items * (items + 1) // 2
                assert _u32(dpus, "consumed_count", d) == items
                assert _u32(dpus, "trylock_busy", d) == 1
                # The heap block allocated at launch 1 keeps its contents (no mem_reset).
                assert _u32(dpus, "heap_prev", d) == (0 if launch == 1 else 0xC0FFEE + launch - 1)
        assert dpus.counters()["wram_heap_peak_bytes"][0] == 64
