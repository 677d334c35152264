"""The interface every embedding backend implements (see updlrm/backends/__init__.py)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import torch

from updlrm.batch import Batch
from updlrm.stats import BatchStats


class Backend(ABC):
    """Runs the embedding layer of a batch, and the MLPs, somewhere.

    The engine calls, for a batch it has already validated: :meth:`check` (backend-specific
    limits; raises before anything runs), :meth:`embed` (pooled ``[B, T, d]``, appending its phases
    to ``stats``) and :meth:`dense_part` (bottom MLP, interaction, top MLP -> ``[B]`` CPU
    probabilities, one ``mlp`` phase). Not thread-safe on its own: the engine serialises calls.
    """

    name = "?"
    #: Where the MLPs run; ``embed`` returns its pooled tensor wherever is cheapest for them.
    mlp_device = torch.device("cpu")

    def __init__(self, model):
        self.model = model
        self.mlp_model = model  # what runs bottom/interact/top (a GPU copy for cuda)

    @property
    def plan(self):
        """The placement of the tables on DPUs (pim), else None."""
        return None

    def check(self, batch: Batch) -> None:
        """Backend-specific limits beyond :func:`updlrm.batch.validate_batch` (raise InvalidBatchError)."""

    @abstractmethod
    def embed(self, batch: Batch, stats: BatchStats) -> torch.Tensor:
        """Pooled embeddings ``[B, T, d]`` float32 of a validated batch."""

    def embed_many(self, batches):
        """Pooled embeddings of a stream: yields ``(batch, pooled | exception, stats)`` in order.
        ``batches`` may hold exceptions (batches refused upstream), handed through in place, and
        None (flush: finish what is in flight before taking more). This
        default runs one batch after the other; backends that can overlap batches override it."""
        for batch in batches:
            if batch is None:  # a flush: nothing is held back here
                continue
            if isinstance(batch, BaseException):
                yield None, batch, None
                continue
            stats = BatchStats()
            try:
                self.check(batch)
                pooled = self.embed(batch, stats)
            except Exception as exc:  # noqa: BLE001 - handed to the caller in order
                yield batch, exc, stats
                continue
            yield batch, pooled, stats

    def bottom(self, dense: torch.Tensor) -> torch.Tensor:
        """Bottom MLP output ``[B, d]`` on :attr:`mlp_device`."""
        return self.mlp_model.bottom(dense.to(self.mlp_device, non_blocking=True))

    def dense_part(self, x: torch.Tensor, pooled: torch.Tensor, stats: BatchStats, bottom_seconds: float) -> torch.Tensor:
        """Interaction and top MLP: probabilities ``[B]`` on the CPU; records the ``mlp`` phase
        (``bottom_seconds`` of bottom MLP plus this)."""
        t0 = time.perf_counter()
        probs = self.mlp_model.top(self.mlp_model.interact(x, pooled.to(self.mlp_device, non_blocking=True)))
        probs = probs.cpu()
        stats.add("mlp", bottom_seconds + time.perf_counter() - t0, "measured", device=str(self.mlp_device))
        return probs

    def synchronize(self) -> None:
        """Wait for queued device work (so that wall-clock timings are honest)."""

    def close(self) -> None:
        """Release devices and buffers; idempotent."""
