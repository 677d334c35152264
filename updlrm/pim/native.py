"""Finding the PIM backend's native pieces: the pybind11 module and the DPU kernel for a device.

* ``device="emulator"``: module ``updlrm._native._emu`` (host driver linked with host/emu) and the
  kernel ``<name>.emu.so`` built by CMake (``updlrm/_native/kernels/``) or, for a tasklet count
  that was not built, compiled on first use with :func:`updlrm.emu.compile_kernel`.
* ``device="simulator"`` / ``"hw"``: module ``updlrm._native._sdk`` (the same driver linked with the
  UPMEM SDK's libdpu) and the kernel ``<name>.dpu``; both exist only when the build found the SDK,
  otherwise :class:`~updlrm.errors.BackendUnavailableError` says so.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from updlrm.errors import BackendUnavailableError

DEVICES = ("emulator", "simulator", "hw")
#: libdpu profile per device (the emulator ignores unknown keys).
PROFILES = {"emulator": "backend=emulator", "simulator": "backend=simulator", "hw": "backend=hw"}
KERNEL_NAME = "emb_lookup"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def native_module(device: str):
    """The pybind11 module serving ``device`` (``_emu`` or ``_sdk``)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    name = "_emu" if device == "emulator" else "_sdk"
    try:
        return importlib.import_module(f"updlrm._native.{name}")
    except ImportError as exc:
        if device == "emulator":
            raise BackendUnavailableError(
                f"the emulator module updlrm._native._emu failed to import ({exc}); rebuild with scripts/dev_build.sh"
            ) from exc
        raise BackendUnavailableError(
            f"device {device!r} needs updlrm._native._sdk, which is built only when the UPMEM SDK is found at "
            f"build time (dpu-pkg-config on PATH or UPMEM_HOME); this build did not find it ({exc}). "
            f"Use device='emulator', or install the SDK and rebuild."
        ) from exc


@dataclass(frozen=True)
class Abi:
    """Sizes, codes and limits of dpu_kernels/include/updlrm_abi.h as the native module was compiled
    with them (``sizeof`` and macros read in C++): Python never retypes the header."""

    version: int
    launch_args_bytes: int  # sizeof(struct updlrm_launch_args)
    status_bytes: int  # sizeof(struct updlrm_status)
    shard_bytes: int  # sizeof(struct updlrm_shard)
    dtype_codes: dict  # {"fp32": UPDLRM_DTYPE_FP32, "int32": ..., "int16": ..., "int8": UPDLRM_DTYPE_INT8}
    max_shards: int  # UPDLRM_MAX_SHARDS, shard descriptors per DPU
    max_tasklets: int  # UPDLRM_MAX_TASKLETS
    mram_bytes: int  # UPDLRM_MRAM_BYTES, MRAM bank per DPU
    heap_symbol: str  # DPU_MRAM_HEAP_POINTER_NAME, the MRAM heap's symbol for host copies


_abi_cache: dict[str, Abi] = {}


def abi(module=None) -> Abi:
    """The ABI constants of ``module`` (default: the emulator module, whose header is the same one
    the SDK module is built with)."""
    module = module if module is not None else native_module("emulator")
    key = getattr(module, "__name__", str(id(module)))
    if key not in _abi_cache:
        _abi_cache[key] = Abi(
            version=int(module.ABI_VERSION),
            launch_args_bytes=int(module.LAUNCH_ARGS_BYTES),
            status_bytes=int(module.STATUS_BYTES),
            shard_bytes=int(module.SHARD_BYTES),
            dtype_codes={"fp32": int(module.DTYPE_FP32), "int32": int(module.DTYPE_INT32),
                         "int16": int(module.DTYPE_INT16), "int8": int(module.DTYPE_INT8)},
            max_shards=int(module.MAX_SHARDS),
            max_tasklets=int(module.MAX_TASKLETS),
            mram_bytes=int(module.MRAM_BYTES),
            heap_symbol=str(module.MRAM_HEAP_SYMBOL),
        )
    return _abi_cache[key]


def kernels_dir(module) -> Path:
    """Folder holding the built kernels next to ``module``."""
    return Path(module.__file__).resolve().parent / "kernels"


def kernel_path(device: str, nr_tasklets: int, module=None) -> str:
    """Path of the lookup kernel built with ``nr_tasklets`` tasklets for ``device``."""
    module = module if module is not None else native_module(device)
    top = abi(module).max_tasklets
    if not 1 <= int(nr_tasklets) <= top:
        raise ValueError(f"nr_tasklets must be 1..{top} (UPMEM v1A has {top} hardware threads), got {nr_tasklets}")
    folder = kernels_dir(module)
    ext = ".emu.so" if device == "emulator" else ".dpu"
    candidates = [folder / f"{KERNEL_NAME}_t{nr_tasklets}{ext}"]
    shipped = folder / f"{KERNEL_NAME}{ext}"
    if shipped.exists() and _built_tasklets(module) == nr_tasklets:
        candidates.insert(0, shipped)
    for c in candidates:
        if c.exists():
            return str(c)
    if device != "emulator":
        raise BackendUnavailableError(
            f"no {KERNEL_NAME} DPU binary for {nr_tasklets} tasklets in {folder}; rebuild with "
            f"UPDLRM_NR_TASKLETS={nr_tasklets}"
        )
    return _compile_emu_kernel(nr_tasklets)


def _built_tasklets(module) -> int:
    """NR_TASKLETS of the shipped kernel: read from the build, default 16."""
    return int(getattr(module, "SHIPPED_NR_TASKLETS", 16))


_compiled: dict[int, str] = {}


def _compile_emu_kernel(nr_tasklets: int) -> str:
    """Compile dpu_kernels/emb_lookup.c for the emulator at ``nr_tasklets`` (cached per process)."""
    if nr_tasklets in _compiled:
        return _compiled[nr_tasklets]
    try:
        from updlrm import emu
    except ImportError as exc:
        raise BackendUnavailableError(
            f"no prebuilt emulator kernel for {nr_tasklets} tasklets, and updlrm.emu (to compile one) failed to "
            f"import: {exc}"
        ) from exc
    source = _REPO_ROOT / "dpu_kernels" / f"{KERNEL_NAME}.c"
    include = _REPO_ROOT / "dpu_kernels" / "include"
    if not source.exists():
        raise BackendUnavailableError(f"no prebuilt kernel for {nr_tasklets} tasklets and no source at {source}")
    # race-free: as the shipped builds (dpu_kernels/CMakeLists.txt), the emulator's fast schedule
    path = emu.compile_kernel(str(source), nr_tasklets=nr_tasklets, include_dirs=[str(include)], race_free=True)
    _compiled[nr_tasklets] = str(path)
    return _compiled[nr_tasklets]
