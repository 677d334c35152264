"""Exceptions raised by updlrm. Every error names what is wrong and leaves state unchanged."""

from __future__ import annotations


class UpdlrmError(Exception):
    """Base class of every updlrm error."""


class InvalidBatchError(UpdlrmError, ValueError):
    """A batch failed validation at the engine boundary (names table, position, value, range)."""


class BackendUnavailableError(UpdlrmError, RuntimeError):
    """A backend or device cannot run on this machine (no GPU, no UPMEM SDK, ...)."""


class NativeError(UpdlrmError, RuntimeError):
    """The native host layer (driver, emulator or libdpu) returned an error status."""

    def __init__(self, message: str, status: int = -1):
        super().__init__(message)
        self.status = status


class DpuFaultError(NativeError):
    """A DPU faulted during a launch (bad DMA, WRAM over budget, barrier deadlock, kernel error).

    ``dpu`` and ``tasklet`` identify where (-1 when unknown); ``reason`` is the emulator's or the
    kernel's description of the bad access.
    """

    def __init__(self, message: str, dpu: int = -1, tasklet: int = -1, reason: str = "", status: int = -1):
        super().__init__(message, status)
        self.dpu = dpu
        self.tasklet = tasklet
        self.reason = reason
