"""Compile and run your own DPU C kernels on the updlrm UPMEM emulator, from Python.

A DPU kernel written against the UPMEM runtime API (``defs.h``, ``mram.h``, ``barrier.h``, ...)
is compiled with the host C compiler against the emulator's runtime headers
(``compile_kernel``), then run on N emulated DPUs (``EmuDpuSet``) through the emulator's
libdpu-compatible C library (``libupdlrm_emu.so``, loaded with ctypes)::

    from updlrm.emu import MRAM_HEAP_SYMBOL, compile_kernel, EmuDpuSet
    so = compile_kernel("my_kernel.c", nr_tasklets=16)
    with EmuDpuSet(64, so) as dpus:
        dpus.copy_to("params", np.array([3, 4], np.uint32))          # same bytes to every DPU
        dpus.push_to(MRAM_HEAP_SYMBOL, per_dpu)                       # [64, n] uint8-viewable
        dpus.launch()                                                 # DpuFaultError on a fault
        out = dpus.push_from(MRAM_HEAP_SYMBOL, 64, offset=4096)       # [64, 64] uint8
        print(dpus.log(0), dpus.counters()["dma_read_bytes"].sum())

Where the native files are: the build installs them into ``updlrm/_native`` (CMake's
``UPDLRM_INSTALL_DIR``). With scikit-build-core's editable install the Python sources stay in the
checkout while ``_native`` lands in site-packages, and the editable redirect finder exposes it as
the namespace package ``updlrm._native``: ``importlib.util.find_spec("updlrm._native")`` gives its
real folder in both the editable and the regular install (checked with scikit-build-core 0.10+).
``UPDLRM_NATIVE_DIR`` overrides the lookup.

``MRAM_HEAP_SYMBOL`` is the symbol of the MRAM heap (``DPU_MRAM_HEAP_POINTER_NAME`` of the
emulator's ``dpu.h``, the SDK's name), read on first use from the native module built with that
header (``updlrm._native._emu``), so Python never types the string.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from updlrm.errors import BackendUnavailableError, DpuFaultError, NativeError, UpdlrmError

__all__ = [
    "KernelCompileError",
    "EmuDpuSet",
    "compile_kernel",
    "native_dir",
    "emu_include_dir",
    "emu_bin_dir",
    "COUNTERS_DTYPE",
    "MAX_TASKLETS",
    "MRAM_HEAP_SYMBOL",
    "RaceReport",
    "find_races",
]

MAX_TASKLETS = 24  # UPMEM v1A hardware threads (v1B: 16)
DPU_ALLOCATE_ALL = 0xFFFFFFFF
_DPU_ERR_DPU_FAULT = 21  # DPU_ERR_DPU_FAULT in dpu_error_t (the SDK's numbering, host/emu/include_host/dpu.h)
SCHEDULES = {"rr": 0, "random": 1, "run": 2}  # DPU_EMU_SCHEDULE_* (dpu_emu.h)
_NO_TASKLET = 0xFFFFFFFF

# Mirror of struct dpu_emu_counters (host/emu/include_host/dpu_emu.h); checked against the C
# sizeof when the library loads.
COUNTERS_DTYPE = np.dtype(
    [
        ("dma_read_ops", "<u8", (24,)),
        ("dma_read_bytes", "<u8", (24,)),
        ("dma_write_ops", "<u8", (24,)),
        ("dma_write_bytes", "<u8", (24,)),
        ("host_to_dpu_bytes", "<u8"),
        ("dpu_to_host_bytes", "<u8"),
        ("wall_ns", "<u8"),
        ("modeled_cycles", "<u8"),
        ("wram_static_bytes", "<u4"),
        ("wram_heap_peak_bytes", "<u4"),
        ("nr_tasklets", "<u4"),
        ("faulted", "<i4"),
        ("mram_realigned_ops", "<u8"),
        ("mram_rebased_ops", "<u8"),
        ("switches", "<u8"),
    ]
)


def __getattr__(name: str):
    """``MRAM_HEAP_SYMBOL``: DPU_MRAM_HEAP_POINTER_NAME from the native module (loaded lazily, so
    that importing updlrm.emu works before the native parts are built)."""
    if name == "MRAM_HEAP_SYMBOL":
        try:
            from updlrm._native import _emu
        except ImportError as exc:
            raise BackendUnavailableError(
                f"updlrm.emu.MRAM_HEAP_SYMBOL comes from the native module updlrm._native._emu, which failed to "
                f"import ({exc}); build the native parts with scripts/dev_build.sh"
            ) from exc
        value = str(_emu.MRAM_HEAP_SYMBOL)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class KernelCompileError(UpdlrmError, RuntimeError):
    """A DPU kernel failed to compile or link for the emulator; the message holds the compiler's output."""


