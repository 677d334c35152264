"""`updlrm emu run`: compile a DPU C kernel for the emulator, run it on N emulated DPUs, and print
each DPU's printf log and the emulator's counters.

    updlrm emu run my_kernel.c --dpus 8 --tasklets 16
    updlrm emu run my_kernel.c -D BLOCK=256 -I include/ --launches 3 --json

    updlrm emu run my_kernel.c --schedules 16          # race finder
    eval "$(updlrm emu env)"                           # drop-in SDK commands on PATH

Optional inputs: ``--heap FILE`` copies a file's bytes to the start of every DPU's MRAM heap
(``DPU_MRAM_HEAP_POINTER``), padded to 8 bytes. ``--schedules N`` runs the kernel under N tasklet
schedules (round-robin, then seeded random ones) and reports the symbols and addresses whose final
bytes differ. Exit status: 0 when every launch ran (and, with --schedules, nothing differed), 1 when
a DPU faulted (the fault is printed), 2 when the kernel does not compile or the emulator is missing,
3 when the race finder saw results that depend on the schedule.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from updlrm.errors import DpuFaultError, UpdlrmError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("emu", help="compile and run your own DPU C kernel on the UPMEM emulator")
    sub = p.add_subparsers(dest="emu_command", metavar="ACTION")
    run = sub.add_parser("run", help="compile KERNEL.c, run it on emulated DPUs, print logs and counters")
    run.add_argument("kernel", nargs="+", type=Path, help="DPU C source file(s)")
    run.add_argument("--dpus", type=int, default=4, help="number of emulated DPUs (default 4)")
    run.add_argument("--tasklets", type=int, default=16, help="NR_TASKLETS (1..24, default 16)")
    run.add_argument("--stack-size", type=int, default=1024, help="STACK_SIZE_DEFAULT in bytes (default 1024)")
    run.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME[=VALUE]", help="a define")
    run.add_argument("-I", dest="include_dirs", action="append", default=[], type=Path, metavar="DIR",
                     help="an include directory")
    run.add_argument("--launches", type=int, default=1, help="launches in a row (WRAM globals persist; default 1)")
    run.add_argument("--heap", type=Path, help="file copied to every DPU's MRAM heap before the first launch")
    run.add_argument("--log-dpus", type=int, default=4, help="print the logs of the first N DPUs (default 4)")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.add_argument("--schedules", type=int, default=0, metavar="N",
                     help="race finder: run under N tasklet schedules (round-robin + N-1 seeded random ones) and "
                          "report the symbols and addresses whose results differ (exit 3 when they do)")
    run.add_argument("--seed", type=int, default=0, help="seed of the random schedules (default 0)")
    run.add_argument("--schedule", choices=["rr", "random", "run"], default=None,
                     help="tasklet schedule of a plain run (default rr: switch at every DMA and sync call)")
    run.add_argument("--timeout", type=float, default=None, help="launch timeout in seconds (default 120)")
    run.add_argument("--not-strict", action="store_true",
                     help="resolve unaligned / base-less MRAM addresses as hardware does instead of faulting")
    run.set_defaults(func=_run)
    race = sub.add_parser("race", help="run an unchanged host program under N tasklet schedules (C-level race finder)",
                          description="Runs COMMAND (a host program linked with the emulator, e.g. built with "
                          "the drop-in commands) once with the round-robin schedule and N-1 times with seeded "
                          "random ones (through UPMEM_PROFILE_BASE=schedule=random,seed=S, which every dpu_alloc "
                          "reads), and reports the schedules whose exit status or --expect match differ. Exit 3 "
                          "when they differ.")
    race.add_argument("--schedules", type=int, default=8, metavar="N", help="schedules to run (default 8)")
    race.add_argument("--seed", type=int, default=0, help="seed of the random schedules (default 0)")
    race.add_argument("--expect", metavar="REGEX", help="a regex the output must match (e.g. 'Outputs are equal')")
    race.add_argument("--timeout", type=float, default=300.0, help="seconds per run (default 300)")
    race.add_argument("command", nargs=argparse.REMAINDER, help="-- then the program and its arguments")
    race.set_defaults(func=_race)
    env = sub.add_parser("env", help="print shell commands that put the drop-in SDK commands on PATH",
                         description="Prints `export PATH=...` for the folder holding the emulator's "
                         "dpu-upmem-dpurte-clang and dpu-pkg-config, so that an unchanged UPMEM project builds "
                         "against the emulator: eval \"$(updlrm emu env)\" (as the SDK's upmem_env.sh is "
                         "sourced). Nothing is on PATH until you do this.")
    env.add_argument("--append", action="store_true", help="append to PATH (an installed SDK keeps priority)")
    env.set_defaults(func=_env)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _race(args: argparse.Namespace) -> int:
    import os
    import re
    import subprocess

    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd or args.schedules < 2:
        print("updlrm emu race: give --schedules >= 2 and a command after --", file=sys.stderr)
        return 2
    pattern = re.compile(args.expect) if args.expect else None
    base = os.environ.get("UPMEM_PROFILE_BASE", "")
    rows = []
    for k in range(args.schedules):
        sched = "schedule=rr" if k == 0 else f"schedule=random,seed={args.seed + k}"
        env = dict(os.environ, UPMEM_PROFILE_BASE=f"{base},{sched}" if base else sched)
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            rc, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired:
            rc, out = "timeout", ""
        except OSError as exc:
            print(f"updlrm emu race: cannot run {cmd[0]}: {exc}", file=sys.stderr)
            return 2
        ok = bool(pattern.search(out)) if pattern else None
        rows.append((k, sched, rc, ok))
        mark = "" if ok is None else (" expect matched" if ok else " expect NOT matched")
        print(f"schedule {k} ({sched}): exit {rc}{mark}")
    differ = [r for r in rows if (r[2], r[3]) != (rows[0][2], rows[0][3])]
    if differ:
        print(f"results depend on the schedule: {len(differ)} of {args.schedules - 1} random schedules differ from "
              f"round-robin (reproduce one with UPMEM_PROFILE_BASE=<its schedule>)")
        return 3
    print(f"no difference between {args.schedules} schedules")
    return 0


def _env(args: argparse.Namespace) -> int:
    import os
    import shlex
    import shutil

    from updlrm.emu import emu_bin_dir, native_dir

    try:
        bin_dir = emu_bin_dir()
    except UpdlrmError as exc:
        print(f"updlrm emu env: {exc}", file=sys.stderr)
        return 2
    real = shutil.which("dpu-upmem-dpurte-clang")
    if real and Path(real).resolve().parent != bin_dir.resolve():
        print(f"# updlrm emu env: an UPMEM SDK compiler is already on PATH ({real}); "
              + ("it keeps priority (--append)" if args.append else "the emulator's now comes first"),
              file=sys.stderr)
    q = shlex.quote(str(bin_dir))
    path = f'"$PATH":{q}' if args.append else f'{q}:"$PATH"'
    print(f"export PATH={path}")
    print(f"export UPDLRM_EMU_HOME={shlex.quote(str(native_dir()))}")
    del os
    return 0


def _summary(counters: dict, launch_wall_s: float) -> dict:
    rd, wr = counters["dma_read_bytes"], counters["dma_write_bytes"]
    return {
        "dma_read_ops": int(counters["dma_read_ops"].sum()),
        "dma_read_bytes": int(rd.sum()),
        "dma_write_ops": int(counters["dma_write_ops"].sum()),
        "dma_write_bytes": int(wr.sum()),
        "dma_read_bytes_per_tasklet_dpu0": [int(x) for x in rd[0]],
        "dma_write_bytes_per_tasklet_dpu0": [int(x) for x in wr[0]],
        "host_to_dpu_bytes": int(counters["host_to_dpu_bytes"].sum()),
        "dpu_to_host_bytes": int(counters["dpu_to_host_bytes"].sum()),
        "modeled_cycles_max": int(counters["modeled_cycles"].max()),
        "wram_static_bytes": int(counters["wram_static_bytes"].max()),
        "wram_heap_peak_bytes_max": int(counters["wram_heap_peak_bytes"].max()),
        "emulator_wall_ns_per_dpu_max": int(counters["wall_ns"].max()),
        "launch_wall_s": launch_wall_s,
    }


def _run(args: argparse.Namespace) -> int:
    import time

    from updlrm import emu
    from updlrm.emu import EmuDpuSet, compile_kernel

    if args.dpus < 1 or args.launches < 1:
        print("updlrm emu run: --dpus and --launches must be >= 1", file=sys.stderr)
        return 2
    try:
        so = compile_kernel(args.kernel, nr_tasklets=args.tasklets, stack_size=args.stack_size,
                            defines=args.defines, include_dirs=args.include_dirs, strict=not args.not_strict)
    except (UpdlrmError, ValueError, FileNotFoundError) as exc:
        print(f"updlrm emu run: {exc}", file=sys.stderr)
        return 2
    heap = None
    if args.heap is not None:
        data = np.frombuffer(args.heap.read_bytes(), np.uint8)
        heap = np.concatenate([data, np.zeros((-len(data)) % 8, np.uint8)])
    if args.schedules:
        if args.schedules < 2:
            print("updlrm emu run: --schedules must be >= 2", file=sys.stderr)
            return 2

        def setup(dpus):
            if heap is not None:
                dpus.copy_to(emu.MRAM_HEAP_SYMBOL, heap)

        report = emu.find_races(so, nr_dpus=args.dpus, schedules=args.schedules, seed=args.seed, setup=setup,
                                launches=args.launches, heap_bytes=0 if heap is None else len(heap),
                                timeout=args.timeout)
        if args.json:
            print(json.dumps({"kernel": [str(k) for k in args.kernel], "schedules": args.schedules,
                              "seed": args.seed, "race_found": report.found, "differences": report.differences,
                              "faults": report.faults, "logs_differ": report.logs_differ}, indent=2, default=str))
        else:
            print(report.summary())
        return 3 if report.found else 0
    result: dict = {"kernel": [str(k) for k in args.kernel], "binary": str(so), "dpus": args.dpus,
                    "tasklets": args.tasklets, "launches": []}
    status = 0
    with EmuDpuSet(args.dpus, so) as dpus:
        if args.schedule:
            dpus.set_schedule(args.schedule, args.seed)
        if args.timeout is not None:
            dpus.set_timeout(args.timeout)
        if heap is not None:
            dpus.copy_to(emu.MRAM_HEAP_SYMBOL, heap)  # DPU_MRAM_HEAP_POINTER_NAME
        for k in range(args.launches):
            t0 = time.perf_counter()
            entry: dict = {"launch": k}
            try:
                dpus.launch()
            except DpuFaultError as exc:
                entry["fault"] = {"dpu": exc.dpu, "tasklet": exc.tasklet, "reason": exc.reason}
                status = 1
            entry["counters"] = _summary(dpus.counters(), time.perf_counter() - t0)
            entry["logs"] = {d: dpus.log(d) for d in range(min(args.log_dpus, args.dpus))}
            result["launches"].append(entry)
            if status:
                break
    if args.json:
        print(json.dumps(result, indent=2))
        return status
    print(f"kernel {', '.join(result['kernel'])} -> {so}")
    print(f"{args.dpus} emulated DPUs x {args.tasklets} tasklets")
    for entry in result["launches"]:
        print(f"--- launch {entry['launch']} ---")
        for d, text in entry["logs"].items():
            if text:
                print(f"[DPU {d}] " + text.rstrip("\n").replace("\n", f"\n[DPU {d}] "))
        c = entry["counters"]
        print(f"DMA reads : {c['dma_read_ops']} ops, {c['dma_read_bytes']} B (all DPUs)")
        print(f"DMA writes: {c['dma_write_ops']} ops, {c['dma_write_bytes']} B (all DPUs)")
        print(f"DMA read bytes per tasklet, DPU 0: {c['dma_read_bytes_per_tasklet_dpu0']}")
        print(f"host->DPU {c['host_to_dpu_bytes']} B, DPU->host {c['dpu_to_host_bytes']} B")
        print(f"WRAM static {c['wram_static_bytes']} B, heap peak {c['wram_heap_peak_bytes_max']} B")
        print(f"modeled DMA cycles (max DPU): {c['modeled_cycles_max']}  [modeled]")
        print(f"launch: {c['launch_wall_s'] * 1e3:.2f} ms  [emulator wall time, NOT a DPU latency]")
        if "fault" in entry:
            f = entry["fault"]
            print(f"FAULT on DPU {f['dpu']} (tasklet {f['tasklet']}): {f['reason']}", file=sys.stderr)
    return status
