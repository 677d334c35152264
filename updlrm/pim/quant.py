"""Integer embedding tables for the DPUs: scales, quantization and the error bound of pooled sums.

A table stored as int32, int16 or int8 holds ``q = clip(rint(w * s_c), -L, L)`` for every element
of column ``c``; the DPUs add the ``q`` of a bag in int32 (plain integer adds, no multiply) and the
host returns ``value = sum(q) / s_c`` (the merger divides once per result element, in float64,
then rounds to float32). One scale per column is all the merger needs, so both granularities are
per-column vectors:

* ``granularity="table"``: one symmetric scale per table, ``s = L / max|w_t|``;
* ``granularity="group"``: one scale per (table, group of ``group_cols`` adjacent columns), as in
  GPAQuant's group-wise PIM-aware quantization: ``s_g = L / max|w_t[:, g]|``. A group of small
  weights keeps its own resolution instead of the table's largest column deciding for it.

**The element limit L** keeps every bag inside int32::

    L = min(qmax(dtype), floor((2**31 - 1) / M))        qmax: int8 127, int16 32,767, int32 2**31-1

(M = ``max_bag_lookups``). A bag of up to M lookups - or any partial sum of one, which is what a
DPU holding part of a bag returns - sums at most M values of magnitude <= L, so ``|sum| <= M * L
<= 2**31 - 1``: no overflow, whatever the rows. For int8 that is L = 127 up to M = 16,909,320;
for int16, L = 32,767 up to M = 65,538 (larger M lowers L); for int32, L = floor((2**31-1)/M)
(the fixed point the project always had).

**Calibration** (``calibrate_on=counts``): the scale of a group is set by the *hot* rows only -
the most accessed rows that together take ``coverage`` of the accesses - so that a few cold
outliers do not coarsen every lookup. Elements beyond ``L / s`` are clipped to +-L.

**Error bound.** Per element of column c, ``|w - q / s_c| <= e_c`` with
``e_c = max(0.5 / s_c, max|w[:, c]| - L / s_c)`` (rounding; clipping when calibrated). The sum
of ``q`` is exact (int32 on the DPUs, int64 in the merger), so a pooled bag of n lookups is off
from the exact sum of its fp32 weights by at most::

    n * e_c  +  2**-24 * n * max|w[:, c]|      (the second term: rounding the result to float32)

:meth:`Quantization.pooled_error_bound` gives this per table (the max over the table's columns),
:meth:`Quantization.column_bound` per column.

Example::

    qz = Quantization.build(weights, "int8", max_bag_lookups=128, granularity="group", group_cols=4)
    q0 = qz.quantize(0, weights[0])          # int8 [rows_0, dim_0]
    qz.pooled_error_bound(20)                # [T] max abs error of a bag of 20 lookups

A table that arrives row-wise quantized (FBGEMM / TorchRec INT8: per-row scale and bias) is
brought in with :func:`dequantize_rowwise` and quantized again here; :func:`rowwise_int8` makes
such tables from float weights, for comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

#: Integer dtypes and the numpy type of one stored element.
INT_DTYPES = {"int32": np.int32, "int16": np.int16, "int8": np.int8}
INT32_MAX = 2**31 - 1
GRANULARITIES = ("table", "group")
#: Default columns per group for ``granularity="group"``.
DEFAULT_GROUP_COLS = 4
#: Default share of the accesses whose rows decide a calibrated scale.
DEFAULT_COVERAGE = 0.999


def element_limit(dtype: str, max_bag_lookups: int) -> int:
    """L: the largest |q| of one stored element such that M = ``max_bag_lookups`` of them fit int32."""
    if dtype not in INT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(INT_DTYPES)} to be quantized, got {dtype!r}")
    m = int(max_bag_lookups)
    if m < 1:
        raise ValueError(f"max_bag_lookups must be >= 1, got {max_bag_lookups}")
    qmax = int(np.iinfo(INT_DTYPES[dtype]).max)
    return min(qmax, INT32_MAX // m)


def column_groups(dim: int, granularity: str, group_cols: int) -> np.ndarray:
    """Group id of every column of a table: int64 [dim] (all 0 for ``"table"``)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "table":
        return np.zeros(dim, dtype=np.int64)
    if int(group_cols) < 1:
        raise ValueError(f"group_cols must be >= 1, got {group_cols}")
    return np.arange(dim, dtype=np.int64) // int(group_cols)


