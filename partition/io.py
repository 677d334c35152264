"""Save and load plans: a JSON file (format version, tables, topology, groups, shards, meta) plus,
when some groups hold explicit row sets, an ``.npz`` beside it (``<stem>.rows.npz``) with one
array per such group. The round trip is exact; ``load_plan`` validates what it reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Union

import numpy as np

from .errors import PlanError
from .types import DTYPES, Plan, RowGroup, Shard, TableSpec, Topology
from .validate import validate_plan

#: Version of the JSON layout; load_plan refuses other versions.
PLAN_FORMAT_VERSION = 1
PLAN_FORMAT = "updlrm-plan"

_SHARD_FIELDS = ("table", "group", "replica", "dpu", "col_lo", "col_hi", "mram_offset")


def rows_path(path: Union[str, os.PathLike]) -> Path:
    """Where the row sets of the plan saved at ``path`` live: ``plan.json`` -> ``plan.rows.npz``."""
    p = Path(path)
    return p.with_name(p.stem + ".rows.npz")


def _jsonify(x):
    if isinstance(x, dict):
        return {str(k): _jsonify(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonify(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def plan_to_doc(plan: Plan, array_prefix: str = "g") -> tuple[dict, dict]:
    """The JSON document of ``plan`` and its row-set arrays (``{array_prefix}{group}``: int array),
    as :func:`save_plan` writes them; for files that embed plans (e.g. host plans)."""
    groups, arrays = [], {}
    for gi, g in enumerate(plan.groups):
        d = {"table": g.table, "kind": g.kind}
        if g.rows is not None:
            key = f"{array_prefix}{gi}"
            r = np.asarray(g.rows, dtype=np.int64)
            arrays[key] = r.astype(np.int32) if (r.size == 0 or r.max() < 2**31) else r
            d["rows"] = key
        else:
            d["row_lo"], d["row_hi"] = int(g.row_lo), int(g.row_hi)
        groups.append(d)
    shards = np.array([[getattr(s, f) for f in _SHARD_FIELDS] for s in plan.shards], dtype=np.int64)
    doc = {
        "format": PLAN_FORMAT,
        "version": PLAN_FORMAT_VERSION,
        "strategy": plan.strategy,
        "request_bytes": int(plan.request_bytes),
        "output_bytes": int(plan.output_bytes),
        "dtype": plan.dtype,
        "tables": [dataclasses.asdict(t) for t in plan.tables],
        "topology": _jsonify(dataclasses.asdict(plan.topology)),
        "groups": groups,
        "shard_fields": list(_SHARD_FIELDS),
        "shards": shards.reshape(-1, len(_SHARD_FIELDS)).tolist(),
        "meta": _jsonify(plan.meta),
    }
    return doc, arrays


def save_plan(plan: Plan, path: Union[str, os.PathLike]) -> None:
    """Write ``plan`` to ``path`` (JSON) and, if it has row-set groups, ``rows_path(path)`` (.npz)."""
    path = Path(path)
    doc, arrays = plan_to_doc(plan)
    doc["rows_file"] = rows_path(path).name if arrays else None
    if arrays:
        with open(rows_path(path), "wb") as f:
            np.savez(f, **arrays)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)


def _dtype(doc: dict, where: str) -> str:
    """The plan file's dtype (files from before dtypes existed are fp32 plans)."""
    dtype = doc.get("dtype", "fp32")
    if dtype not in DTYPES:
        raise PlanError(f"{where}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return dtype


def read_plan_file(path: Path, label: str, fmt: str, version: int) -> tuple[dict, dict]:
    """The JSON document of a plan file of format ``fmt`` / ``version`` and the row-set arrays of
    its ``rows_file`` (``{}`` when it has none); PlanError naming ``label`` and the path when the
    file is missing, not JSON, of another format or version, or its rows file is gone."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{label} {str(path)!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"{label} {str(path)!r} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise PlanError(f"{str(path)!r} is not an updlrm {label} (no 'format': {fmt!r})")
    if doc.get("version") != version:
        raise PlanError(f"{label} {str(path)!r} has format version {doc.get('version')!r}; this updlrm reads version {version}")
    arrays = {}
    if doc.get("rows_file"):
        rp = path.with_name(doc["rows_file"])
        if not rp.exists():
            raise PlanError(f"{label} {str(path)!r} needs its row sets in {str(rp)!r}, which does not exist")
        with np.load(rp) as z:
            arrays = {k: z[k] for k in z.files}
    return doc, arrays


def load_plan(path: Union[str, os.PathLike], validate: bool = True) -> Plan:
    """Read a plan written by :func:`save_plan`; validates it unless ``validate=False``."""
    path = Path(path)
    doc, arrays = read_plan_file(path, "plan file", PLAN_FORMAT, PLAN_FORMAT_VERSION)
    plan = plan_from_doc(doc, arrays, f"plan file {str(path)!r}")
    if validate:
        validate_plan(plan)
    return plan


def plan_from_doc(doc: dict, arrays: dict, where: str = "plan") -> Plan:
    """The Plan of a :func:`plan_to_doc` document and its arrays (not validated); ``where`` names
    the source in errors."""
    groups = []
    for gi, d in enumerate(doc["groups"]):
        if "rows" in d:
            if d["rows"] not in arrays:
                raise PlanError(f"{where}: group {gi}'s rows {d['rows']!r} are missing from its row-set file")
            groups.append(RowGroup(table=d["table"], rows=arrays[d["rows"]].astype(np.int64), kind=d["kind"]))
        else:
            groups.append(RowGroup(table=d["table"], row_lo=d["row_lo"], row_hi=d["row_hi"], kind=d["kind"]))
    fields = doc["shard_fields"]
    shards = [Shard(**dict(zip(fields, row))) for row in doc["shards"]]
    topo = dict(doc["topology"])
    topo["working_dpus_per_rank"] = tuple(topo.get("working_dpus_per_rank", ()))
    return Plan(
        tables=[TableSpec(**t) for t in doc["tables"]],
        topology=Topology(**topo),
        groups=groups,
        shards=shards,
        strategy=doc["strategy"],
        request_bytes=doc["request_bytes"],
        output_bytes=doc["output_bytes"],
        meta=doc.get("meta", {}),
        dtype=_dtype(doc, where),
    )
