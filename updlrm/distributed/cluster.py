"""Connecting to Ray: a running cluster by address, or a local one started for this process."""

from __future__ import annotations

import os
from typing import Optional


def connect(address: str = "local", num_cpus: Optional[int] = None, object_store_bytes: Optional[int] = None,
            log_to_driver: bool = False) -> bool:
    """Initialise Ray once for this process; returns True if this call did it (False: it was
    already initialised, e.g. by the caller, who then also shuts it down).

    address: "local" starts a local cluster (``num_cpus``, default the machine's cores; an object
    store of ``object_store_bytes``, default Ray's); anything else is passed to ``ray.init`` as the
    address of a running cluster (``"auto"``, ``"ray://HOST:10001"``, ``"HOST:6379"``). Worker
    output goes to Ray's log files unless ``log_to_driver``. The dashboard is not started.
    """
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        # address="local": a new cluster even if another one runs on this machine
        kwargs = dict(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                      log_to_driver=log_to_driver)
        if object_store_bytes:
            kwargs["object_store_memory"] = int(object_store_bytes)
        ray.init(**kwargs)
    else:
        ray.init(address=address, log_to_driver=log_to_driver)
    return True


def shutdown() -> None:
    """Disconnect from Ray (and stop a local cluster this process started)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
