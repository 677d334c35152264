"""Request/response schema of the inference server and validation of requests at its boundary.

A predict request carries one sample or several. A sample is the model's input for one
recommendation: ``dense`` (``n_dense`` finite numbers) and ``sparse`` (for every embedding table,
by table name, the list of row ids pooled into that table's bag; an empty list is an empty bag)::

    {"dense": [0.1, 2.0, ...], "sparse": {"C1": [4], "C2": [17, 3], ...}}            # one sample
    {"samples": [{"dense": [...], "sparse": {...}}, ...]}                               # a list
    [{"dense": [...], "sparse": {...}}, ...]                                            # also a list

Clients sending many samples may use the compact columnar form instead: all dense rows, and per
table one flat id array with the bag sizes (``lengths`` omitted: one id per sample)::

    {"batch": {"dense": [[...n_dense], ...n rows],
               "sparse": {"C1": {"ids": [4, 9, ...]}, "C2": {"ids": [17, 3, 5], "lengths": [2, 0, 1]}, ...}}}

The same document may be sent as MessagePack (``Content-Type: application/msgpack``), where
``dense`` may also be raw little-endian float32 bytes (n x n_dense, row-major) and ``ids`` /
``lengths`` raw little-endian int64 bytes, i.e. NumPy's ``tobytes()``: no number is parsed.

The answer is ``{"predictions": [p_0, ...]}``: one click probability per sample, in order.

Validation happens before anything is queued. The fast path decodes the body with msgspec
straight into typed structs built for the served model (table names as fields, each table's id
range and the size limits as constraints), so a valid body is checked in C and turned into NumPy
arrays without a Python object per id. A body the fast path refuses is examined again by the
slow path (the stdlib JSON parser and pydantic), only to name what is wrong: every failure raises
:class:`RequestError` whose message names the field, the sample position, the table, the id
position and the allowed range; nothing is changed by a rejected request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import chain
from typing import Annotated, Any, Optional, Sequence, Union

import msgspec
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


class TableColumn(BaseModel):
    """One table's ids for every sample of a columnar batch."""

    model_config = ConfigDict(strict=True, extra="forbid")

    ids: Union[list[RowId], bytes] = Field(
        description="the row ids of all bags of this table, sample after sample (ids of sample 0's bag, then "
        "sample 1's, ...); in MessagePack also raw little-endian int64 bytes")
    lengths: Optional[Union[list[int], bytes]] = Field(
        None, description="bag size of each sample (n values, summing to len(ids)); omitted: one id per sample; "
        "in MessagePack also raw little-endian int64 bytes")


class ColumnarBatch(BaseModel):
    """Many samples in columns: the compact form for clients that send many samples."""

    model_config = ConfigDict(strict=True, extra="forbid")

    dense: Union[list[list[FiniteFloat]], bytes] = Field(
        description="n rows of n_dense dense features; in MessagePack also raw little-endian float32 bytes "
        "(n x n_dense, row-major, i.e. numpy's tobytes())")
    sparse: dict[str, TableColumn] = Field(description="for every embedding table, by name, its column")


