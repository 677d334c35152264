"""MRAM addressing (tests/kernels/addressing.c): outside strict mode an unaligned MRAM address loses
its low 3 bits and a base-less heap offset is taken as an MRAM offset, as on hardware, each counted;
strict mode (the default of compile_kernel, and of the project's kernels) faults on both. __mram
variables touched directly behave as on hardware: kernel and host see the same bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from updlrm.emu import MRAM_HEAP_SYMBOL, EmuDpuSet, compile_kernel
from updlrm.errors import DpuFaultError

KERNELS = Path(__file__).parent / "kernels"
WORDS = np.array([0x1111, 0x2222, 0x3333], np.uint64)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("emu_addr")


@pytest.mark.parametrize("mode,counter,fault", [(1, "mram_realigned_ops", "not 8-byte aligned"),
                                                (2, "mram_rebased_ops", "outside MRAM")])
def test_hardware_addressing_and_strict_mode(build_dir, mode, counter, fault):
    lenient = compile_kernel(KERNELS / "addressing.c", nr_tasklets=2, defines=[f"MODE={mode}"],
                             out_dir=build_dir, strict=False)
    strict = compile_kernel(KERNELS / "addressing.c", nr_tasklets=2, defines=[f"MODE={mode}"], out_dir=build_dir)
    with EmuDpuSet(2, lenient) as dpus:
        dpus.copy_to(MRAM_HEAP_SYMBOL, WORDS)
        dpus.launch()
        assert dpus.copy_from("got", 16, 1, dtype=np.uint64).tolist() == [0x1111, 0x2222]
        assert dpus.counters()[counter].tolist() == [1, 1]
        dpus.set_strict(True)  # strict asked for at run time
        with pytest.raises(DpuFaultError, match=fault):
            dpus.launch()
    with EmuDpuSet(1, strict) as dpus:
        dpus.copy_to(MRAM_HEAP_SYMBOL, WORDS)
        with pytest.raises(DpuFaultError, match=fault) as info:
            dpus.launch()
        assert info.value.tasklet == 0
        dpus.set_strict(False)
        dpus.launch()
        assert dpus.copy_from("got", 16, 0, dtype=np.uint64).tolist() == [0x1111, 0x2222]


def test_mram_variables_touched_directly_share_bytes_with_the_host(build_dir):
    so = compile_kernel(KERNELS / "addressing.c", nr_tasklets=2, defines=["MODE=3"], out_dir=build_dir)
    with EmuDpuSet(3, so, workers=2) as dpus:
        for d in range(3):
            dpus.copy_to("big", np.array([d + 1], np.uint64), offset=5 * 8, dpu=d)
        dpus.launch()
        for d in range(3):
            s = 11 + 22 + d + 1
            assert dpus.copy_from("got", 16, d, dtype=np.uint64).tolist() == [s, 2 * s]
            assert dpus.copy_from("big", 8, d, offset=7 * 8, dtype=np.uint64)[0] == 2 * s
            assert dpus.copy_from("init_var", 16, d, dtype=np.uint64).tolist() == [11, 99]
        dpus.launch()  # the second launch sees the first one's direct write (init_var[1] = 99)
        assert dpus.copy_from("got", 8, 0, dtype=np.uint64)[0] == 11 + 99 + 1
