"""The ``cuda`` backend: UpDLRM's CPU-GPU baseline.

``cuda_mode="hybrid"`` (default): tables stay in host DRAM, lookups run on the CPU (torch
EmbeddingBag), the pooled vectors ``[B, T, d]`` are copied to the GPU, the MLPs run there.
``cuda_mode="gpu"``: the tables are copied to GPU memory as well and the lookups run there.
The MLPs (and, in "gpu" mode, the tables) are copies made at construction: later changes to the
model's parameters are not seen. Raises BackendUnavailableError when torch sees no GPU.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from updlrm.batch import Batch
from updlrm.errors import BackendUnavailableError
from updlrm.stats import BatchStats

from .base import Backend

CUDA_MODES = ("hybrid", "gpu")


class _MlpCopy(nn.Module):
    """Bottom MLP, interaction and top MLP of a DLRM, copied to another device."""

    def __init__(self, model, device: torch.device):
        super().__init__()
        self.config = model.config  # interact() reads config.interaction
        self.bottom_mlp = copy.deepcopy(model.bottom_mlp).to(device)
        self.top_mlp = copy.deepcopy(model.top_mlp).to(device)
        self.register_buffer("_tril_i", model._tril_i.to(device), persistent=False)
        self.register_buffer("_tril_j", model._tril_j.to(device), persistent=False)
        self._interact = type(model).interact

    def bottom(self, dense):
        return self.bottom_mlp(dense)

    def interact(self, x, pooled):
        return self._interact(self, x, pooled)

    def top(self, z):
        return self.top_mlp(z).squeeze(1)


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self, model, cuda_mode: str = "hybrid", cuda_device: str | int | None = None, **unused):
        super().__init__(model)
        if cuda_mode not in CUDA_MODES:
            raise ValueError(f"cuda_mode must be one of {CUDA_MODES}, got {cuda_mode!r}")
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise BackendUnavailableError(
                f"backend 'cuda' needs a CUDA GPU visible to torch, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, {build}); use backend='cpu' or 'pim'"
            )
        self.cuda_mode = cuda_mode
        if cuda_device is None:
            cuda_device = "cuda"
        elif isinstance(cuda_device, int):
            cuda_device = f"cuda:{cuda_device}"
        self.mlp_device = torch.device(cuda_device)
        self.mlp_model = _MlpCopy(model, self.mlp_device).eval()
        self._gpu_tables = None
        if cuda_mode == "gpu":
            self._gpu_tables = nn.ModuleList(copy.deepcopy(bag) for bag in model.embeddings).to(self.mlp_device)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.mlp_device)

    def embed(self, batch: Batch, stats: BatchStats) -> torch.Tensor:
        t0 = time.perf_counter()
        if self._gpu_tables is None:
            pooled = self.model.embed(batch)
            where = "cpu"
        else:
            dev = self.mlp_device
            indices = batch.indices.to(dev, non_blocking=True)
            offsets = batch.offsets.to(dev, non_blocking=True)
            b = batch.batch_size
            parts = []
            for t, bag in enumerate(self._gpu_tables):
                lo = offsets[t * b]
                parts.append(bag(indices[int(batch.offsets[t * b]) : int(batch.offsets[(t + 1) * b])], offsets[t * b : (t + 1) * b] - lo))
            pooled = torch.stack(parts, dim=1)
            self.synchronize()
            where = "gpu"
        stats.add("embed", time.perf_counter() - t0, "measured", lookups=batch.nr_lookups, where=where)
        return pooled

    def close(self) -> None:
        self._gpu_tables = None
        self.mlp_model = None
