"""updlrm.distributed: one model served across several PIM shard servers on Ray.

Each host of a :class:`updlrm.partition.hosts.HostPlan` runs a shard server, a Ray actor owning
an :class:`updlrm.engine.Engine` for its shards (emulated DPUs here, ``device="hw"`` on an
UPMEM server); a stateless front end routes each batch's lookups to the hosts, merges their
pooled partial embeddings in table order and runs the MLPs. Replicas take over a dead shard
server's calls while Ray restarts it.

::

    from updlrm.distributed import ShardedEngine, connect
    from updlrm.partition.hosts import make_host_plan
    connect("local", num_cpus=2)
    plan = make_host_plan(model.config.tables, nr_hosts=2, dpus_per_host=8, replicas=2)
    with ShardedEngine(model, plan, backend="pim") as engine:
        probs = engine.predict(batch)            # [B], as Engine.predict
        print(engine.health(), engine.host_states())

Serving over HTTP: ``updlrm serve --ray local --hosts 2 --replicas 2`` (:mod:`.app`).
Parts: :mod:`.shard` (the shard server), :mod:`.frontend` (routing, merge, failover),
:mod:`.cluster` (Ray connection), :mod:`.app` (the HTTP server on top).
"""

from .cluster import connect, shutdown
from .frontend import HostState, ShardedEngine, ShardFailedError, ShardUnavailableError
from .shard import ShardServer

__all__ = ["connect", "shutdown", "ShardedEngine", "ShardServer", "HostState", "ShardFailedError",
           "ShardUnavailableError"]
