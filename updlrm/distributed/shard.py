"""A shard server: one host's part of a :class:`updlrm.partition.hosts.HostPlan`, served by an
:class:`updlrm.engine.Engine`, returning pooled partial embeddings.

It is a plain class; :mod:`updlrm.distributed.frontend` runs one per host as a Ray actor
(``ray.remote(ShardServer)``). Its engine holds a small DLRM whose tables are the host's shards
(row ranges and hot-row copies of the model's tables, in plan order) and whose MLPs are never
run; on ``backend="pim"`` the host's DPU plan places them on its DPUs (emulated here,
``device="hw"`` on an UPMEM server).

::

    server = ShardServer(host=0, tables=plan.host_tables(0), weights=[w_0, ...], backend="pim",
                         dpu_plan=plan.host_plans[0])
    part = server.embed(indices, offsets, batch_size, served=[0, 2])   # [B, 2, d] float32
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np


def _shard_model(tables, weights):
    """A DLRM over ``tables`` with ``weights`` as its embedding tables (MLPs minimal, unused)."""
    import torch

    from updlrm.configs import DLRMConfig
    from updlrm.model import DLRM

    d = tables[0].dim
    config = DLRMConfig("shard", n_dense=1, embedding_dim=d, bottom_mlp=(d,), top_mlp=(1,), tables=tuple(tables))
    model = DLRM(config)
    with torch.no_grad():
        for bag, w in zip(model.embeddings, weights):
            if tuple(w.shape) != tuple(bag.weight.shape):
                raise ValueError(f"shard weights of shape {tuple(w.shape)} do not match table {tuple(bag.weight.shape)}")
            bag.weight.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
    return model.eval()


class ShardServer:
    """Serve host ``host``'s shards: ``tables`` (TableSpec per shard, in plan order) with
    ``weights`` (float32 ``[rows, d]`` each, or Ray object refs of them) on ``backend``.

    backend: "cpu" (torch EmbeddingBag) or "pim" (``dpu_plan`` over ``tables``; ``device``,
    ``dtype`` as for :class:`updlrm.engine.Engine`). torch_threads: intra-op threads (1 suits
    small batches on a shared machine).
    """

    def __init__(self, host: int, tables: Sequence, weights: Sequence, backend: str = "cpu", dpu_plan: Any = None,
                 device: str = "emulator", dtype: str = "fp32", torch_threads: int = 1):
        import torch

        from updlrm.engine import Engine

        t0 = time.perf_counter()
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        weights = list(weights)
        if weights and not isinstance(weights[0], np.ndarray):  # object refs: fetch them
            import ray

            weights = ray.get(weights)
        self.host = int(host)
        self.tables = list(tables)
        self.model = _shard_model(self.tables, weights)
        kwargs = {}
        if backend == "pim":
            if dpu_plan is None:
                raise ValueError(f"host {host}: backend 'pim' needs the host's DPU plan")
            kwargs = dict(strategy=dpu_plan, device=device, dtype=dtype)
        self.engine = Engine(self.model, backend=backend, **kwargs)
        self.backend = backend
        self.batches = 0
        self.load_seconds = time.perf_counter() - t0

    def embed(self, indices: np.ndarray, offsets: np.ndarray, batch_size: int, served: Sequence[int]) -> np.ndarray:
        """Pooled embeddings ``[B, len(served), d]`` float32 of this host's tables at positions
        ``served``, for the batch (indices table-major over all its tables, offsets
        ``[len(tables) * B + 1]``; bags of unserved tables are empty)."""
        import torch

        from updlrm.batch import Batch

        B = int(batch_size)
        batch = Batch(torch.zeros(B, 1), torch.from_numpy(np.asarray(indices, dtype=np.int64)),
                      torch.from_numpy(np.asarray(offsets, dtype=np.int64)))
        pooled = self.engine.embed(batch)  # [B, T_host, d]
        self.batches += 1
        return pooled[:, list(served), :].numpy()

    def info(self) -> dict:
        """Who and what this server is: host, pid, tables, backend, load time, batches served."""
        plan = self.engine.plan
        return {"host": self.host, "pid": os.getpid(), "tables": [t.name for t in self.tables],
                "backend": self.backend, "load_seconds": self.load_seconds, "batches": self.batches,
                "nr_dpus": None if plan is None else int(plan.topology.nr_dpus)}

    def ping(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.engine.close()