class BatchRequest(BaseModel):
    """``{"batch": {...}}``: a columnar batch (JSON, or MessagePack with Content-Type application/msgpack)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    batch: ColumnarBatch


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
        self._build_fast_decoders()

    # -- fast path: msgspec structs built for this model ----------------------------------------
    def _build_fast_decoders(self) -> None:
        names = self.table_names
        fields = [f"t{k}" for k in range(len(names))]
        rename = dict(zip(fields, names))
        dense_t = Annotated[list[float], msgspec.Meta(min_length=self.n_dense, max_length=self.n_dense)]
        bag_t = [Annotated[list[Annotated[int, msgspec.Meta(ge=0, lt=max(int(r), 1))]],
                           msgspec.Meta(max_length=self.max_lookups_per_bag)] for r in self.table_rows]
        sparse_t = msgspec.defstruct("Sparse", list(zip(fields, bag_t)), rename=rename, forbid_unknown_fields=True)
        sample_t = msgspec.defstruct("FastSample", [("dense", dense_t), ("sparse", sparse_t)],
                                     forbid_unknown_fields=True)
        samples_t = Annotated[list[sample_t], msgspec.Meta(min_length=1, max_length=self.max_request_samples)]
        column_t = [msgspec.defstruct(f"Column{k}", [
            ("ids", Union[bytes, list[Annotated[int, msgspec.Meta(ge=0, lt=max(int(r), 1))]]]),
            ("lengths", Optional[Union[bytes, list[Annotated[int, msgspec.Meta(ge=0)]]]], None)],
            forbid_unknown_fields=True) for k, r in enumerate(self.table_rows)]
        columns_t = msgspec.defstruct("Columns", list(zip(fields, column_t)), rename=rename,
                                      forbid_unknown_fields=True)
        batch_t = msgspec.defstruct("Batch", [("dense", Union[bytes, list[dense_t]]), ("sparse", columns_t)],
                                    forbid_unknown_fields=True)
        top_t = msgspec.defstruct("Body", [("dense", Optional[dense_t], None), ("sparse", Optional[sparse_t], None),
                                           ("samples", Optional[samples_t], None), ("batch", Optional[batch_t], None)],
                                  forbid_unknown_fields=True)
        self._json = msgspec.json.Decoder(Union[top_t, samples_t])
        self._msgpack = msgspec.msgpack.Decoder(top_t)

    def parse_fast(self, body: bytes, content_type: str = "application/json") -> ParsedRequest:
        """Body bytes -> validated arrays via msgspec; :class:`RequestError` naming the field if the
        body is invalid (the slow path is asked to name it where it can)."""
        msgpack = is_msgpack(content_type)
        try:
            doc = self._msgpack.decode(body) if msgpack else self._json.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, ValueError) as exc:
            if msgpack or b'"batch"' in body[:64]:
                raise _msgspec_error(exc, self.table_names) from None
            self.parse(body)  # the slow path names the problem (raises) ...
            raise _msgspec_error(exc, self.table_names) from None  # ... or, if it finds none, msgspec's words
        if isinstance(doc, list):
            return self._from_samples(doc, "samples")
        given = [k for k in ("dense", "sparse", "samples", "batch") if getattr(doc, k) is not None]
        if doc.batch is not None and given == ["batch"]:
            return self._from_batch(doc.batch)
        if doc.samples is not None and given == ["samples"]:
            return self._from_samples(doc.samples, "samples")
        if doc.samples is None and doc.batch is None and doc.dense is not None and doc.sparse is not None:
            return self._from_samples([doc], "sample")
        if msgpack or doc.batch is not None:
            raise RequestError(f"body must hold exactly one of a sample (dense + sparse), 'samples' or 'batch'; "
                               f"got {given or 'none of them'}", field="body",
                               allowed="{dense, sparse} | {samples} | {batch}")
        self.parse(body)
        raise RequestError("body must be a sample object, a list of samples, or {\"samples\": [...]}", field="body")

    def _from_samples(self, samples: list, prefix: str) -> ParsedRequest:
        n, nr_tables = len(samples), len(self.table_names)
        astuple = msgspec.structs.astuple
        if n == 1:
            bags = astuple(samples[0].sparse)
        else:
            rows = [astuple(s.sparse) for s in samples]
            bags = [r[t] for t in range(nr_tables) for r in rows]  # table-major
        lengths = np.fromiter(map(len, bags), dtype=np.int64, count=n * nr_tables).reshape(nr_tables, n)
        indices = np.fromiter(chain.from_iterable(bags), dtype=np.int64, count=int(lengths.sum()))
        with np.errstate(over="ignore"):
            dense = np.array([s.dense for s in samples], dtype=np.float32).reshape(n, self.n_dense)
        self._check_dense(dense, lambda i, j: f"{prefix if prefix == 'sample' else f'{prefix}[{i}]'}.dense[{j}]")
        return ParsedRequest(dense=dense, lengths=lengths, indices=indices)

    def _check_dense(self, dense: np.ndarray, where) -> None:
        if not np.isfinite(dense).all():  # finite doubles may still overflow float32; bytes may hold NaN
            i, j = (int(x) for x in np.argwhere(~np.isfinite(dense))[0])
            field = where(i, j)
            raise RequestError(f"{field} overflows float32 or is not finite", field=field, allowed="finite, |x| < 3.4e38")

    def _from_batch(self, batch) -> ParsedRequest:
        if isinstance(batch.dense, bytes):
            width = 4 * self.n_dense
            if len(batch.dense) % width:
                raise RequestError(f"batch.dense has {len(batch.dense)} bytes, not a multiple of n_dense x 4 = "
                                   f"{width}", field="batch.dense", allowed=f"n x {width} bytes (float32, little-endian)")
            dense = np.frombuffer(batch.dense, dtype="<f4").reshape(-1, self.n_dense).astype(np.float32)
        else:
            with np.errstate(over="ignore"):
                dense = np.array(batch.dense, dtype=np.float32).reshape(-1, self.n_dense)
        n = dense.shape[0]
        if n == 0:
            raise RequestError("request has no samples", field="batch.dense", allowed=f"1..{self.max_request_samples}")
        if n > self.max_request_samples:
            raise RequestError(f"request has {n} samples, more than the server's limit", field="batch.dense",
                               allowed=f"1..{self.max_request_samples}", status=413)
        self._check_dense(dense, lambda i, j: f"batch.dense[{i}][{j}]")
        names, nr_tables = self.table_names, len(self.table_names)
        cols = msgspec.structs.astuple(batch.sparse)
        # all tables at once (a few NumPy calls per batch, not per table): ids, then lengths [T, n]
        if all(type(c.ids) is bytes and len(c.ids) % 8 == 0 for c in cols):  # raw bytes: one join, one view
            counts = np.fromiter((len(c.ids) >> 3 for c in cols), dtype=np.int64, count=nr_tables)
            indices = np.frombuffer(b"".join(c.ids for c in cols), dtype="<i8").astype(np.int64)
        else:
            ids_parts = [_int64s(c.ids, f"batch.sparse.{name}.ids", name) for name, c in zip(names, cols)]
            counts = np.fromiter((x.shape[0] for x in ids_parts), dtype=np.int64, count=nr_tables)
            indices = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int64)
        packed = all(type(c.lengths) is bytes and len(c.lengths) == 8 * n for c in cols)
        if packed:
            lengths = np.frombuffer(b"".join(c.lengths for c in cols), dtype="<i8").reshape(nr_tables, n).astype(np.int64)
        else:
            lengths = np.ones((nr_tables, n), dtype=np.int64)
        for t, (name, c) in enumerate(zip(names, cols)):
            if c.lengths is not None and not packed:
                lens = _int64s(c.lengths, f"batch.sparse.{name}.lengths", name)
                if lens.shape[0] != n:
                    raise RequestError(f"batch.sparse.{name}.lengths has {lens.shape[0]} values for {n} samples",
                                       field=f"batch.sparse.{name}.lengths", table=name,
                                       allowed=f"exactly {n} values (one bag size per sample)")
                lengths[t] = lens
        bad_len = (lengths < 0) | (lengths > self.max_lookups_per_bag)
        if bad_len.any():
            t, i = (int(x) for x in np.argwhere(bad_len)[0])
            name, value = names[t], int(lengths[t, i])
            raise RequestError(f"batch.sparse.{name}.lengths[{i}] = {value}: a bag holds 0..{self.max_lookups_per_bag} "
                               "ids", field=f"batch.sparse.{name}.lengths[{i}]", table=name, position=i,
                               allowed=f"0..{self.max_lookups_per_bag}", status=413 if value > 0 else 422)
        sums = lengths.sum(axis=1)
        if not np.array_equal(sums, counts):
            t = int(np.flatnonzero(sums != counts)[0])
            raise RequestError(f"batch.sparse.{names[t]}: lengths sum to {int(sums[t])} but there are {int(counts[t])} "
                               "ids", field=f"batch.sparse.{names[t]}.ids", table=names[t],
                               allowed="len(ids) == sum(lengths)")
        limit = np.repeat(self.table_rows, counts)
        bad = np.flatnonzero(indices.view(np.uint64) >= limit.view(np.uint64))  # ids < 0 wrap to >= 2^63
        if bad.size:
            k = int(bad[0])
            t = int(np.searchsorted(np.cumsum(counts), k, side="right"))
            pos = k - int(counts[:t].sum())
            name, rows = names[t], int(self.table_rows[t])
            raise RequestError(f"batch.sparse.{name}.ids[{pos}]: row id {int(indices[k])} is out of range for table "
                               f"{name!r} ({rows} rows; allowed [0, {rows}))"
                               f"{'' if bad.size == 1 else f' ({bad.size - 1} more bad id(s))'}",
                               field=f"batch.sparse.{name}.ids[{pos}]", table=name, position=pos,
                               allowed=f"[0, {rows})")
        return ParsedRequest(dense=np.ascontiguousarray(dense), lengths=lengths, indices=indices)

    # -- step 0: bytes -> samples --------------------------------------------------------------
    def parse_json(self, body: bytes) -> tuple[list[Sample], str]:
        """Decode the body and check its structure; returns the samples and their path prefix."""
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"malformed JSON body: {exc}", field="body") from None
        except RecursionError:
            raise RequestError("malformed JSON body: nested too deeply", field="body",
                               allowed="a sample, a list of samples, {\"samples\": [...]} or {\"batch\": {...}}") from None
        except ValueError as exc:  # e.g. an integer of thousands of digits
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
        except RecursionError:
            raise RequestError("request nested too deeply", field=prefix) from None
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
        """Body bytes -> validated arrays, or :class:`RequestError` (the slow path: pydantic objects
        per sample and id; :meth:`parse_fast` gives the same arrays and calls this only to name
        what is wrong with a body it refuses)."""
        samples, prefix = self.parse_json(body)
        return self.to_arrays(samples, prefix)


MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


def is_msgpack(content_type: Optional[str]) -> bool:
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() in MSGPACK_TYPES


def _int64s(values, field: str, table: str) -> np.ndarray:
    """A column's ids or lengths as int64: from raw little-endian bytes or a (validated) list."""
    if isinstance(values, bytes):
        if len(values) % 8:
            raise RequestError(f"{field} has {len(values)} bytes, not a multiple of 8", field=field, table=table,
                               allowed="little-endian int64 bytes")
        return np.frombuffer(values, dtype="<i8")  # read-only view; np.concatenate copies it
    return np.fromiter(values, dtype=np.int64, count=len(values))


_AT = re.compile(r"^(.*?) - at `\$(.*)`$", re.S)


def _msgspec_error(exc: BaseException, table_names: Sequence[str]) -> RequestError:
    """A RequestError from msgspec's message, its path made a field like ``batch.sparse.C1.ids[3]``."""
    if isinstance(exc, RecursionError):
        return RequestError("malformed body: nested too deeply", field="body")
    text = str(exc)
    m = _AT.match(text)
    if not m:
        return RequestError(f"invalid body: {text}", field="body")
    what, path = m.group(1), m.group(2)
    field = path.lstrip(".") or "body"
    table = position = None
    sm = re.search(r"\.sparse\.(.+?)(?:\.ids|\.lengths)?(?:\[(\d+)\])?$", path)
    if sm and sm.group(1) in table_names:
        table = sm.group(1)
        position = int(sm.group(2)) if sm.group(2) else None
    return RequestError(f"{field}: {what}", field=field, table=table, position=position)