# ----------------------------------------------------------------------------------------------
# Locating the native files


def native_dir() -> Path:
    """Folder holding ``libupdlrm_emu.so``, ``emu_include/`` and ``kernels/`` (see module doc)."""
    env = os.environ.get("UPDLRM_NATIVE_DIR")
    candidates: list[Path] = [Path(env)] if env else []
    try:
        spec = importlib.util.find_spec("updlrm._native")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) for p in spec.submodule_search_locations]
    candidates.append(Path(__file__).resolve().parent / "_native")
    for c in candidates:
        if (c / "libupdlrm_emu.so").is_file():
            return c
    raise BackendUnavailableError(
        "the updlrm emulator library (libupdlrm_emu.so) is not installed; looked in "
        + ", ".join(str(c) for c in candidates)
        + ". Build the native parts with scripts/dev_build.sh (or pip install .)"
    )


def emu_bin_dir() -> Path:
    """The folder of the drop-in SDK commands (``dpu-upmem-dpurte-clang``, ``dpu-pkg-config``)."""
    d = native_dir() / "emu_bin"
    if not (d / "dpu-upmem-dpurte-clang").is_file():
        raise BackendUnavailableError(f"the emulator's drop-in commands are missing in {d}; rebuild updlrm")
    return d


def emu_include_dir() -> Path:
    """The emulator's DPU runtime headers (defs.h, mram.h, ...) and kernel.ld."""
    d = native_dir() / "emu_include"
    if not (d / "defs.h").is_file() or not (d / "kernel.ld").is_file():
        raise BackendUnavailableError(f"emulator runtime headers missing in {d}; rebuild with scripts/dev_build.sh")
    return d


# ----------------------------------------------------------------------------------------------
# Compiling kernels


