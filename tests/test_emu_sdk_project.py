"""The Makefile path: an SDK-style project (tests/kernels/sdk_project: host/, dpu/, one Makefile
calling dpu-upmem-dpurte-clang and dpu-pkg-config) builds unchanged with the emulator's drop-in
commands put on PATH by `updlrm emu env`, and its host, which uses every host API item, checks
every DPU result against its own arithmetic (the SDK enum values, symbols, scatter/gather,
broadcast, async launch + dpu_status + dpu_sync, callbacks, ranks, raw MRAM, logs, probes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from updlrm.cli import main
from updlrm.emu import emu_bin_dir

PROJECT = Path(__file__).parent / "kernels" / "sdk_project"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _env_from_cli(capsys) -> dict:
    assert main(["emu", "env"]) == 0
    out = capsys.readouterr().out
    env = dict(os.environ)
    res = subprocess.run(["bash", "-c", out + '\nprintf "%s" "$PATH"'], capture_output=True, text=True, env=env)
    env["PATH"] = res.stdout
    return env


def test_emu_env_puts_the_drop_in_commands_first_only_when_evaluated(capsys):
    bin_dir = emu_bin_dir()
    assert str(bin_dir) not in os.environ.get("PATH", "").split(os.pathsep)  # never there by default
    env = _env_from_cli(capsys)
    assert env["PATH"].split(os.pathsep)[0] == str(bin_dir)
    assert main(["emu", "env", "--append"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(f":{bin_dir}")  # shlex-quoted dir last


def test_sdk_style_project_builds_with_its_makefile_and_passes_its_checks(tmp_path, capsys):
    proj = tmp_path / "proj"
    shutil.copytree(PROJECT, proj)
    env = _env_from_cli(capsys)
    build = subprocess.run(["make", "NR_DPUS=4", "NR_TASKLETS=8"], cwd=proj, capture_output=True, text=True,
                           env=env)
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run(["./bin/host_app"], cwd=proj, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ALL CHECKS PASSED" in run.stdout
    assert "dpu sum" in run.stdout  # the DPU's printf came back through dpu_log_read
    # DPU_CHECK printed the SDK-style message, with the emulator's detail
    assert "DPU Error (unknown symbol" in run.stderr and "no_such_symbol" in run.stderr


def test_pkg_config_and_compiler_options(tmp_path):
    bin_dir = emu_bin_dir()
    flags = subprocess.run([sys.executable, str(bin_dir / "dpu-pkg-config"), "--cflags", "--libs", "dpu"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert any(f.startswith("-I") and f.endswith("emu_include_host") for f in flags) and "-lupdlrm_emu" in flags
    bad = subprocess.run([sys.executable, str(bin_dir / "dpu-pkg-config"), "--cflags", "nosuchpkg"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "nosuchpkg" in bad.stderr
    # a constant DMA size that breaks the rule is a compile error, as with the SDK
    src = tmp_path / "k.c"
    src.write_text("#include <mram.h>\n#include <stdint.h>\n__dma_aligned uint64_t b[2];\n"
                   "int main(void) { mram_read(DPU_MRAM_HEAP_POINTER, b, 12); return 0; }\n")
    res = subprocess.run([sys.executable, str(bin_dir / "dpu-upmem-dpurte-clang"), "-DNR_TASKLETS=2",
                          "-mcpu=v1A", "-flto", "-O2", "-o", str(tmp_path / "k"), str(src)],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "multiple of 8 in [8, 2048]" in res.stderr


def test_race_command_runs_an_unchanged_host_under_several_schedules(tmp_path, capsys, monkeypatch):
    proj = tmp_path / "proj"
    shutil.copytree(PROJECT, proj)
    env = _env_from_cli(capsys)
    subprocess.run(["make", "NR_DPUS=2", "NR_TASKLETS=8"], cwd=proj, capture_output=True, env=env, check=True)
    monkeypatch.chdir(proj)
    rc = main(["emu", "race", "--schedules", "3", "--expect", "ALL CHECKS PASSED", "--", "./bin/host_app"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "schedule 2 (schedule=random,seed=2): exit 0 expect matched" in out
