"""Embedding backends of the engine: where the lookups (and the MLPs) of a batch run.

* ``cpu``  - :class:`CpuBackend`: the model's own torch EmbeddingBags and MLPs on the CPU.
* ``cuda`` - :class:`CudaBackend`: CPU-GPU hybrid (tables and lookups on the CPU, MLPs on the GPU)
  or, with ``cuda_mode="gpu"``, tables on the GPU too.
* ``pim``  - :class:`PimBackend`: lookups on (emulated) UPMEM DPUs through ``updlrm.pim``.

Every backend implements :class:`Backend`; :func:`make_backend` picks one by name.
"""

from __future__ import annotations

from .base import Backend
from .cpu import CpuBackend
from .cuda import CudaBackend
from .pim import PimBackend

BACKENDS = {"cpu": CpuBackend, "cuda": CudaBackend, "pim": PimBackend}

__all__ = ["Backend", "CpuBackend", "CudaBackend", "PimBackend", "BACKENDS", "make_backend"]


def make_backend(name: str, model, **options) -> Backend:
    """The backend called ``name`` for ``model``; ``options`` are that backend's keyword arguments."""
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None
    return cls(model, **options)