def _cache_dir() -> Path:
    env = os.environ.get("UPDLRM_CACHE_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "updlrm"
    return base / "emu_kernels"


def _tool(name: str, env_var: str) -> str:
    chosen = os.environ.get(env_var, name)
    path = shutil.which(chosen)
    if path is None:
        raise KernelCompileError(f"{chosen!r} (the {name} used to build emulator kernels, ${env_var}) is not on PATH")
    return path


def compile_kernel(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    nr_tasklets: int = 16,
    stack_size: int = 1024,
    defines: Iterable[str] = (),
    include_dirs: Iterable[str | os.PathLike] = (),
    out_dir: str | os.PathLike | None = None,
    strict: bool = True,
    race_free: bool = False,
) -> Path:
    """Compile a DPU C program for the emulator and return the path of its ``.emu.so``.

    The sources compile unchanged with the host C compiler (``$CC``, default ``cc``) against the
    emulator's runtime headers, with ``-DNR_TASKLETS=nr_tasklets -DSTACK_SIZE_DEFAULT=stack_size``
    and each of ``defines`` (``"NAME"`` or ``"NAME=VALUE"``); the objects are merged with
    ``ld -r -T kernel.ld`` (which gathers the WRAM globals the emulator keeps per DPU) and linked as
    a shared object. Results are cached in ``out_dir`` (default ``~/.cache/updlrm/emu_kernels`` or
    ``$UPDLRM_CACHE_DIR``) under a hash of the sources, headers in ``include_dirs``, options and
    the runtime headers: an unchanged kernel is not rebuilt.

    ``strict`` (default True) keeps the emulator's strict MRAM addressing for this kernel
    (unaligned or base-less MRAM addresses fault); False resolves them as hardware does, as the
    drop-in ``dpu-upmem-dpurte-clang`` does by default. ``race_free=True`` marks a kernel whose
    results cannot depend on how tasklets interleave, so that the emulator may run each tasklet
    until it blocks (faster); the default schedule switches at every DMA and synchronization call.
    Kernels carry line tables (``-g1``) so that a crash report names the source line.

    Raises ``KernelCompileError`` with the compiler's output when compiling fails, ``ValueError``
    for bad arguments and ``FileNotFoundError`` for a missing source.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    srcs = [Path(s).resolve() for s in sources]
    if not srcs:
        raise ValueError("compile_kernel: no source files given")
    for s in srcs:
        if not s.is_file():
            raise FileNotFoundError(f"compile_kernel: source {s} does not exist")
    if not isinstance(nr_tasklets, int) or not 1 <= nr_tasklets <= MAX_TASKLETS:
        raise ValueError(f"compile_kernel: nr_tasklets={nr_tasklets!r} must be an int in 1..{MAX_TASKLETS}")
    if not isinstance(stack_size, int) or stack_size <= 0 or stack_size % 8:
        raise ValueError(f"compile_kernel: stack_size={stack_size!r} must be a positive multiple of 8 bytes")
    defines = [str(d) for d in defines]
    for d in defines:
        if not d or d.startswith("-") or " " in d:
            raise ValueError(f"compile_kernel: define {d!r} must look like NAME or NAME=VALUE")
    incs = [Path(i).resolve() for i in include_dirs]
    for i in incs:
        if not i.is_dir():
            raise FileNotFoundError(f"compile_kernel: include dir {i} does not exist")
    rt = emu_include_dir()
    cc, ld = _tool("cc", "CC"), _tool("ld", "LD")

    h = hashlib.sha256()
    h.update(f"{nr_tasklets}|{stack_size}|{defines}|{cc}|{ld}|{strict}|{race_free}".encode())
    for s in srcs:
        h.update(str(s).encode() + b"\0" + s.read_bytes())
    for d in [rt, *incs]:
        for f in sorted(d.glob("*")):
            if f.is_file() and f.suffix in (".h", ".ld"):
                h.update(str(f).encode() + b"\0" + f.read_bytes())
    digest = h.hexdigest()[:16]
    out_dir = Path(out_dir) if out_dir is not None else _cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{srcs[0].stem}-{digest}.emu.so"
    if out.is_file():
        return out

    flags = ["-O2", "-g1", "-fPIC", "-fno-common", "-std=gnu11", f"-I{rt}"]
    flags += [f"-I{i}" for i in incs]
    flags += [f"-DNR_TASKLETS={nr_tasklets}", f"-DSTACK_SIZE_DEFAULT={stack_size}"]
    flags += [f"-DUPDLRM_EMU_STRICT={int(bool(strict))}", f"-DUPDLRM_EMU_RACE_FREE={int(bool(race_free))}"]
    flags += [f"-D{d}" for d in defines]
    with tempfile.TemporaryDirectory(prefix="updlrm-kernel-", dir=out_dir) as tmp:
        objs = []
        for k, s in enumerate(srcs):
            obj = Path(tmp) / f"{k}_{s.stem}.o"
            _run([cc, *flags, "-c", str(s), "-o", str(obj)], f"compiling {s}")
            objs.append(str(obj))
        merged = Path(tmp) / "merged.o"
        _run([ld, "-r", "-T", str(rt / "kernel.ld"), "-o", str(merged), *objs], "merging objects (ld -r)")
        so = Path(tmp) / "kernel.so"
        _run([cc, "-shared", "-Wl,-Bsymbolic", "-o", str(so), str(merged)], "linking the kernel")
        os.replace(so, out)  # atomic: concurrent builders of the same kernel both succeed
    return out


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelCompileError(
            f"{what} failed (exit {proc.returncode}):\n$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}".rstrip()
        )


# ----------------------------------------------------------------------------------------------
# The C library


class _RankList(ctypes.Structure):
    _fields_ = [("nr_ranks", ctypes.c_uint32), ("ranks", ctypes.c_void_p)]


class _SetUnion(ctypes.Union):
    _fields_ = [("list", _RankList), ("dpu", ctypes.c_void_p)]


class _DpuSetT(ctypes.Structure):
    """struct dpu_set_t (passed by value): kind, then a rank list or one DPU, as in the SDK."""

    _anonymous_ = ("u",)
    _fields_ = [("kind", ctypes.c_int), ("u", _SetUnion)]


_LIB: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is not None:
        return _LIB
    lib = ctypes.CDLL(str(native_dir() / "libupdlrm_emu.so"))
    S, P, U32, SZ, I = _DpuSetT, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_size_t, ctypes.c_int
    CP = ctypes.c_char_p
    sigs = {
        "dpu_alloc": (I, [U32, CP, ctypes.POINTER(S)]),
        "dpu_free": (I, [S]),
        "dpu_load": (I, [S, CP, P]),
        "dpu_launch": (I, [S, I]),
        "dpu_sync": (I, [S]),
        "dpu_copy_to": (I, [S, CP, U32, P, SZ]),
        "dpu_copy_from": (I, [S, CP, U32, P, SZ]),
        "dpu_prepare_xfer": (I, [S, P]),
        "dpu_push_xfer": (I, [S, I, CP, U32, SZ, I]),
        "updlrm_emu_set_dpu": (S, [S, U32]),
        "dpu_emu_get_counters": (I, [S, P]),
        "dpu_emu_reset_transfer_counters": (I, [S]),
        "dpu_emu_last_fault": (I, [S, ctypes.POINTER(U32), ctypes.POINTER(U32), ctypes.c_char_p, SZ]),
        "dpu_emu_last_error": (CP, []),
        "dpu_emu_log": (ctypes.POINTER(ctypes.c_char), [S, ctypes.POINTER(SZ)]),
        "dpu_emu_counters_size": (SZ, []),
        "dpu_emu_set_workers": (None, [ctypes.c_uint]),
        "dpu_get_nr_dpus": (I, [S, ctypes.POINTER(U32)]),
        "dpu_emu_set_schedule": (I, [S, I, ctypes.c_uint64]),
        "dpu_emu_set_timeout": (I, [S, U32]),
        "dpu_emu_set_strict": (I, [S, I]),
        "dpu_emu_list_symbols": (SZ, [S, ctypes.c_char_p, SZ]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    if lib.dpu_emu_counters_size() != COUNTERS_DTYPE.itemsize:
        raise NativeError(
            f"libupdlrm_emu.so counters struct is {lib.dpu_emu_counters_size()} bytes, updlrm/emu.py expects "
            f"{COUNTERS_DTYPE.itemsize}: rebuild with scripts/dev_build.sh"
        )
    _LIB = lib
    return lib


_DPU_ERROR_NAMES = [
    "DPU_OK", "DPU_ERR_INTERNAL", "DPU_ERR_SYSTEM", "DPU_ERR_DRIVER", "DPU_ERR_ALLOCATION",
    "DPU_ERR_INVALID_DPU_SET", "DPU_ERR_INVALID_THREAD_ID", "DPU_ERR_INVALID_NOTIFY_ID",
    "DPU_ERR_INVALID_WRAM_ACCESS", "DPU_ERR_INVALID_IRAM_ACCESS", "DPU_ERR_INVALID_MRAM_ACCESS",
    "DPU_ERR_INVALID_SYMBOL_ACCESS", "DPU_ERR_MRAM_BUSY", "DPU_ERR_TRANSFER_ALREADY_SET",
    "DPU_ERR_NO_PROGRAM_LOADED", "DPU_ERR_DIFFERENT_DPU_PROGRAMS", "DPU_ERR_CORRUPTED_MEMORY",
    "DPU_ERR_DPU_DISABLED", "DPU_ERR_DPU_ALREADY_RUNNING", "DPU_ERR_INVALID_MEMORY_TRANSFER",
    "DPU_ERR_INVALID_LAUNCH_POLICY", "DPU_ERR_DPU_FAULT", "DPU_ERR_ELF_INVALID_FILE",
    "DPU_ERR_ELF_NO_SUCH_FILE", "DPU_ERR_ELF_NO_SUCH_SECTION", "DPU_ERR_TIMEOUT",
    "DPU_ERR_INVALID_PROFILE", "DPU_ERR_UNKNOWN_SYMBOL", "DPU_ERR_LOG_FORMAT",
    "DPU_ERR_LOG_CONTEXT_MISSING", "DPU_ERR_LOG_BUFFER_TOO_SMALL", "DPU_ERR_VPD_INVALID_FILE",
    "DPU_ERR_VPD_NO_REPAIR", "DPU_ERR_NO_THREAD_PER_RANK", "DPU_ERR_INVALID_BUFFER_SIZE",
    "DPU_ERR_NONBLOCKING_SYNC_CALLBACK", "DPU_ERR_TOO_MANY_TASKLETS", "DPU_ERR_SG_TOO_MANY_BLOCKS",
    "DPU_ERR_SG_LENGTH_MISMATCH", "DPU_ERR_SG_NOT_ACTIVATED", "DPU_ERR_SG_NOT_MRAM_SYMBOL",
]  # fmt: skip (dpu_error_t order, the SDK's numbering)


def error_name(status: int) -> str:
    """SDK name of a dpu_error_t value, e.g. 21 -> 'DPU_ERR_DPU_FAULT'."""
    return _DPU_ERROR_NAMES[status] if 0 <= status < len(_DPU_ERROR_NAMES) else f"dpu_error_t {status}"


# ----------------------------------------------------------------------------------------------
# A DPU set


def _as_bytes_array(data) -> np.ndarray:
    arr = np.ascontiguousarray(data)
    return arr.reshape(-1).view(np.uint8) if arr.size else np.zeros(0, np.uint8)


class EmuDpuSet:
    """``nr_dpus`` emulated DPUs running one kernel (an ``.emu.so`` from ``compile_kernel``).

    Symbols are the kernel's global names: WRAM variables (``__host`` or any global), MRAM
    variables (``__mram``/``__mram_noinit``) and :data:`MRAM_HEAP_SYMBOL` (the MRAM heap, i.e.
    ``DPU_MRAM_HEAP_POINTER``). Offsets and lengths are bytes; MRAM ones must be multiples of 8,
    WRAM ones multiples of 4 (as on the real SDK). Errors raise ``NativeError`` (naming the symbol,
    offset and size) and DPU faults ``DpuFaultError`` (naming the DPU, the tasklet and the access).
    ``workers`` sets the emulator's worker threads for this set (default: one per CPU).
    """

    def __init__(self, nr_dpus: int, kernel: str | os.PathLike | None = None, profile: str = "",
                 workers: int | None = None):
        if not isinstance(nr_dpus, int) or not 1 <= nr_dpus <= 65536:
            raise ValueError(f"EmuDpuSet: nr_dpus={nr_dpus!r} must be an int in 1..65536")
        if workers is not None and (not isinstance(workers, int) or not 1 <= workers <= 1024):
            raise ValueError(f"EmuDpuSet: workers={workers!r} must be an int in 1..1024")
        self._lib = _lib()
        if workers is not None:
            profile = f"{profile},workers={workers}" if profile else f"workers={workers}"
        self._set = _DpuSetT()
        self._check(self._lib.dpu_alloc(nr_dpus, profile.encode(), ctypes.byref(self._set)), "dpu_alloc")
        self.nr_dpus = nr_dpus
        self._dpus = [self._lib.updlrm_emu_set_dpu(self._set, i) for i in range(nr_dpus)]
        self.kernel: Path | None = None
        if kernel is not None:
            self.load(kernel)

    # -- plumbing --------------------------------------------------------------------------
    def _check(self, status: int, what: str) -> None:
        if status == 0:
            return
        detail = (self._lib.dpu_emu_last_error() or b"").decode(errors="replace")
        if status == _DPU_ERR_DPU_FAULT and getattr(self, "_set", None) is not None and self._set.list.ranks:
            fault = self.last_fault()
            if fault is not None:
                dpu, tasklet, reason = fault
                where = f"DPU {dpu}" + (f", tasklet {tasklet}" if tasklet >= 0 else "")
                raise DpuFaultError(f"{what}: {where} faulted: {reason}", dpu=dpu, tasklet=tasklet,
                                    reason=reason, status=status)
        raise NativeError(f"{what} failed with {error_name(status)}: {detail}", status)

    def _live(self) -> _DpuSetT:
        if not self._set.list.ranks:
            raise NativeError("this EmuDpuSet is closed")
        return self._set

    def _dpu(self, dpu: int) -> _DpuSetT:
        self._live()
        if not isinstance(dpu, (int, np.integer)) or not 0 <= int(dpu) < self.nr_dpus:
            raise IndexError(f"DPU index {dpu!r} is outside 0..{self.nr_dpus - 1}")
        return self._dpus[int(dpu)]

    # -- API -------------------------------------------------------------------------------
    def load(self, kernel: str | os.PathLike) -> None:
        """Load an ``.emu.so`` into every DPU (WRAM globals start from the kernel's initial values)."""
        path = Path(kernel)
        if not path.is_file():
            raise FileNotFoundError(f"kernel {path} does not exist (build it with updlrm.emu.compile_kernel)")
        self._check(self._lib.dpu_load(self._live(), str(path).encode(), None), f"dpu_load({path})")
        self.kernel = path

    def copy_to(self, symbol: str, data, offset: int = 0, dpu: int | None = None) -> None:
        """Write the bytes of ``data`` (any array-like) to ``symbol`` at ``offset`` on every DPU (or one)."""
        buf = _as_bytes_array(data)
        target = self._live() if dpu is None else self._dpu(dpu)
        self._check(self._lib.dpu_copy_to(target, symbol.encode(), offset, buf.ctypes.data, buf.nbytes),
                    f"copy_to({symbol!r}, offset={offset}, {buf.nbytes} bytes)")

    def copy_from(self, symbol: str, length: int, dpu: int, offset: int = 0, dtype=np.uint8) -> np.ndarray:
        """Read ``length`` bytes of ``symbol`` at ``offset`` from DPU ``dpu``, viewed as ``dtype``."""
        out = np.zeros(length, np.uint8)
        self._check(self._lib.dpu_copy_from(self._dpu(dpu), symbol.encode(), offset, out.ctypes.data, length),
                    f"copy_from({symbol!r}, offset={offset}, {length} bytes, DPU {dpu})")
        return out.view(dtype)

    def push_to(self, symbol: str, per_dpu, offset: int = 0) -> None:
        """Parallel push: row d of ``per_dpu`` (array [nr_dpus, ...], any dtype) goes to DPU d."""
        arr = np.ascontiguousarray(per_dpu)
        if arr.ndim < 1 or arr.shape[0] != self.nr_dpus:
            raise ValueError(f"push_to({symbol!r}): per_dpu has shape {arr.shape}; expected [{self.nr_dpus}, ...]")
        rows = arr.reshape(self.nr_dpus, -1).view(np.uint8)
        length = rows.shape[1]
        base = rows.ctypes.data
        for d in range(self.nr_dpus):  # one prepare per DPU, as with the SDK
            self._check(self._lib.dpu_prepare_xfer(self._dpus[d], base + d * length), "dpu_prepare_xfer")
        self._check(self._lib.dpu_push_xfer(self._live(), 0, symbol.encode(), offset, length, 0),
                    f"push_xfer(TO_DPU, {symbol!r}, offset={offset}, {length} bytes)")

    def push_from(self, symbol: str, length: int, offset: int = 0, dtype=np.uint8) -> np.ndarray:
        """Parallel pull: ``length`` bytes of ``symbol`` from every DPU -> array [nr_dpus, length/itemsize]."""
        out = np.zeros((self.nr_dpus, length), np.uint8)
        base = out.ctypes.data
        for d in range(self.nr_dpus):
            self._check(self._lib.dpu_prepare_xfer(self._dpus[d], base + d * length), "dpu_prepare_xfer")
        self._check(self._lib.dpu_push_xfer(self._live(), 1, symbol.encode(), offset, length, 0),
                    f"push_xfer(FROM_DPU, {symbol!r}, offset={offset}, {length} bytes)")
        return out.view(dtype)

    def launch(self, sync: bool = True, timeout: float | None = None) -> None:
        """Run the kernel on every DPU (``sync=False``: in the background; call ``sync()``).

        ``timeout`` (seconds) bounds this and later launches (default: the profile's
        ``timeoutMs``, else ``$UPDLRM_EMU_TIMEOUT_MS``, else 120 s; 0 = none): DPUs still running
        then fault with "launch timed out" (``DpuFaultError``) and the set stays usable.
        """
        if timeout is not None:
            self.set_timeout(timeout)
        self._check(self._lib.dpu_launch(self._live(), 1 if sync else 0), "dpu_launch")

    def set_timeout(self, seconds: float) -> None:
        """Launch timeout of later launches in seconds (0 = none)."""
        if not seconds >= 0:
            raise ValueError(f"timeout={seconds!r} must be >= 0 seconds")
        ms = int(round(seconds * 1000))
        if seconds > 0:
            ms = max(ms, 1)
        self._check(self._lib.dpu_emu_set_timeout(self._live(), min(ms, 2**32 - 1)), "dpu_emu_set_timeout")

    def set_schedule(self, policy: str = "rr", seed: int = 0) -> None:
        """Tasklet scheduling of later launches: ``"rr"`` (default: round-robin switch at every DMA
        and synchronization call, as tasklets interleave on a DPU), ``"random"`` (a random runnable
        tasklet at the same points, reproducible by ``seed``: the race finder) or ``"run"`` (each
        tasklet runs until it blocks; only for kernels whose results cannot depend on it)."""
        if policy not in SCHEDULES:
            raise ValueError(f"schedule {policy!r} must be one of {sorted(SCHEDULES)}")
        if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed={seed!r} must be an int in [0, 2**64)")
        self._check(self._lib.dpu_emu_set_schedule(self._live(), SCHEDULES[policy], int(seed)),
                    "dpu_emu_set_schedule")

    def set_strict(self, strict: bool | None) -> None:
        """MRAM addressing of later launches: True = unaligned or base-less MRAM addresses fault
        (today's checks), False = resolved as hardware does (low 3 bits dropped, an offset without
        the 0x08000000 base taken as one; counted in ``mram_realigned_ops``/``mram_rebased_ops``),
        None = the kernel's build (``compile_kernel(strict=...)``, default strict)."""
        value = -1 if strict is None else int(bool(strict))
        self._check(self._lib.dpu_emu_set_strict(self._live(), value), "dpu_emu_set_strict")

    def sync(self) -> None:
        """Wait for a background launch; raises ``DpuFaultError`` if a DPU faulted."""
        self._check(self._lib.dpu_sync(self._live()), "dpu_sync")

    def counters(self) -> dict[str, np.ndarray]:
        """Counters of the last launch per DPU: name -> array [nr_dpus] or [nr_dpus, nr_tasklets].

        DMA ops/bytes per tasklet (``dma_read_ops`` ...), host bytes ``host_to_dpu_bytes`` /
        ``dpu_to_host_bytes`` (since allocation or ``reset_transfer_counters``), ``wall_ns``
        (emulator-wall), ``modeled_cycles`` (DMA cost model), ``wram_static_bytes``,
        ``wram_heap_peak_bytes``, ``faulted``.
        """
        raw = np.zeros(self.nr_dpus, COUNTERS_DTYPE)
        self._check(self._lib.dpu_emu_get_counters(self._live(), raw.ctypes.data), "dpu_emu_get_counters")
        nt = int(raw["nr_tasklets"].max()) if self.nr_dpus else 0
        nt = nt or 1
        out = {}
        for name in COUNTERS_DTYPE.names:
            col = raw[name]
            out[name] = col[:, :nt].copy() if col.ndim == 2 else col.copy()
        return out

    def reset_transfer_counters(self) -> None:
        self._check(self._lib.dpu_emu_reset_transfer_counters(self._live()), "dpu_emu_reset_transfer_counters")

    def log(self, dpu: int) -> str:
        """What DPU ``dpu`` printed (printf) during the last launch."""
        n = ctypes.c_size_t(0)
        ptr = self._lib.dpu_emu_log(self._dpu(dpu), ctypes.byref(n))
        return ctypes.string_at(ptr, n.value).decode(errors="replace")

    def last_fault(self) -> tuple[int, int, str] | None:
        """(dpu, tasklet or -1, reason) of the set's last fault, or None if it never faulted."""
        dpu, tasklet = ctypes.c_uint32(), ctypes.c_uint32()
        msg = ctypes.create_string_buffer(512)
        if self._lib.dpu_emu_last_fault(self._live(), ctypes.byref(dpu), ctypes.byref(tasklet), msg, 512) != 0:
            return None
        t = -1 if tasklet.value == _NO_TASKLET else int(tasklet.value)
        return int(dpu.value), t, msg.value.decode(errors="replace")

    def symbols(self) -> list[tuple[str, str, int, int]]:
        """The kernel's data symbols: (name, "W" or "M", DPU address, size in bytes)."""
        need = self._lib.dpu_emu_list_symbols(self._live(), None, 0)
        buf = ctypes.create_string_buffer(need + 1)
        self._lib.dpu_emu_list_symbols(self._live(), buf, need + 1)
        out = []
        for line in buf.value.decode(errors="replace").splitlines():
            name, kind, addr, size = line.split()
            out.append((name, kind, int(addr), int(size)))
        return out

    def close(self) -> None:
        """Free the DPUs (idempotent)."""
        if getattr(self, "_set", None) is not None and self._set.list.ranks:
            self._lib.dpu_free(self._set)
            self._set.list.ranks = None

    def __enter__(self) -> "EmuDpuSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------------------------
# The race finder


class RaceReport:
    """What ``find_races`` saw: ``differences`` is a list of dicts, one per (DPU, symbol) whose
    final bytes differ between schedules: ``dpu``, ``symbol``, ``kind`` ("W" WRAM, "M" MRAM,
    "heap"), ``address`` (the first differing byte, as the DPU sees it), ``offsets`` (differing
    byte offsets in the symbol, first 16), ``element`` (the first differing 4-byte element, which is
    the tasklet's slot in arrays indexed by ``me()``), ``values`` ({schedule: uint32 at that
    element}), ``schedules`` (the schedules that disagree with schedule 0). Schedule 0 is the
    default round-robin one, schedule k >= 1 random with seed ``seed + k``. ``faults`` holds
    {schedule: fault message} for schedules that faulted (a fault under some schedules only is a
    race too), ``logs_differ`` the schedules whose printf output differs from schedule 0."""

    def __init__(self, schedules: int, seed: int):
        self.schedules = schedules
        self.seed = seed
        self.differences: list[dict] = []
        self.faults: dict[int, str] = {}
        self.logs_differ: list[int] = []

    @property
    def found(self) -> bool:
        return bool(self.differences or self.logs_differ or (self.faults and len(self.faults) < self.schedules))

    def summary(self) -> str:
        if not self.found:
            return (f"no difference between {self.schedules} schedules (round-robin + {self.schedules - 1} random, "
                    f"seed {self.seed})")
        lines = [f"results depend on the schedule ({self.schedules} schedules, seed {self.seed}):"]
        for d in self.differences[:50]:
            vals = ", ".join(f"s{k}={v}" for k, v in list(d["values"].items())[:6])
            lines.append(f"  DPU {d['dpu']} {d['symbol']} ({d['kind']}) at 0x{d['address']:08x}, byte offsets "
                         f"{d['offsets'][:8]}, element {d['element']}: {vals}; differs in schedules "
                         f"{d['schedules'][:10]}")
        if len(self.differences) > 50:
            lines.append(f"  ... {len(self.differences) - 50} more")
        for k, msg in sorted(self.faults.items()):
            lines.append(f"  schedule {k} faulted: {msg}")
        if self.logs_differ:
            lines.append(f"  printf output differs in schedules {self.logs_differ[:10]}")
        return "\n".join(lines)


def find_races(
    kernel: str | os.PathLike,
    nr_dpus: int = 1,
    schedules: int = 16,
    seed: int = 0,
    setup=None,
    launches: int = 1,
    heap_bytes: int = 0,
    max_symbol_bytes: int = 1 << 20,
    timeout: float | None = None,
) -> RaceReport:
    """Run ``kernel`` (an ``.emu.so``) under ``schedules`` tasklet schedules and report what differs.

    Each schedule gets a fresh set of ``nr_dpus`` DPUs; ``setup(dpus)`` (optional) writes the
    inputs, then the kernel runs ``launches`` times. Compared afterwards: every data symbol of
    the kernel (WRAM globals, ``__host`` and ``__mram`` variables, each up to ``max_symbol_bytes``),
    the first ``heap_bytes`` of the MRAM heap, the printf logs and faults. Schedule 0 is the
    default round-robin one; schedule k >= 1 is random with seed ``seed + k`` (reproduce one with
    ``EmuDpuSet.set_schedule("random", seed + k)``). A kernel that is free of races gives the same
    results under all of them; a planted race is typically found within 8 schedules (see
    tests/test_emu_races.py).
    """
    if not isinstance(schedules, int) or schedules < 2:
        raise ValueError(f"schedules={schedules!r} must be an int >= 2 (round-robin + random ones)")
    report = RaceReport(schedules, seed)
    snaps: list[dict] = []
    logs: list[list[str]] = []
    symbols = None
    for k in range(schedules):
        with EmuDpuSet(nr_dpus, kernel) as dpus:
            if k > 0:
                dpus.set_schedule("random", seed + k)
            if timeout is not None:
                dpus.set_timeout(timeout)
            if setup is not None:
                setup(dpus)
            try:
                for _ in range(launches):
                    dpus.launch()
            except DpuFaultError as exc:
                report.faults[k] = str(exc)
            if symbols is None:
                symbols = [sym for sym in dpus.symbols()]
            snap = {}
            for name, kind, addr, size in symbols:
                n = min(size, max_symbol_bytes)
                n -= n % (8 if kind == "M" else 4)
                if n <= 0:
                    continue
                snap[(name, kind, addr)] = dpus.push_from(name, n)
            if heap_bytes:
                snap[(MRAM_HEAP_SYMBOL, "heap", 0)] = dpus.push_from(MRAM_HEAP_SYMBOL, heap_bytes - heap_bytes % 8)
            snaps.append(snap)
            logs.append([dpus.log(d) for d in range(nr_dpus)])
    base = snaps[0]
    for key, ref in base.items():
        name, kind, addr = key
        for d in range(nr_dpus):
            differing = [k for k in range(1, schedules) if not np.array_equal(snaps[k][key][d], ref[d])]
            if not differing:
                continue
            other = snaps[differing[0]][key][d]
            offs = np.nonzero(other != ref[d])[0]
            first = int(offs[0])
            elem = first // 4
            values = {}
            for k in [0, *differing]:
                row = snaps[k][key][d]
                values[k] = int(row[elem * 4 : elem * 4 + 4].view(np.uint32)[0]) if row.size >= elem * 4 + 4 else None
            report.differences.append({
                "dpu": d, "symbol": name, "kind": kind, "address": addr + first, "offsets": offs[:16].tolist(),
                "element": elem, "values": values, "schedules": differing,
            })
    report.logs_differ = [k for k in range(1, schedules) if logs[k] != logs[0]]
    return report