def hot_rows(counts: np.ndarray, coverage: float) -> np.ndarray:
    """Rows, most accessed first, that together take at least ``coverage`` of the accesses (int64).

    Never empty for a table with any access; empty when ``counts`` is all zero (then the caller
    uses every row)."""
    c = np.asarray(counts, dtype=np.int64)
    total = int(c.sum())
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-c, kind="stable")
    cum = np.cumsum(c[order])
    k = int(np.searchsorted(cum, coverage * total, side="left")) + 1
    return order[: min(k, c.size)]


def _col_absmax(w: np.ndarray) -> np.ndarray:
    """max |w| of every column: float64 [dim] (zeros for a table without rows)."""
    if not w.shape[0]:
        return np.zeros(w.shape[1])
    return np.maximum(w.max(axis=0), -w.min(axis=0)).astype(np.float64)  # no |w| copy of the table


def _group_max(col: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Largest value of ``col`` [dim] in every column group: float64 [nr_groups]."""
    out = np.zeros(int(groups.max()) + 1 if groups.size else 0)
    np.maximum.at(out, groups, col)
    return out


def rowwise_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise asymmetric 8-bit quantization, the rule of FBGEMM's fused 8-bit row-wise tables
    (TorchRec's INT8 inference tables), written here from its definition: per row
    ``bias = min(row)``, ``scale = (max(row) - min(row)) / 255``, ``q = rint((w - bias) / scale)``
    in 0..255. Returns ``(q uint8 [rows, dim], scale float32 [rows], bias float32 [rows])``;
    a constant row gets scale 1 (its q are 0)."""
    w = np.asarray(w, dtype=np.float32)
    lo = w.min(axis=1) if w.shape[1] else np.zeros(w.shape[0], np.float32)
    hi = w.max(axis=1) if w.shape[1] else np.zeros(w.shape[0], np.float32)
    scale = ((hi - lo) / np.float32(255.0)).astype(np.float32)
    scale[scale == 0] = 1.0
    q = np.rint((w - lo[:, None]) / scale[:, None])
    return np.clip(q, 0, 255).astype(np.uint8), scale, lo.astype(np.float32)


def dequantize_rowwise(q: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The float32 table a row-wise 8-bit table stands for: ``q * scale + bias`` per row."""
    return (np.asarray(q, dtype=np.float32) * np.asarray(scale, np.float32)[:, None]
            + np.asarray(bias, np.float32)[:, None])


@dataclass(frozen=True)
class Quantization:
    """Per-column scales of every table for one integer dtype, and what they guarantee.

    Arrays are per result column, tables side by side (W = sum of dims; table t at columns
    ``col_offsets[t] : col_offsets[t] + dims[t]``): ``col_scale`` [W] (s_c), ``col_absmax`` [W]
    (max|w| of the column), ``col_error`` [W] (e_c, max abs error of one stored element).
    """

    dtype: str
    granularity: str
    group_cols: int
    max_bag_lookups: int
    limit: int
    dims: tuple
    col_scale: np.ndarray
    col_absmax: np.ndarray
    col_error: np.ndarray
    calibrated: bool = False
    coverage: float = 1.0

    @classmethod
    def build(
        cls,
        weights: Sequence[np.ndarray],
        dtype: str,
        max_bag_lookups: int = 4096,
        granularity: str = "table",
        group_cols: int = DEFAULT_GROUP_COLS,
        calibrate_on: Optional[Sequence[np.ndarray]] = None,
        coverage: float = DEFAULT_COVERAGE,
    ) -> "Quantization":
        """Scales for ``weights`` (one float [rows_t, dim_t] array per table).

        ``calibrate_on``: per table int [rows_t] access counts (an access profile's ``counts``);
        then only the hot rows covering ``coverage`` of a table's accesses set its scales.
        """
        limit = element_limit(dtype, max_bag_lookups)
        if calibrate_on is not None:
            if len(calibrate_on) != len(weights):
                raise ValueError(f"calibrate_on has {len(calibrate_on)} tables, weights {len(weights)}")
            if not 0.0 < float(coverage) <= 1.0:
                raise ValueError(f"coverage must be in (0, 1], got {coverage}")
        scales, absmax, errors = [], [], []
        for t, w in enumerate(weights):
            w = np.asarray(w)
            groups = column_groups(w.shape[1], granularity, group_cols)
            amax = _col_absmax(w)
            ref = _group_max(amax, groups)
            if calibrate_on is not None:
                cnt = np.asarray(calibrate_on[t])
                if cnt.shape != (w.shape[0],):
                    raise ValueError(f"calibrate_on[{t}] has shape {cnt.shape}, table {t} has {w.shape[0]} rows")
                hot = hot_rows(cnt, float(coverage))
                if hot.size:
                    ref = _group_max(_col_absmax(w[np.sort(hot)]), groups)
            # a group of zeros (or never-hot zeros) gets scale L: any value, its elements are 0
            g_scale = np.where(ref > 0, limit / np.where(ref > 0, ref, 1.0), float(limit))
            s = g_scale[groups]
            e = np.maximum(0.5 / s, amax - limit / s)
            scales.append(s)
            absmax.append(amax)
            errors.append(e)
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        return cls(
            dtype=dtype,
            granularity=granularity,
            group_cols=int(group_cols) if granularity == "group" else 0,
            max_bag_lookups=int(max_bag_lookups),
            limit=int(limit),
            dims=tuple(int(np.asarray(w).shape[1]) for w in weights),
            col_scale=cat(scales),
            col_absmax=cat(absmax),
            col_error=cat(errors),
            calibrated=calibrate_on is not None,
            coverage=float(coverage) if calibrate_on is not None else 1.0,
        )

    # ---- per table views -----------------------------------------------------------------------
    @property
    def col_offsets(self) -> np.ndarray:
        d = np.asarray(self.dims, dtype=np.int64)
        return np.concatenate([[0], np.cumsum(d)[:-1]]) if d.size else d

    def table_scales(self, t: int) -> np.ndarray:
        """s_c of table t's columns: float64 [dim_t]."""
        c = int(self.col_offsets[t])
        return self.col_scale[c : c + self.dims[t]]

    def quantize(self, t: int, block: np.ndarray, col_lo: int = 0, col_hi: Optional[int] = None) -> np.ndarray:
        """Stored integers of ``block`` = table t's columns [col_lo, col_hi) (any rows):
        ``clip(rint(block * s_c), -L, L)`` as the dtype's numpy type, [rows, col_hi - col_lo]."""
        col_hi = self.dims[t] if col_hi is None else int(col_hi)
        s = self.table_scales(t)[int(col_lo) : col_hi]
        q = np.rint(np.asarray(block, dtype=np.float64) * s)
        np.clip(q, -self.limit, self.limit, out=q)
        return q.astype(INT_DTYPES[self.dtype])

    def dequantize(self, t: int, q: np.ndarray) -> np.ndarray:
        """``q / s_c`` (float64) of table t's full-width integers."""
        return np.asarray(q, dtype=np.float64) / self.table_scales(t)

    # ---- bounds ------------------------------------------------------------------------------------
    def column_bound(self, bag_lookups: float) -> np.ndarray:
        """Max abs error per result column [W] of a pooled bag of ``bag_lookups`` lookups."""
        n = float(bag_lookups)
        return n * self.col_error + 2.0**-24 * n * self.col_absmax

    def pooled_error_bound(self, bag_lookups) -> np.ndarray:
        """Max abs error per element of a pooled bag, per table (max over the table's columns).

        ``bag_lookups``: a scalar (-> [T]) or an array whose first axis is the table ([T, ...] ->
        same shape). Bound per column c of a bag of n lookups: ``n * e_c + 2**-24 * n * max|w_c|``.
        """
        T = len(self.dims)
        offs = self.col_offsets
        per_elem = np.array(
            [(self.col_error[o : o + d] + 2.0**-24 * self.col_absmax[o : o + d]).max() if d else 0.0
             for o, d in zip(offs.tolist(), self.dims)]
        )
        n = np.asarray(bag_lookups, dtype=np.float64)
        if n.ndim == 0:
            return n * per_elem
        if n.shape[0] != T:
            raise ValueError(f"bag_lookups must be a scalar or have {T} rows (tables), got shape {n.shape}")
        return n * per_elem.reshape((T,) + (1,) * (n.ndim - 1))

    def describe(self) -> dict:
        """Summary for reports (JSON-serializable)."""
        return {
            "dtype": self.dtype, "granularity": self.granularity, "group_cols": self.group_cols,
            "max_bag_lookups": self.max_bag_lookups, "element_limit": self.limit,
            "calibrated": self.calibrated, "coverage": self.coverage,
            "max_element_error": float(self.col_error.max()) if self.col_error.size else 0.0,
        }
