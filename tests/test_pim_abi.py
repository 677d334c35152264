"""The ABI values Python uses come from the native module, and the module agrees with the header.

dpu_kernels/include/updlrm_abi.h is the one source of the host/DPU layout. The reference here is
the header text itself: macros read with a regex and struct sizes computed from the declared
fields with C's natural alignment, independently of any value the project's Python or C++ holds.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from updlrm.partition import Plan, RowGroup, Shard, TableSpec, Topology
from updlrm.pim import native
from updlrm.pim.layout import plan_layout

ROOT = Path(__file__).resolve().parents[1]
HEADER = (ROOT / "dpu_kernels" / "include" / "updlrm_abi.h").read_text()
EMU_DPU_H = (ROOT / "host" / "emu" / "include_host" / "dpu.h").read_text()
_C_SIZES = {"uint8_t": 1, "uint16_t": 2, "uint32_t": 4, "uint64_t": 8, "int32_t": 4, "int64_t": 8}


def _macro(name: str) -> int:
    m = re.search(rf"#define\s+{name}\s+\(?([0-9]+)u?(?:\s*<<\s*([0-9]+))?\)?", HEADER)
    assert m, f"{name} not found in updlrm_abi.h"
    return int(m.group(1)) << int(m.group(2) or 0)


def _struct_size(name: str) -> int:
    body = re.search(rf"struct {name} \{{(.*?)\}};", HEADER, re.S)
    assert body, f"struct {name} not found"
    off = align = 0
    for typ, count in re.findall(r"^\s*(\w+_t)\s+\w+(?:\[([A-Z_0-9]+)\])?;", body.group(1), re.M):
        size = _C_SIZES[typ]
        n = 1 if not count else (int(count) if count.isdigit() else _macro(count))
        off = (off + size - 1) // size * size + size * n
        align = max(align, size)
    return (off + align - 1) // align * align


@pytest.fixture(scope="module")
def mod():
    return native.native_module("emulator")


def test_module_matches_header(mod):
    assert mod.ABI_VERSION == _macro("UPDLRM_ABI_VERSION")
    assert mod.LAUNCH_ARGS_BYTES == _struct_size("updlrm_launch_args")
    assert mod.STATUS_BYTES == _struct_size("updlrm_status")
    assert mod.SHARD_BYTES == _struct_size("updlrm_shard")
    assert mod.BAG_BYTES == _struct_size("updlrm_bag")
    assert mod.DTYPE_FP32 == _macro("UPDLRM_DTYPE_FP32")
    assert mod.DTYPE_INT32 == _macro("UPDLRM_DTYPE_INT32")
    assert mod.DTYPE_INT16 == _macro("UPDLRM_DTYPE_INT16")
    assert mod.DTYPE_INT8 == _macro("UPDLRM_DTYPE_INT8")
    assert mod.MAX_SHARDS == _macro("UPDLRM_MAX_SHARDS")
    assert mod.MAX_TASKLETS == _macro("UPDLRM_MAX_TASKLETS")
    assert mod.MRAM_BYTES == _macro("UPDLRM_MRAM_BYTES")
    heap = re.search(r'#define\s+DPU_MRAM_HEAP_POINTER_NAME\s+"([^"]+)"', EMU_DPU_H)
    assert heap and mod.MRAM_HEAP_SYMBOL == heap.group(1)


def test_python_values_are_the_modules(mod):
    a = native.abi(mod)
    assert (a.version, a.launch_args_bytes, a.status_bytes, a.shard_bytes) == (
        mod.ABI_VERSION, mod.LAUNCH_ARGS_BYTES, mod.STATUS_BYTES, mod.SHARD_BYTES)
    assert a.dtype_codes == {"fp32": mod.DTYPE_FP32, "int32": mod.DTYPE_INT32, "int16": mod.DTYPE_INT16,
                             "int8": mod.DTYPE_INT8}
    assert (a.max_shards, a.max_tasklets, a.mram_bytes, a.heap_symbol) == (
        mod.MAX_SHARDS, mod.MAX_TASKLETS, mod.MRAM_BYTES, mod.MRAM_HEAP_SYMBOL)
    import updlrm.pim.embedding as emb
    import updlrm.pim.layout as lay

    # the hand-typed copies are gone
    for name in ("ARGS_BYTES", "STATUS_BYTES"):
        assert not hasattr(emb, name)
    for name in ("DTYPE_CODES", "SHARD_DESC_BYTES", "MAX_SHARDS_PER_DPU", "MRAM_BYTES"):
        assert not hasattr(lay, name)


def _one_dpu_plan(nr_shards: int) -> Plan:
    tables = [TableSpec("t0", nr_shards, 2)]
    groups = [RowGroup(table=0, row_lo=i, row_hi=i + 1) for i in range(nr_shards)]
    shards = [Shard(table=0, group=i, replica=0, dpu=0, col_lo=0, col_hi=2, mram_offset=8 * i) for i in range(nr_shards)]
    return Plan(tables=tables, topology=Topology(nr_dpus=1), groups=groups, shards=shards)


def test_shard_limit_comes_from_the_module(mod):
    a = native.abi(mod)
    small = native.Abi(**{**a.__dict__, "max_shards": 3})
    plan_layout(_one_dpu_plan(3), small)
    with pytest.raises(ValueError, match="DPU 0 holds 4 shards, the kernel allows 3"):
        plan_layout(_one_dpu_plan(4), small)


def _spec(mod, **over):
    s = {k: np.zeros(2, np.uint32) for k in ("dpu", "mram_offset", "nr_rows", "nr_cols", "row_bytes", "table")}
    s["local"] = np.array([0, 1], np.uint32)
    s["dtype"] = mod.DTYPE_FP32
    s.update(over)
    return s


def test_write_shards_rejects_bad_descriptors(mod):
    rt = mod.Runtime(native.kernel_path("emulator", 16, mod), 2, native.PROFILES["emulator"])
    try:
        data = [np.zeros(8, np.uint8), np.zeros(8, np.uint8)]
        with pytest.raises(ValueError, match=r"dtype 7 is not one of UPDLRM_DTYPE_\* \(0\.\.3\)"):
            rt.write_shards(data, _spec(mod, dtype=7))
        with pytest.raises(ValueError, match="shard 1 repeats descriptor 0 of DPU 0"):
            rt.write_shards(data, _spec(mod, local=np.array([0, 0], np.uint32)))
        with pytest.raises(ValueError, match="shard 1 on DPU 5"):
            rt.write_shards(data, _spec(mod, dpu=np.array([0, 5], np.uint32)))
        with pytest.raises(ValueError, match=f"descriptor index {mod.MAX_SHARDS}"):
            rt.write_shards(data, _spec(mod, local=np.array([0, mod.MAX_SHARDS], np.uint32)))
        assert rt.write_shards(data, _spec(mod)) >= 0
    finally:
        rt.close()


def test_emu_heap_symbol_is_the_headers(mod):
    import updlrm.emu as emu

    assert "MRAM_HEAP_SYMBOL" in emu.__all__
    assert emu.MRAM_HEAP_SYMBOL == mod.MRAM_HEAP_SYMBOL
    from updlrm.emu import MRAM_HEAP_SYMBOL

    heap = re.search(r'#define\s+DPU_MRAM_HEAP_POINTER_NAME\s+"([^"]+)"', EMU_DPU_H).group(1)
    assert MRAM_HEAP_SYMBOL == heap
    with pytest.raises(AttributeError):
        emu.NO_SUCH_NAME  # noqa: B018


HEAP_KERNEL = r"""
#include <defs.h>
#include <mram.h>
#include <stdint.h>
#include <stdio.h>
static uint64_t buf[2] __dma_aligned;
int main(void) {
    if (me() == 0) {
        mram_read((__mram_ptr void const *)DPU_MRAM_HEAP_POINTER, buf, 16);
        printf("heap=%llx,%llx\n", (unsigned long long)buf[0], (unsigned long long)buf[1]);
    }
    return 0;
}
"""


def test_emu_run_heap_file_lands_at_the_heap(tmp_path, capsys):
    """`updlrm emu run --heap FILE` copies FILE to DPU_MRAM_HEAP_POINTER (padded to 8 bytes)."""
    import json

    from updlrm.cli import main

    src = tmp_path / "heap_kernel.c"
    src.write_text(HEAP_KERNEL)
    heap = tmp_path / "heap.bin"
    heap.write_bytes(np.array([0x1122334455667788], "<u8").tobytes() + b"\xab\xcd\xef")  # 11 bytes
    rc = main(["emu", "run", str(src), "--dpus", "2", "--tasklets", "2", "--heap", str(heap), "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    logs = result["launches"][0]["logs"]
    assert logs["0"] == logs["1"] == "heap=1122334455667788,efcdab\n"
