"""Request/response schema of the inference server and validation of requests at its boundary.

A predict request carries one sample or several. A sample is the model's input for one
recommendation: ``dense`` (``n_dense`` finite numbers) and ``sparse`` (for every embedding table,
by table name, the list of row ids pooled into that table's bag; an empty list is an empty bag)::

    {"dense": [0.1, 2.0, ...], "sparse": {"C1": [4], "C2": [17, 3], ...}}            # one sample
    {"samples": [{"dense": [...], "sparse": {...}}, ...]}                               # a list
    [{"dense": [...], "sparse": {...}}, ...]                                            # also a list

The answer is ``{"predictions": [p_0, ...]}``: one click probability per sample, in order.

Validation happens in two steps, both before anything is queued: the structure (types, finite
numbers, no unknown fields) with pydantic, then the content against the model (dense width,
known and complete table names, row ids inside ``[0, rows)``) with NumPy over all ids at once.
Every failure raises :class:`RequestError` whose message names the field, the sample position,
the table, the id position and the allowed range; nothing is changed by a rejected request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import chain
from typing import Annotated, Any, Optional, Sequence

import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict, Field

#: Row ids must fit an int64 before they are compared with a table's range.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
RowId = Annotated[int, Field(ge=_INT64_MIN, le=_INT64_MAX)]


class Sample(BaseModel):
    """One sample: dense features and, per table name, the row ids of its bag."""

    model_config = ConfigDict(strict=True, extra="forbid")

    dense: list[FiniteFloat] = Field(description="n_dense dense features (finite numbers)")
    sparse: dict[str, list[RowId]] = Field(
        description="for every embedding table, by name, the row ids pooled (summed) into its bag; "
        "ids must lie in [0, rows of that table); [] is an empty bag"
    )


class SampleList(BaseModel):
    """Several samples answered together, in order."""

    model_config = ConfigDict(strict=True, extra="forbid")

    samples: list[Sample]


class PredictResponse(BaseModel):
    predictions: list[float] = Field(description="click probability of each sample, in request order")


class ErrorBody(BaseModel):
    kind: str = Field(description="invalid_request | overloaded | not_ready | shutting_down | engine_error | ...")
    message: str
    field: Optional[str] = Field(None, description="JSON path of the offending value, e.g. samples[3].sparse.C7[2]")
    table: Optional[str] = None
    position: Optional[int] = Field(None, description="index of the offending id inside its bag")
    allowed: Optional[str] = Field(None, description="allowed range or values")


class ErrorResponse(BaseModel):
    error: ErrorBody


class TableInfo(BaseModel):
    name: str
    rows: int
    dim: int


class ModelInfo(BaseModel):
    name: str
    backend: str
    n_dense: int
    tables: list[TableInfo]
    max_batch: int
    max_wait_ms: float
    max_request_samples: int
    plan: Optional[dict[str, Any]] = Field(None, description="plan summary (pim backend)")


class RequestError(ValueError):
    """A request failed validation; ``status`` is the HTTP status to answer with (422 or 413)."""

    def __init__(self, message: str, *, field: str | None = None, table: str | None = None,
                 position: int | None = None, allowed: str | None = None, status: int = 422):
        super().__init__(message)
        self.message = message
        self.field = field
        self.table = table
        self.position = position
        self.allowed = allowed
        self.status = status

    def body(self) -> dict:
        return {"error": {"kind": "invalid_request", "message": self.message, "field": self.field,
                          "table": self.table, "position": self.position, "allowed": self.allowed}}


@dataclass
class ParsedRequest:
    """A validated request in the engine's layout.

    ``dense``: float32 [n, n_dense]; ``lengths``: int64 [T, n] (bag sizes, table-major);
    ``indices``: int64 [lengths.sum()], table-major (table 0's bags for samples 0..n-1, then
    table 1's, ...), every id checked against its table's rows.
    """

    dense: np.ndarray
    lengths: np.ndarray
    indices: np.ndarray

    @property
    def nr_samples(self) -> int:
        return int(self.dense.shape[0])


_SAMPLES = pydantic.TypeAdapter(list[Sample])


def _path(loc: Sequence[Any], prefix: str) -> str:
    """Turn a pydantic error location into a JSON path like ``samples[3].sparse.C7[2]``."""
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


class RequestValidator:
    """Checks requests against one model: ``n_dense`` features and ``tables`` (name, rows)."""

    def __init__(self, n_dense: int, table_names: Sequence[str], table_rows: Sequence[int],
                 max_request_samples: int = 1024, max_lookups_per_bag: int = 4096):
        if len(table_names) != len(table_rows):
            raise ValueError("table_names and table_rows must have the same length")
        if len(set(table_names)) != len(table_names):
            raise ValueError(f"table names must be unique, got {list(table_names)}")
        self.n_dense = int(n_dense)
        self.table_names = list(table_names)
        self.table_rows = np.asarray(table_rows, dtype=np.int64)
        self.max_request_samples = int(max_request_samples)
        self.max_lookups_per_bag = int(max_lookups_per_bag)
        self._table_set = set(self.table_names)

    # -- step 0: bytes -> samples --------------------------------------------------------------
    def parse_json(self, body: bytes) -> tuple[list[Sample], str]:
        """Decode the body and check its structure; returns the samples and their path prefix."""
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"malformed JSON body: {exc}", field="body") from None
        if isinstance(doc, dict) and "samples" in doc:
            extra = sorted(set(doc) - {"samples"})
            if extra:
                raise RequestError(f"unknown field(s) {extra} next to 'samples'", field=extra[0],
                                   allowed="'samples' only")
            raw, prefix = doc["samples"], "samples"
            if not isinstance(raw, list):
                raise RequestError("'samples' must be a list of samples", field="samples")
        elif isinstance(doc, list):
            raw, prefix = doc, "samples"
        elif isinstance(doc, dict):
            raw, prefix = [doc], "sample"
        else:
            raise RequestError("body must be a sample object, a list of samples, or {\"samples\": [...]}",
                               field="body")
        if not raw:
            raise RequestError("request has no samples", field=prefix, allowed=f"1..{self.max_request_samples}")
        if len(raw) > self.max_request_samples:
            raise RequestError(f"request has {len(raw)} samples, more than the server's limit",
                               field=prefix, allowed=f"1..{self.max_request_samples}", status=413)
        try:
            samples = _SAMPLES.validate_python(raw)
        except pydantic.ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            full = list(err["loc"])  # (sample index, field, ...)
            field = _path(full[1:] if prefix == "sample" else full, prefix)  # a single sample has no index
            table = full[2] if len(full) >= 3 and full[1] == "sparse" and isinstance(full[2], str) else None
            position = full[3] if table is not None and len(full) >= 4 and isinstance(full[3], int) else None
            more = f" (and {exc.error_count() - 1} more error(s))" if exc.error_count() > 1 else ""
            raise RequestError(f"{field}: {err['msg']}{more}", field=field, table=table, position=position) from None
        return samples, prefix

    # -- step 1: samples -> arrays, checked against the model -----------------------------------
    def to_arrays(self, samples: list[Sample], prefix: str = "samples") -> ParsedRequest:
        """Check widths, table names and id ranges; build the table-major arrays."""

        def where(i: int) -> str:
            return prefix if prefix == "sample" else f"{prefix}[{i}]"

        n = len(samples)
        for i, s in enumerate(samples):  # per sample (not per lookup): widths and table names
            if len(s.dense) != self.n_dense:
                raise RequestError(f"{where(i)}.dense has {len(s.dense)} values, the model takes {self.n_dense}",
                                   field=f"{where(i)}.dense", allowed=f"exactly {self.n_dense} values")
            if s.sparse.keys() != self._table_set:
                unknown = sorted(set(s.sparse) - self._table_set)
                if unknown:
                    raise RequestError(f"{where(i)}.sparse has unknown table {unknown[0]!r}",
                                       field=f"{where(i)}.sparse.{unknown[0]}", table=unknown[0],
                                       allowed=f"tables {self.table_names}")
                missing = [t for t in self.table_names if t not in s.sparse]
                raise RequestError(f"{where(i)}.sparse lacks table {missing[0]!r} (give [] for an empty bag)",
                                   field=f"{where(i)}.sparse.{missing[0]}", table=missing[0],
                                   allowed=f"tables {self.table_names}")
        # table-major bags: table 0 for all samples, then table 1, ...
        bags = [s.sparse[name] for name in self.table_names for s in samples]
        lengths = np.fromiter(map(len, bags), dtype=np.int64, count=len(bags)).reshape(len(self.table_names), n)
        if lengths.size and int(lengths.max()) > self.max_lookups_per_bag:
            t, i = np.unravel_index(int(np.argmax(lengths)), lengths.shape)
            name = self.table_names[t]
            raise RequestError(f"{where(i)}.sparse.{name} has {int(lengths[t, i])} ids, more than the server's limit",
                               field=f"{where(i)}.sparse.{name}", table=name,
                               allowed=f"0..{self.max_lookups_per_bag} ids per bag", status=413)
        total = int(lengths.sum())
        indices = np.fromiter(chain.from_iterable(bags), dtype=np.int64, count=total)
        per_table = lengths.sum(axis=1)
        limit = np.repeat(self.table_rows, per_table)
        # one unsigned comparison catches both id < 0 (wraps to >= 2^63) and id >= rows
        out_of_range = indices.view(np.uint64) >= limit.view(np.uint64)
        if out_of_range.any():
            bad = np.flatnonzero(out_of_range)
            k = int(bad[0])
            bag = int(np.searchsorted(np.cumsum(lengths.reshape(-1)), k, side="right"))
            t, i = divmod(bag, n)
            start = int(lengths.reshape(-1)[:bag].sum())
            name, rows = self.table_names[t], int(self.table_rows[t])
            pos = k - start
            raise RequestError(
                f"{where(i)}.sparse.{name}[{pos}]: row id {int(indices[k])} is out of range for table "
                f"{name!r} ({rows} rows; allowed [0, {rows})){'' if bad.size == 1 else f' ({bad.size - 1} more bad id(s))'}",
                field=f"{where(i)}.sparse.{name}[{pos}]", table=name, position=pos, allowed=f"[0, {rows})")
        with np.errstate(over="ignore"):  # overflow is reported just below
            dense = np.asarray([s.dense for s in samples], dtype=np.float32).reshape(n, self.n_dense)
        if not np.isfinite(dense).all():  # finite doubles may still overflow float32
            i, j = np.argwhere(~np.isfinite(dense))[0]
            raise RequestError(f"{where(int(i))}.dense[{int(j)}] overflows float32",
                               field=f"{where(int(i))}.dense[{int(j)}]", allowed="|x| < 3.4e38")
        return ParsedRequest(dense=dense, lengths=lengths, indices=indices)

    def parse(self, body: bytes) -> ParsedRequest:
        """Body bytes -> validated arrays, or :class:`RequestError`."""
        samples, prefix = self.parse_json(body)
        return self.to_arrays(samples, prefix)
