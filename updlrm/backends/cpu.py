"""The ``cpu`` backend: the model's own torch EmbeddingBags (FBGEMM kernels inside) and MLPs."""

from __future__ import annotations

import time

import torch

from updlrm.batch import Batch
from updlrm.stats import BatchStats

from .base import Backend


class CpuBackend(Backend):
    """Everything on the CPU with the model's live parameters (no copies)."""

    name = "cpu"

    def __init__(self, model, **unused):
        super().__init__(model)

    def embed(self, batch: Batch, stats: BatchStats) -> torch.Tensor:
        t0 = time.perf_counter()
        pooled = self.model.embed(batch)
        stats.add("embed", time.perf_counter() - t0, "measured", lookups=batch.nr_lookups, where="cpu")
        return pooled
