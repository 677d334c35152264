"""Emulator host transfers: per-DPU push_xfer round trips to WRAM and MRAM symbols and the MRAM
heap, broadcasts, static __mram variables (initial values, DMA through their addresses), the
heap pointer's 32-bit address, and the SDK's errors for bad symbol accesses (state unchanged).
Kernel: tests/kernels/xfer.c."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from updlrm import emu
from updlrm.emu import EmuDpuSet, compile_kernel
from updlrm.errors import NativeError

KERNELS = Path(__file__).parent / "kernels"
HEAP = "__sys_used_mram_end"
MRAM_BASE = 0x08000000
MRAM_SIZE = 64 << 20


@pytest.fixture(scope="module")
def xfer(tmp_path_factory):
    return compile_kernel(KERNELS / "xfer.c", nr_tasklets=4, out_dir=tmp_path_factory.mktemp("emu_xfer"))


def test_push_round_trips_per_dpu(xfer):
    n = 9
    rng = np.random.default_rng(0)
    with EmuDpuSet(n, xfer, workers=3) as dpus:
        w = rng.integers(0, 2**32, size=(n, 64), dtype=np.uint32)
        dpus.push_to("wram_arr", w)
        m = rng.integers(0, 2**63, size=(n, 1024), dtype=np.uint64)
        dpus.push_to("mram_arr", m)
        h = rng.integers(0, 256, size=(n, 3 * 1024 * 1024 + 8), dtype=np.uint8)  # spans 1 MiB pages
        dpus.push_to(HEAP, h, offset=1024 * 1024 - 16)
        np.testing.assert_array_equal(dpus.push_from("wram_arr", 256, dtype=np.uint32), w)
        np.testing.assert_array_equal(dpus.push_from("mram_arr", 8192, dtype=np.uint64), m)
        np.testing.assert_array_equal(dpus.push_from(HEAP, h.shape[1], offset=1024 * 1024 - 16), h)
        # Partial reads at an offset, one DPU at a time.
        np.testing.assert_array_equal(dpus.copy_from("wram_arr", 16, 4, offset=8, dtype=np.uint32), w[4, 2:6])
        # Untouched MRAM reads as zeros.
        assert not dpus.copy_from(HEAP, 64, 0, offset=40 << 20).any()
        c = dpus.counters()
        assert int(c["host_to_dpu_bytes"][3]) == 256 + 8192 + h.shape[1]


def test_static_mram_variables_and_heap_pointer(xfer):
    with EmuDpuSet(3, xfer) as dpus:
        np.testing.assert_array_equal(dpus.copy_from("mram_init", 32, 1, dtype=np.uint64), [10, 20, 30, 40])
        np.testing.assert_array_equal(dpus.copy_from("wram_init", 8, 2, dtype=np.uint32), [0x1111, 0x2222])
        m = np.arange(3 * 1024, dtype=np.uint64).reshape(3, 1024) + 1000
        dpus.push_to("mram_arr", m)
        heap_marker = np.full((3, 8), 0xAB, np.uint8)
        dpus.push_to(HEAP, heap_marker)
        dpus.launch()
        for d in range(3):
            arr = dpus.copy_from("mram_arr", 16 * 8, d, dtype=np.uint64)
            np.testing.assert_array_equal(arr[8:16], m[d, 0:8])  # DMA through a static MRAM variable
            tail = dpus.copy_from("mram_arr", 16, d, offset=16 * 8, dtype=np.uint64)
            np.testing.assert_array_equal(tail, [0x0123456789ABCDEF, 0xFEDCBA9876543210])  # from const data
            np.testing.assert_array_equal(dpus.copy_from("init_echo", 32, d, dtype=np.uint64), [10, 20, 30, 40])
            # Heap = MRAM base + static MRAM (32 B initialized + 8,192 B noinit), 8-byte aligned.
            assert int(dpus.copy_from("heap_addr", 4, d, dtype=np.uint32)[0]) == MRAM_BASE + 32 + 8192
            # The heap does not overlap the static variables.
            np.testing.assert_array_equal(dpus.copy_from(HEAP, 8, d), heap_marker[d])
        # The last bytes of MRAM are reachable through the heap symbol; one byte further is not.
        heap_size = MRAM_SIZE - 32 - 8192
        dpus.copy_to(HEAP, np.arange(8, dtype=np.uint8), offset=heap_size - 8)
        np.testing.assert_array_equal(dpus.copy_from(HEAP, 8, 2, offset=heap_size - 8), np.arange(8))
        with pytest.raises(NativeError, match=r"exceeds its size"):
            dpus.copy_to(HEAP, np.zeros(16, np.uint8), offset=heap_size - 8)


def test_static_pointer_initializers_point_into_each_dpus_wram(xfer):
    n = 7
    with EmuDpuSet(n, xfer, workers=3) as dpus:  # 3 kernel images: DPU d runs on image d % 3
        w = np.arange(n * 64, dtype=np.uint32).reshape(n, 64) * 10
        dpus.push_to("wram_arr", w)
        dpus.launch()
        got = dpus.push_from("ptr_target", 8, dtype=np.uint32)
        np.testing.assert_array_equal(got[:, 1], w[:, 0] + 1)
        np.testing.assert_array_equal(got[:, 0], 0)


def test_broadcast_copy_to_every_dpu(xfer):
    with EmuDpuSet(5, xfer) as dpus:
        dpus.copy_to("wram_arr", np.arange(64, dtype=np.uint32))
        np.testing.assert_array_equal(dpus.push_from("wram_arr", 256, dtype=np.uint32), np.tile(np.arange(64), (5, 1)))


BAD = [
    ("mram_arr", 4, 8, "DPU_ERR_INVALID_MRAM_ACCESS", r"'mram_arr' \(MRAM\): offset 4 and length 8 must be multiples of 8"),
    ("mram_arr", 0, 12, "DPU_ERR_INVALID_MRAM_ACCESS", r"multiples of 8"),
    ("wram_arr", 2, 4, "DPU_ERR_INVALID_WRAM_ACCESS", r"'wram_arr' \(WRAM\): offset 2 and length 4 must be multiples of 4"),
    ("wram_arr", 0, 260, "DPU_ERR_INVALID_SYMBOL_ACCESS", r"'wram_arr': offset 0 \+ length 260 exceeds its size of 256 bytes"),
    ("nope", 0, 8, "DPU_ERR_UNKNOWN_SYMBOL", r"symbol 'nope' is not defined"),
    ("printf", 0, 8, "DPU_ERR_UNKNOWN_SYMBOL", r"symbol 'printf' is not defined"),
    ("konst", 0, 4, "DPU_ERR_INVALID_SYMBOL_ACCESS", r"'konst' is not a writable WRAM"),
]


@pytest.mark.parametrize("symbol,offset,length,code,msg", BAD, ids=[f"{b[0]}-{b[1]}-{b[2]}" for b in BAD])
def test_bad_symbol_access_is_an_sdk_error_and_changes_nothing(xfer, symbol, offset, length, code, msg):
    with EmuDpuSet(2, xfer) as dpus:
        before_w = dpus.push_from("wram_arr", 256)
        before_m = dpus.push_from("mram_arr", 64)
        with pytest.raises(NativeError, match=msg) as info:
            dpus.push_to(symbol, np.full((2, length), 0x5A, np.uint8), offset=offset)
        assert emu.error_name(info.value.status) == code
        with pytest.raises(NativeError, match=msg):
            dpus.copy_from(symbol, length, 1, offset=offset)
        np.testing.assert_array_equal(dpus.push_from("wram_arr", 256), before_w)
        np.testing.assert_array_equal(dpus.push_from("mram_arr", 64), before_m)


def test_push_shape_and_dpu_index_are_checked(xfer):
    with EmuDpuSet(3, xfer) as dpus:
        with pytest.raises(ValueError, match=r"expected \[3, \.\.\.\]"):
            dpus.push_to("wram_arr", np.zeros((2, 64), np.uint32))
        with pytest.raises(IndexError, match=r"DPU index 3 is outside 0..2"):
            dpus.copy_from("wram_arr", 4, 3)


def test_no_program_and_bad_files(tmp_path):
    with EmuDpuSet(2) as dpus:
        with pytest.raises(NativeError, match="DPU_ERR_NO_PROGRAM_LOADED"):
            dpus.launch()
        junk = tmp_path / "junk.emu.so"
        junk.write_bytes(b"not an elf")
        with pytest.raises(NativeError, match="not a 64-bit ELF"):
            dpus.load(junk)
        with pytest.raises(FileNotFoundError):
            dpus.load(tmp_path / "missing.emu.so")


def test_profiles():
    lib = emu._lib()
    s = emu._DpuSetT()
    assert lib.dpu_alloc(0xFFFFFFFF, b"backend=emulator,nrDpus=5,someSdkKey=1", ctypes.byref(s)) == 0
    n = ctypes.c_uint32()
    assert lib.dpu_get_nr_dpus(s, ctypes.byref(n)) == 0 and n.value == 5
    assert lib.dpu_free(s) == 0
    with pytest.raises(NativeError, match=r"backend=hw is not available.*UPMEM SDK"):
        EmuDpuSet(2, profile="backend=hw")
    with pytest.raises(NativeError, match=r"nrDpus=0 must be 1..65536"):
        EmuDpuSet(2, profile="nrDpus=0")
    assert emu.error_name(21) == "DPU_ERR_DPU_FAULT"
    text = lib.dpu_error_to_string  # SDK name and our position agree
    text.restype = ctypes.c_char_p
    text.argtypes = [ctypes.c_int]
    assert text(21) == b"dpu is in fault"
