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


def kernels_dir(module) -> Path:
    """Folder holding the built kernels next to ``module``."""
    return Path(module.__file__).resolve().parent / "kernels"


def kernel_path(device: str, nr_tasklets: int, module=None) -> str:
    """Path of the lookup kernel built with ``nr_tasklets`` tasklets for ``device``."""
    if not 1 <= int(nr_tasklets) <= 24:
        raise ValueError(f"nr_tasklets must be 1..24 (UPMEM v1A has 24 hardware threads), got {nr_tasklets}")
    module = module if module is not None else native_module(device)
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
    path = emu.compile_kernel(str(source), nr_tasklets=nr_tasklets, include_dirs=[str(include)])
    _compiled[nr_tasklets] = str(path)
    return _compiled[nr_tasklets]
