"""updlrm.emu.compile_kernel (errors with the compiler's output, argument checks, the content-hash
cache) and the `updlrm emu run` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from updlrm.cli import main
from updlrm.emu import EmuDpuSet, KernelCompileError, compile_kernel

KERNELS = Path(__file__).parent / "kernels"

HELLO = r"""
#include <defs.h>
#include <barrier.h>
#include <stdio.h>
#include "params.h"
BARRIER_INIT(b, NR_TASKLETS);
int main(void) {
    barrier_wait(&b);
    if (me() == NR_TASKLETS - 1) printf("hello from tasklet %u of %d, GREETING=%d\n", me(), NR_TASKLETS, GREETING);
    return 0;
}
"""


def test_compile_run_and_cache(tmp_path):
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "params.h").write_text("#define GREETING 41\n")
    src = tmp_path / "hello.c"
    src.write_text(HELLO)
    out = tmp_path / "out"
    so = compile_kernel(src, nr_tasklets=5, include_dirs=[inc], out_dir=out)
    assert so.name.endswith(".emu.so")
    mtime = so.stat().st_mtime_ns
    assert compile_kernel(src, nr_tasklets=5, include_dirs=[inc], out_dir=out) == so  # cached
    assert so.stat().st_mtime_ns == mtime
    with EmuDpuSet(2, so) as dpus:
        dpus.launch()
        assert dpus.log(1) == "hello from tasklet 4 of 5, GREETING=41\n"
    # A changed header, define or tasklet count is a different binary.
    (inc / "params.h").write_text("#define GREETING 42\n")
    so2 = compile_kernel(src, nr_tasklets=5, include_dirs=[inc], out_dir=out)
    assert so2 != so
    so3 = compile_kernel(src, nr_tasklets=3, include_dirs=[inc], defines=["UNUSED=1"], out_dir=out)
    assert so3 not in (so, so2)
    with EmuDpuSet(1, so3) as dpus:
        dpus.launch()
        assert dpus.log(0) == "hello from tasklet 2 of 3, GREETING=42\n"


def test_compile_errors_carry_the_compiler_output(tmp_path):
    src = tmp_path / "broken.c"
    src.write_text("int main(void) { return undefined_thing; }\n")
    with pytest.raises(KernelCompileError, match=r"(?s)compiling .*broken.c failed.*undefined_thing"):
        compile_kernel(src, out_dir=tmp_path)


@pytest.mark.parametrize(
    "kwargs,exc,msg",
    [
        ({"nr_tasklets": 0}, ValueError, r"nr_tasklets=0 must be an int in 1..24"),
        ({"nr_tasklets": 25}, ValueError, r"nr_tasklets=25"),
        ({"stack_size": 1020}, ValueError, r"stack_size=1020 must be a positive multiple of 8"),
        ({"defines": ["-O0"]}, ValueError, r"define '-O0'"),
        ({"include_dirs": ["/no/such/dir"]}, FileNotFoundError, r"include dir /no/such/dir"),
    ],
)
def test_compile_argument_checks(tmp_path, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        compile_kernel(KERNELS / "xfer.c", out_dir=tmp_path, **kwargs)


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.c does not exist"):
        compile_kernel(tmp_path / "nope.c", out_dir=tmp_path)


def test_cli_emu_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UPDLRM_CACHE_DIR", str(tmp_path))
    rc = main(["emu", "run", str(KERNELS / "good.c"), "--dpus", "3", "--tasklets", "4", "-D", "ROUNDS=2",
               "--launches", "2", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["launches"]) == 2
    assert out["launches"][1]["logs"]["0"] == "dpu_tag=0 launches=2 counter=8\n"
    c = out["launches"][0]["counters"]
    assert c["dma_read_ops"] == 3 * (1 + 2 + 3 + 4)
    assert c["dma_read_bytes_per_tasklet_dpu0"] == [128, 256, 384, 512]


def test_cli_emu_run_fault_exit_status(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UPDLRM_CACHE_DIR", str(tmp_path))
    rc = main(["emu", "run", str(KERNELS / "bad.c"), "-D", "MODE=3", "-D", "FAULT_TAG=0", "-D", "UPDLRM_EMU_NO_STATIC_DMA_CHECK", "--dpus", "2"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "FAULT on DPU 0 (tasklet 3): tasklet 3: mram_read size 4096" in err


def test_multi_source_kernel_shares_globals_per_dpu(tmp_path):
    (tmp_path / "a.c").write_text(
        "#include <defs.h>\n#include <barrier.h>\nextern unsigned hits;\nvoid bump(void);\n"
        "BARRIER_INIT(b, NR_TASKLETS);\n"
        "int main(void) { if (me() == 0) bump(); barrier_wait(&b); return 0; }\n"
    )
    (tmp_path / "b.c").write_text("#include <defs.h>\n__host unsigned hits;\nvoid bump(void) { hits += 1; }\n")
    so = compile_kernel([tmp_path / "a.c", tmp_path / "b.c"], nr_tasklets=4, out_dir=tmp_path)
    with EmuDpuSet(3, so) as dpus:
        dpus.copy_to("hits", np.array([10], np.uint32), dpu=1)
        dpus.launch()
        dpus.launch()
        hits = [int(dpus.copy_from("hits", 4, d, dtype=np.uint32)[0]) for d in range(3)]
        assert hits == [2, 12, 2]
