"""The planner: wires a strategy, the MRAM budget, offset assignment and validation into a Plan.

``make_plan(tables, topology, strategy="row_uniform", profile=None, **options)`` is the one call
most users need; :class:`Planner` holds the parts (strategy, budget) as constructor arguments so
that a researcher swaps a policy by passing another object. Strategies are looked up by name in
a registry that :func:`register_strategy` extends.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence, Union

from .errors import PlanError
from .interfaces import Budget, Strategy
from .types import DTYPES, MIB, Plan, TableSpec, Topology
from .validate import assign_offsets, check_model_fits, check_tables, validate_plan
from .progress import StepBar

#: Default per-DPU MRAM reserved for one launch's request (bags + lookups) and for its partial sums.
DEFAULT_REQUEST_BYTES = 4 * MIB
DEFAULT_OUTPUT_BYTES = 4 * MIB

_REGISTRY: dict[str, type] = {}


def register_strategy(cls: type, name: Optional[str] = None) -> type:
    """Make ``cls`` (a :class:`Strategy` subclass) available to ``make_plan`` by ``name`` (default
    ``cls.name``). Usable as a class decorator. Returns ``cls``."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"register_strategy needs a Strategy subclass, got {cls!r}")
    _REGISTRY[name or cls.name] = cls
    return cls


def strategy_names() -> list[str]:
    """Names ``make_plan`` accepts, in registration order."""
    _load_builtin()
    return list(_REGISTRY)


def get_strategy(name: str, **options: Any) -> Strategy:
    """Instantiate the registered strategy ``name`` with ``options`` (clear error for unknown names/options)."""
    _load_builtin()
    if name not in _REGISTRY:
        raise PlanError(f"unknown strategy {name!r}; known: {', '.join(_REGISTRY)}")
    cls = _REGISTRY[name]
    params = inspect.signature(cls.__init__).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [p for p in params if p not in ("self",) and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = [k for k in options if k not in allowed]
    if unknown and not takes_kwargs:
        raise PlanError(
            f"strategy {name!r} has no option {unknown[0]!r}; its options: {', '.join(allowed) or '(none)'} "
            f"(and request_bytes, output_bytes for every strategy)"
        )
    return cls(**options)


class Planner:
    """Make validated plans with one strategy and one MRAM budget.

    strategy: a registered name or a :class:`Strategy` instance. request_bytes / output_bytes:
    per-DPU MRAM reserved for one launch's request and partial sums (multiples of 8). dtype: the
    element type the tables will be stored in (``"fp32"``, ``"int32"``, ``"int16"``, ``"int8"``):
    sets the row bytes every budget and offset is computed with.

    Example::

        planner = Planner(RowUniform(), request_bytes=2 * MIB)
        plan = planner.plan(tables, Topology(nr_dpus=64))
    """

    def __init__(
        self,
        strategy: Union[str, Strategy] = "row_uniform",
        request_bytes: int = DEFAULT_REQUEST_BYTES,
        output_bytes: int = DEFAULT_OUTPUT_BYTES,
        dtype: str = "fp32",
        **options: Any,
    ):
        if dtype not in DTYPES:
            raise PlanError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        if isinstance(strategy, Strategy):
            if options:
                raise PlanError(f"options {sorted(options)} given with a Strategy instance: pass them to its constructor")
            self.strategy = strategy
        elif isinstance(strategy, str):
            self.strategy = get_strategy(strategy, **options)
        else:
            raise PlanError(f"strategy must be a name or a Strategy, got {type(strategy).__name__}")
        for what, v in (("request_bytes", request_bytes), ("output_bytes", output_bytes)):
            if int(v) != v or v < 0 or int(v) % 8:
                raise PlanError(f"{what} must be a non-negative multiple of 8, got {v!r}")
        self.request_bytes = int(request_bytes)
        self.output_bytes = int(output_bytes)

    def plan(self, tables: Sequence[TableSpec], topology: Topology, profile: Optional[Any] = None) -> Plan:
        """Place ``tables`` on ``topology``; returns a validated Plan with MRAM offsets assigned."""
        tables = list(tables)
        check_tables(tables)
        if not isinstance(topology, Topology):
            raise PlanError(f"topology must be a Topology, got {type(topology).__name__}")
        if self.strategy.needs_profile and profile is None:
            raise PlanError(f"strategy {self.strategy.name!r} needs an access profile (profile=AccessProfile...)")
        check_model_fits(tables, topology, self.request_bytes, self.output_bytes, self.dtype)
        budget = Budget(topology.mram_heap_bytes, self.request_bytes, self.output_bytes, self.dtype)
        with StepBar(f"planning {self.strategy.name} on {topology.nr_dpus} DPUs",
                     ["placing", "MRAM offsets", "validating"]) as bar:
            placement = self.strategy.place(tables, topology, budget, profile)
            bar.next()
            plan = self._plan_of(tables, topology, placement, profile)
            assign_offsets(plan)
            bar.next()
            validate_plan(plan, tables)
            bar.next()
        return plan

    def _plan_of(self, tables, topology: Topology, placement, profile) -> Plan:
        meta = {"strategy_options": self.strategy.describe(), **placement.meta}
        if profile is not None and getattr(profile, "source", None) is not None:
            meta["profile_source"] = profile.source
        plan = Plan(
            tables=tables,
            topology=topology,
            groups=placement.groups,
            shards=placement.shards,
            strategy=self.strategy.name,
            request_bytes=self.request_bytes,
            output_bytes=self.output_bytes,
            meta=meta,
            dtype=self.dtype,
        )
        return plan


def make_plan(
    tables: Sequence[TableSpec],
    topology: Topology,
    strategy: Union[str, Strategy] = "row_uniform",
    profile: Optional[Any] = None,
    **options: Any,
) -> Plan:
    """Place ``tables`` on ``topology`` with ``strategy``; returns a validated Plan.

    options: ``request_bytes`` / ``output_bytes`` (per-DPU MRAM for one launch's request and
    partial sums, default 4 MiB each), ``dtype`` (stored element type, default ``"fp32"``; an
    ``"int8"`` plan sizes rows at 1 byte per element) and the strategy's own options (e.g. ``split_oversized`` of
    table_wise). Raises PlanDoesNotFitError naming the shortfall, PlanError for bad arguments.

    Example::

        tables = [TableSpec("C1", 1460, 16), TableSpec("C3", 10_131_227, 16)]
        plan = make_plan(tables, Topology(nr_dpus=2048), "row_uniform")
    """
    req = options.pop("request_bytes", DEFAULT_REQUEST_BYTES)
    out = options.pop("output_bytes", DEFAULT_OUTPUT_BYTES)
    dtype = options.pop("dtype", "fp32")
    return Planner(strategy, request_bytes=req, output_bytes=out, dtype=dtype, **options).plan(tables, topology, profile)


_builtin_loaded = False


def _load_builtin() -> None:
    global _builtin_loaded
    if _builtin_loaded:
        return
    _builtin_loaded = True
    from . import baselines, caching, popularity, tiles

    for cls in (baselines.TableWise, baselines.RowUniform, baselines.ColumnWise, tiles.TileUniform,
                popularity.PopularityBalanced, caching.CacheAware):
        _REGISTRY.setdefault(cls.name, cls)
