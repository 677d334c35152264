"""The lookup kernel's build rules: it compiles as 32-bit code (MRAM addresses and pointers are
32-bit on a DPU) without conversion warnings at 1, 16 and 24 tasklets, and refuses to compile
when its per-tasklet WRAM buffers cannot fit next to the tasklet stacks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNEL = REPO / "dpu_kernels" / "emb_lookup.c"
INCLUDES = ["-I", str(REPO / "host" / "emu" / "include"), "-I", str(REPO / "dpu_kernels" / "include")]


def _cc(*flags):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    return subprocess.run([cc, *flags, *INCLUDES, "-fsyntax-only", str(KERNEL)], capture_output=True, text=True)


def _m32_available():
    cc = shutil.which("gcc")
    if cc is None:
        return False
    r = subprocess.run([cc, "-m32", "-ffreestanding", "-x", "c", "-fsyntax-only", "-"], input="int x;\n",
                       capture_output=True, text=True)
    return r.returncode == 0


@pytest.mark.parametrize("nr_tasklets", [1, 16, 24])
def test_kernel_compiles_as_32_bit_code_without_warnings(nr_tasklets):
    if not _m32_available():
        pytest.skip("gcc -m32 unavailable")
    r = _cc("-m32", "-ffreestanding", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wconversion",
            "-Wno-sign-conversion", "-Wpointer-to-int-cast", "-Wint-to-pointer-cast", f"-DNR_TASKLETS={nr_tasklets}")
    kernel_lines = [l for l in r.stderr.splitlines() if "emb_lookup.c" in l]
    assert r.returncode == 0, r.stderr
    assert not kernel_lines, r.stderr


def test_kernel_refuses_to_build_when_wram_cannot_hold_its_buffers():
    # 24 tasklets x 2,048-byte stacks leave ~500 B per tasklet: below the smallest column block
    r = _cc("-std=c11", "-DNR_TASKLETS=24", "-DSTACK_SIZE_DEFAULT=2048")
    assert r.returncode != 0
    assert "WRAM cannot hold the per-tasklet buffers" in r.stderr

