"""The front end of a model served across shard servers: route, fan out, merge, dense part, failover.

:class:`ShardedEngine` starts one :class:`updlrm.distributed.shard.ShardServer` per host of a
:class:`updlrm.partition.hosts.HostPlan` as a Ray actor, and answers ``predict(batch)`` like
:class:`updlrm.engine.Engine`::

    dense [B, n_dense] -> bottom MLP (here) ------------------------------------------+
    ids -> HostRouter -> per host: its shards' ids -> actor.embed -> [B, served, d]   |
           merged in plan order (table order, a split table's ranges added) -> [B, T, d]
                                                                  -> interaction, top MLP -> [B]

Replicas and failover. Shard j's replica ``(n + j) mod R`` serves batch n (load spread over the
copies). A call that fails because its actor died (``ray.exceptions.RayActorError``) or did not
answer within ``call_timeout_s`` marks that host *down*; its shards go to their next live replica
and the call is sent again there (shard calls are read-only, so a retry never changes an answer).
While a host is down a background probe pings it; Ray restarts the actor (``max_restarts``), and
once the new one answers, the host is up again and serves without operator action. A batch with
a shard that has no live replica fails at once with :class:`ShardUnavailableError` (the HTTP
layer answers 503 + Retry-After); a batch whose shard dies during the call with no replica left
fails with :class:`ShardFailedError`. Never a partial answer: the merge runs only when every
shard's partial arrived.

Thread safety: ``predict`` may be called from one thread at a time (the server's engine thread);
health and metrics may be read from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from updlrm.errors import UpdlrmError

log = logging.getLogger("updlrm.distributed")

__all__ = ["ShardedEngine", "ShardUnavailableError", "ShardFailedError", "HostState"]


class ShardUnavailableError(UpdlrmError, RuntimeError):
    """A batch needs a shard none of whose hosts is up; ``retry_after_s`` suggests when to retry."""

    def __init__(self, message: str, hosts: list, retry_after_s: int = 1):
        super().__init__(message)
        self.hosts = list(hosts)
        self.retry_after_s = int(retry_after_s)


class ShardFailedError(UpdlrmError, RuntimeError):
    """A shard server died (or timed out) while running this batch and no replica could take over."""


@dataclass
class HostState:
    """What the front end knows about one shard server."""

    host: int
    status: str = "loading"  # loading | up | down | failed
    pid: Optional[int] = None
    restarts: int = 0  # times it came back up after being marked down with a new process
    calls: int = 0
    errors: int = 0
    failovers: int = 0  # calls sent elsewhere because this host was down or failed
    last_error: Optional[str] = None
    down_since: Optional[float] = None
    latencies_s: list = field(default_factory=list)  # recent call latencies (bounded)

    def as_dict(self) -> dict:
        return {"host": self.host, "status": self.status, "pid": self.pid, "restarts": self.restarts,
                "calls": self.calls, "errors": self.errors, "failovers": self.failovers,
                "last_error": self.last_error}


class ShardedEngine:
    """Serve ``model`` with its embedding tables on the shard servers of ``host_plan``.

    Args:
        model: the :class:`updlrm.model.DLRM` (the front end runs its MLPs; its tables are cut
            into the shards' weights and shipped once to the Ray object store).
        host_plan: a :class:`updlrm.partition.hosts.HostPlan` matching the model's tables.
        backend: shard servers' backend, "cpu" or "pim" (needs the plan's DPU plans).
        device, dtype: pim options (``device="hw"`` on a real UPMEM host).
        call_timeout_s: a shard call not answered in this time counts as a failure of its host.
        probe_interval_s: how often a down host is pinged while Ray restarts it.
        failed_after_s: a down host whose actor Ray reports dead (restarts exhausted) for this long
            is "failed" for good.
        max_restarts: Ray restarts of each shard actor (-1: unlimited).
        ready_timeout_s: how long to wait for every shard server to load.
        torch_threads: intra-op threads of each shard server.
        host_resource: a Ray custom resource that marks an UPMEM host (``ray start --resources
            '{"upmem": 1}'`` on each); every shard server then takes one, so each runs on its own
            host. None (default): Ray places them anywhere (one machine: all on it).

    Ray must be initialised (:func:`updlrm.distributed.cluster.connect`).
    """

    def __init__(self, model, host_plan, backend: str = "cpu", device: str = "emulator", dtype: str = "fp32",
                 call_timeout_s: float = 30.0, probe_interval_s: float = 0.2, max_restarts: int = 10,
                 ready_timeout_s: float = 300.0, torch_threads: int = 1, failed_after_s: float = 10.0,
                 host_resource: Optional[str] = None):
        import ray

        from updlrm.partition.hosts import HostRouter, validate_host_plan

        from .shard import ShardServer

        if backend not in ("cpu", "pim"):
            raise ValueError(f"shard backend must be 'cpu' or 'pim', got {backend!r}")
        if backend == "pim" and host_plan.dpu_strategy is None:
            raise ValueError("shard backend 'pim' needs a host plan with DPU plans (dpu_strategy set)")
        validate_host_plan(host_plan, model.config.tables)
        self.model = model.eval()
        self.config = model.config
        self.plan = host_plan
        self.backend_name = backend
        self.router = HostRouter(host_plan)
        self.call_timeout_s = float(call_timeout_s)
        self.probe_interval_s = float(probe_interval_s)
        self.failed_after_s = float(failed_after_s)
        self._lock = threading.Lock()  # guards host states
        self._predict_lock = threading.Lock()
        self._batch_no = 0
        self._closed = False
        self.last_stats = None  # BatchStats of the last predict: embed (fan-out and merge) and mlp, measured
        self.hosts = [HostState(h) for h in range(host_plan.nr_hosts)]
        weights = [bag.weight.detach() for bag in model.embeddings]
        self._weight_refs = []
        for s in host_plan.shards:
            w = weights[s.table].numpy()
            part = w[s.row_lo:s.row_hi] if s.hot_rows is None else np.concatenate([w[s.row_lo:s.row_hi], w[s.hot_rows]])
            self._weight_refs.append(ray.put(np.ascontiguousarray(part, dtype=np.float32)))
        actor_cls = ray.remote(ShardServer).options(num_cpus=0, max_restarts=int(max_restarts), max_task_retries=0,
                                                    resources={host_resource: 1} if host_resource else None)
        self.actors = []
        for h in range(host_plan.nr_hosts):
            js = host_plan.shards_on(h)
            if not js:
                self.actors.append(None)
                self.hosts[h].status = "up"
                continue
            self.actors.append(actor_cls.remote(
                h, host_plan.host_tables(h), [self._weight_refs[j] for j in js], backend,
                host_plan.host_plans[h] if backend == "pim" else None, device, dtype, torch_threads))
        refs = {h: a.info.remote() for h, a in enumerate(self.actors) if a is not None}
        try:
            _, waiting = ray.wait(list(refs.values()), num_returns=len(refs), timeout=ready_timeout_s)
            if waiting:
                late = [h for h, r in refs.items() if r in waiting]
                hint = (f"; the cluster needs {len(refs)} hosts offering resource {host_resource!r} "
                        f"(ray start --resources '{{\"{host_resource}\": 1}}')" if host_resource else "")
                raise TimeoutError(f"shard server(s) of host(s) {late} not ready after {ready_timeout_s:g} s{hint}")
            infos = {h: ray.get(r) for h, r in refs.items()}  # raises what a failed constructor raised
        except BaseException:
            self._kill_actors()
            raise
        for h, info in infos.items():
            self.hosts[h].status, self.hosts[h].pid = "up", info["pid"]

    # -- public API (as Engine) ---------------------------------------------------------------
    @property
    def tables(self) -> list:
        return list(self.config.tables)

    def predict(self, batch) -> "torch.Tensor":  # noqa: F821
        """Click probabilities ``[B]`` of an :class:`updlrm.batch.Batch` (validated here)."""
        import torch

        from updlrm.batch import validate_batch

        from updlrm.stats import BatchStats

        validate_batch(batch, self.config.tables, self.config.n_dense)
        with self._predict_lock, torch.inference_mode():
            t0 = time.perf_counter()
            x = self.model.bottom(batch.dense)
            t1 = time.perf_counter()
            pooled = self.embed_arrays(batch.indices.numpy(), batch.offsets.numpy(), int(batch.dense.shape[0]))
            t2 = time.perf_counter()
            probs = self.model.top(self.model.interact(x, pooled))
            stats = BatchStats()
            stats.add("embed", t2 - t1, "measured", hosts=self.plan.nr_hosts, where="shard servers over Ray")
            stats.add("mlp", (t1 - t0) + (time.perf_counter() - t2), "measured")
            stats.counters.update(batch_size=int(batch.dense.shape[0]), lookups=int(batch.indices.numel()),
                                  backend=f"ray:{self.backend_name}")
            self.last_stats = stats
            return probs

    def embed_arrays(self, indices: np.ndarray, offsets: np.ndarray, batch_size: int) -> "torch.Tensor":  # noqa: F821
        """Pooled embeddings ``[B, T, d]`` float32 from the shard servers (ids already validated)."""
        import ray
        import torch

        from updlrm.partition.hosts import rotation_hosts

        plan, B = self.plan, int(batch_size)
        routed = self.router.route(indices, offsets, B)
        n = self._batch_no
        self._batch_no += 1
        chosen = rotation_hosts(plan, n, self._alive())
        self._check_available(chosen)
        parts: list[Optional[np.ndarray]] = [None] * len(plan.shards)
        pending = self._submit(routed, chosen, list(range(len(plan.shards))), B)
        failures = 0
        while pending:
            h, ref, shard_ids, t0 = pending.pop(0)
            try:
                out = ray.get(ref, timeout=self.call_timeout_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                self._mark_down(h, exc)
                # send this host's shards to their next live replica; the other calls go on
                alive = self._alive()
                for j in shard_ids:
                    chosen[j] = next((x for x in self._replica_order(j, n) if alive[x]), -1)
                failures += 1
                lost = [j for j in shard_ids if chosen[j] < 0] if failures <= plan.nr_hosts else shard_ids
                if lost:
                    names = ", ".join(plan.shard_table(j).name for j in lost[:3])
                    raise ShardFailedError(
                        f"shard server on host {h} failed while running this batch ({type(exc).__name__}) and "
                        f"shard(s) {names} have no live replica; retry once it has restarted") from None
                with self._lock:
                    self.hosts[h].failovers += len(shard_ids)
                pending.extend(self._submit(routed, chosen, shard_ids, B))
                continue
            dt = time.perf_counter() - t0
            with self._lock:
                st = self.hosts[h]
                st.calls += 1
                st.latencies_s.append(dt)
                if len(st.latencies_s) > 1024:
                    del st.latencies_s[:512]
            for k, j in enumerate(shard_ids):
                parts[j] = out[:, k, :]
        pooled = torch.zeros(B, len(plan.tables), plan.tables[0].dim, dtype=torch.float32)
        for j, s in enumerate(plan.shards):  # plan order: table order, a split table's ranges in row order
            pooled[:, s.table, :] += torch.tensor(parts[j])  # a copy: Ray's arrays are read-only
        return pooled

    # -- routing helpers ----------------------------------------------------------------------
    def _replica_order(self, j: int, n: int) -> list[int]:
        hs, R = self.plan.shards[j].hosts, self.plan.replicas
        return [hs[(n + j + k) % R] for k in range(R)]

    def _alive(self) -> list[bool]:
        with self._lock:
            return [s.status == "up" for s in self.hosts]

    def _check_available(self, chosen: list[int]) -> None:
        lost = [j for j, h in enumerate(chosen) if h < 0]
        if lost:
            hosts = sorted({h for j in lost for h in self.plan.shards[j].hosts})
            with self._lock:
                why = "; ".join(f"host {h} {self.hosts[h].status}" + (f" ({self.hosts[h].last_error})" if self.hosts[h].last_error else "")
                                for h in hosts)
            names = ", ".join(self.plan.shard_table(j).name for j in lost[:3]) + (" ..." if len(lost) > 3 else "")
            raise ShardUnavailableError(f"shard(s) {names} have no live replica: {why}", hosts)

    def _submit(self, routed, chosen: list[int], shard_ids: list[int], B: int) -> list:
        """Send each chosen host its shards among ``shard_ids``; returns
        [(host, object ref, shard ids in the order of the result's columns, start time)]."""
        from updlrm.partition.hosts import host_request

        plan = self.plan
        wanted = set(shard_ids)
        sub = [chosen[j] if j in wanted else -2 for j in range(len(plan.shards))]
        out = []
        for h in sorted({chosen[j] for j in wanted}):
            ids, offs, served_pos = host_request(plan, h, routed, sub, B)
            local = plan.shards_on(h)
            out.append((h, self.actors[h].embed.remote(ids, offs, B, served_pos), [local[i] for i in served_pos],
                        time.perf_counter()))
        return out

    # -- health -------------------------------------------------------------------------------
    def _mark_down(self, h: int, exc: BaseException) -> None:
        with self._lock:
            st = self.hosts[h]
            st.errors += 1
            st.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            if st.status != "up":
                return
            st.status, st.down_since = "down", time.monotonic()
        log.warning("shard server on host %d is down (%s); probing until Ray restarts it", h, self.hosts[h].last_error)
        threading.Thread(target=self._probe, args=(h,), name=f"updlrm-probe-{h}", daemon=True).start()

    def _probe(self, h: int) -> None:
        """Ping host ``h`` until its (restarted) actor answers; "failed" once Ray says the actor is
        dead for good (``ActorDiedError`` for longer than ``failed_after_s``: restarts exhausted)."""
        import ray

        actor = self.actors[h]
        died_since = None
        while not self._closed:
            try:
                pid = ray.get(actor.ping.remote(), timeout=max(self.probe_interval_s, 0.05) * 5)
            except ray.exceptions.GetTimeoutError:
                died_since = None  # queued: Ray is restarting it
                continue
            except ray.exceptions.RayActorError as exc:
                if isinstance(exc, ray.exceptions.ActorDiedError):
                    died_since = died_since or time.monotonic()
                    if time.monotonic() - died_since > self.failed_after_s:
                        with self._lock:
                            self.hosts[h].status = "failed"
                            self.hosts[h].last_error = f"ActorDiedError: {str(exc).splitlines()[0][:200]}"
                        log.error("shard server on host %d failed for good: %s", h, self.hosts[h].last_error)
                        return
                time.sleep(self.probe_interval_s)
                continue
            except Exception:  # noqa: BLE001 - Ray shutting down under us
                if self._closed:
                    return
                time.sleep(self.probe_interval_s)
                continue
            with self._lock:
                st = self.hosts[h]
                if pid != st.pid:
                    st.restarts += 1
                st.pid, st.status, st.down_since = pid, "up", None
            log.warning("shard server on host %d is up again (pid %d)", h, pid)
            return

    def health(self) -> tuple[str, Optional[str]]:
        """``("ready", None)``, ``("degraded", why)`` (a host down, every shard still has a live
        replica), ``("loading", why)`` (a shard has no live replica while Ray restarts it), or
        ``("failed", why)`` (a shard has no replica left and will not come back)."""
        with self._lock:
            status = [s.status for s in self.hosts]
            why = "; ".join(f"host {s.host} {s.status}" for s in self.hosts if s.status != "up") or None
        if all(s == "up" for s in status):
            return "ready", None
        covered = all(any(status[h] == "up" for h in s.hosts) for s in self.plan.shards)
        if covered:
            return "degraded", why
        recoverable = all(any(status[h] in ("up", "down", "loading") for h in s.hosts) for s in self.plan.shards)
        return ("loading" if recoverable else "failed"), why

    def host_states(self) -> list[dict]:
        with self._lock:
            out = [s.as_dict() for s in self.hosts]
            for d, s in zip(out, self.hosts):
                lat = np.asarray(s.latencies_s[-512:]) if s.latencies_s else None
                d["call_p50_ms"] = None if lat is None else float(np.percentile(lat, 50) * 1e3)
                d["call_p99_ms"] = None if lat is None else float(np.percentile(lat, 99) * 1e3)
                d["shards"] = [self.plan.shard_table(j).name for j in self.plan.shards_on(s.host)]
        return out

    def shard_pid(self, host: int) -> int:
        """The process id of host ``host``'s shard server now (asks the actor; for tests and tools)."""
        import ray

        return int(ray.get(self.actors[host].ping.remote(), timeout=self.call_timeout_s))

    def shard_info(self, host: int) -> dict:
        import ray

        return ray.get(self.actors[host].info.remote(), timeout=self.call_timeout_s)

    # -- lifetime -----------------------------------------------------------------------------
    def _kill_actors(self) -> None:
        import ray

        for a in self.actors:
            if a is not None:
                try:
                    ray.kill(a, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass

    def close(self) -> None:
        """Stop the shard servers (no restart); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._kill_actors()
        self.actors = []

    def __enter__(self) -> "ShardedEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
