"""The inference batch (dense features + table-major sparse ids), its boundary validation, and a
small Zipf-skewed random batch generator.

Layout (EmbeddingBag / KeyedJaggedTensor style, table-major)::

    dense   [B, n_dense] float32
    indices [N] int64, all tables concatenated, table 0 first
    offsets [T*B + 1] int64; bag (table t, sample b) is indices[offsets[t*B+b] : offsets[t*B+b+1]]

    e.g. T=2, B=2:  table 0: sample 0 -> [3, 1], sample 1 -> []; table 1: sample 0 -> [7], sample 1 -> [0, 0]
         indices = [3, 1, 7, 0, 0]     offsets = [0, 2, 2, 3, 5]

:func:`validate_batch` checks a batch once against the model's tables at the engine boundary and
raises :class:`updlrm.errors.InvalidBatchError` naming what is wrong (table, position, value,
allowed range). It is vectorised: per table a min/max, never a Python loop over lookups.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch

from updlrm.errors import InvalidBatchError

__all__ = ["Batch", "validate_batch", "random_batch", "zipf_ids"]

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _to_tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidBatchError(f"{what} must be an array or tensor: {exc}") from None


def _normalise_ids(t: torch.Tensor) -> torch.Tensor:
    """Integer ids/offsets become contiguous int64; other dtypes are left for validation to reject."""
    if t.dtype in _INT_DTYPES and t.dtype != torch.int64:
        t = t.to(torch.int64)
    return t.contiguous()


class Batch:
    """One inference batch: ``dense [B, n_dense]`` float32, ``indices [N]`` int64 (all tables,
    table-major) and ``offsets [T*B+1]`` int64 (see the module docstring for the layout).

    Construction converts NumPy arrays to CPU tensors, integer ids/offsets of any width to int64
    and floating dense features to float32; it does not check the batch against a model: the
    engine calls :func:`validate_batch` once at its boundary. Treat a batch as read-only.
    """

    __slots__ = ("dense", "indices", "offsets")

    def __init__(self, dense, indices, offsets):
        dense = _to_tensor(dense, "dense")
        if dense.is_floating_point() and dense.dtype != torch.float32:
            dense = dense.to(torch.float32)
        self.dense = dense.contiguous()
        self.indices = _normalise_ids(_to_tensor(indices, "indices"))
        self.offsets = _normalise_ids(_to_tensor(offsets, "offsets"))

    @classmethod
    def from_lists(cls, dense, indices_per_table: Sequence, offsets_per_table: Sequence) -> "Batch":
        """Build a batch from EmbeddingBag-style pieces, one per table.

        ``offsets_per_table[t]`` holds the B bag starts of table t into ``indices_per_table[t]``
        (torch EmbeddingBag ``offsets``), or B+1 entries ending at ``len(indices_per_table[t])``
        (``include_last_offset=True``). B comes from ``dense``.
        """
        dense_t = _to_tensor(dense, "dense")
        if dense_t.dim() != 2:
            raise InvalidBatchError(f"dense must be 2-D [B, n_dense], got shape {tuple(dense_t.shape)}")
        b = int(dense_t.shape[0])
        if len(indices_per_table) != len(offsets_per_table):
            raise InvalidBatchError(
                f"from_lists: {len(indices_per_table)} index tensors but {len(offsets_per_table)} offset tensors"
            )
        idx_parts, off_parts, base = [], [], 0
        for t, (idx, off) in enumerate(zip(indices_per_table, offsets_per_table)):
            idx = _normalise_ids(_to_tensor(idx, f"indices of table {t}")).reshape(-1)
            off = _normalise_ids(_to_tensor(off, f"offsets of table {t}")).reshape(-1)
            if off.dtype != torch.int64:
                raise InvalidBatchError(f"offsets of table {t} must be integers, got {off.dtype}")
            if off.numel() == b + 1:
                if int(off[-1]) != idx.numel():
                    raise InvalidBatchError(
                        f"table {t}: offsets has B+1={b + 1} entries, so its last ({int(off[-1])}) must equal "
                        f"the number of indices of that table ({idx.numel()})"
                    )
                off = off[:-1]
            elif off.numel() != b:
                raise InvalidBatchError(
                    f"table {t}: offsets has {off.numel()} entries; expected B={b} bag starts "
                    f"(or B+1 with the last offset), B taken from dense"
                )
            idx_parts.append(idx)
            off_parts.append(off + base)
            base += idx.numel()
        indices = torch.cat(idx_parts) if idx_parts else torch.empty(0, dtype=torch.int64)
        offsets = torch.cat(off_parts + [torch.tensor([base], dtype=torch.int64)])
        return cls(dense_t, indices, offsets)

    @property
    def batch_size(self) -> int:
        """B, the number of samples (rows of ``dense``)."""
        return int(self.dense.shape[0]) if self.dense.dim() >= 1 else 0

    @property
    def nr_tables(self) -> int:
        """T, from the offsets' length (``(len(offsets) - 1) / B``)."""
        b = self.batch_size
        return (self.offsets.numel() - 1) // b if b else 0

    @property
    def nr_lookups(self) -> int:
        return int(self.indices.numel())

    def table(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Table ``t``'s ids ``[N_t]`` and bag starts ``[B]`` (relative to its ids), ready for
        ``torch.nn.EmbeddingBag``."""
        b = self.batch_size
        lo = int(self.offsets[t * b])
        hi = int(self.offsets[(t + 1) * b])
        return self.indices[lo:hi], self.offsets[t * b : (t + 1) * b] - lo

    def lengths(self) -> torch.Tensor:
        """Lookups per bag, ``[T, B]`` int64."""
        return torch.diff(self.offsets).reshape(self.nr_tables, self.batch_size)

    def __repr__(self) -> str:
        return f"Batch(B={self.batch_size}, T={self.nr_tables}, lookups={self.nr_lookups}, n_dense={self.dense.shape[-1] if self.dense.dim() == 2 else '?'})"


def _table_label(tables, t: int) -> str:
    return f"table {t} ({tables[t].name!r})"


def validate_batch(batch: Batch, tables: Sequence, n_dense: int) -> None:
    """Check ``batch`` against a model's ``tables`` (list of TableSpec) and dense width.

    Raises :class:`InvalidBatchError` with the first problem found: wrong dtypes or shapes, NaN/inf
    dense, dense/sparse batch-size mismatch, wrong table count, offsets not starting at 0,
    decreasing, or not ending at ``len(indices)``, ids negative or >= the table's rows. Costs one
    pass over ``dense`` and a min/max per table over the ids.
    """
    if not isinstance(batch, Batch):
        raise InvalidBatchError(f"expected an updlrm.Batch, got {type(batch).__name__}")
    dense, indices, offsets = batch.dense, batch.indices, batch.offsets
    nr_tables = len(tables)

    # dense: dtype, shape, values
    if dense.dtype != torch.float32:
        raise InvalidBatchError(f"dense must be floating point (converted to float32), got dtype {dense.dtype}")
    if dense.dim() != 2:
        raise InvalidBatchError(f"dense must be 2-D [B, n_dense], got shape {tuple(dense.shape)}")
    b = int(dense.shape[0])
    if b < 1:
        raise InvalidBatchError("batch is empty: dense has 0 rows (need B >= 1)")
    if dense.shape[1] != n_dense:
        raise InvalidBatchError(f"dense has {dense.shape[1]} features per sample; the model expects n_dense={n_dense}")
    finite = torch.isfinite(dense)
    if not bool(finite.all()):
        row, col = (int(v) for v in torch.nonzero(~finite)[0])
        nr_bad = int((~finite).sum())
        raise InvalidBatchError(
            f"dense[{row}, {col}] = {float(dense[row, col])} is not finite ({nr_bad} non-finite value(s) in all)"
        )

    # ids and offsets: dtype, rank
    for name, t in (("indices", indices), ("offsets", offsets)):
        if t.dtype != torch.int64:
            raise InvalidBatchError(f"{name} must be integers (int32 or int64), got dtype {t.dtype}")
        if t.dim() != 1:
            raise InvalidBatchError(f"{name} must be 1-D, got shape {tuple(t.shape)}")

    # offsets length: T*B + 1
    n_off = offsets.numel()
    expected = nr_tables * b + 1
    if n_off != expected:
        hints = []
        if n_off > 1 and (n_off - 1) % b == 0:
            hints.append(f"{(n_off - 1) // b} tables at batch size {b} (wrong table count: the model has {nr_tables})")
        if n_off > 1 and (n_off - 1) % nr_tables == 0:
            hints.append(
                f"batch size {(n_off - 1) // nr_tables} for {nr_tables} tables (dense/sparse batch size mismatch: "
                f"dense has {b} rows)"
            )
        hint = ("; that fits " + " or ".join(hints)) if hints else ""
        raise InvalidBatchError(
            f"offsets has {n_off} entries; expected T*B+1 = {expected} for T={nr_tables} tables and "
            f"B={b} (rows of dense){hint}"
        )
    off = offsets.numpy()
    if off[0] != 0:
        raise InvalidBatchError(f"offsets[0] must be 0, got {int(off[0])}")
    steps = np.diff(off)
    if steps.size and steps.min() < 0:
        k = int(np.argmax(steps < 0))
        raise InvalidBatchError(
            f"offsets must be non-decreasing: offsets[{k + 1}] = {int(off[k + 1])} < offsets[{k}] = {int(off[k])} "
            f"({_table_label(tables, k // b)}, sample {k % b})"
        )
    if off[-1] != indices.numel():
        raise InvalidBatchError(
            f"the last offset ({int(off[-1])}) must equal the number of indices ({indices.numel()})"
        )

    # id ranges, table by table (vectorised min/max per table)
    ids = indices.numpy()
    starts = off[:: b]  # [T+1] first index of each table, then the end
    for t in range(nr_tables):
        lo, hi = int(starts[t]), int(starts[t + 1])
        if hi == lo:
            continue
        seg = ids[lo:hi]
        rows = int(tables[t].rows)
        if seg.min() >= 0 and seg.max() < rows:
            continue
        bad = (seg < 0) | (seg >= rows)
        p = int(np.argmax(bad))
        pos = lo + p
        sample = int(np.searchsorted(off[t * b : (t + 1) * b + 1], pos, side="right")) - 1
        lookup = pos - int(off[t * b + sample])
        more = int(bad.sum()) - 1
        raise InvalidBatchError(
            f"{_table_label(tables, t)}: id {int(seg[p])} at indices[{pos}] (sample {sample}, lookup {lookup} of its bag) "
            f"is out of range [0, {rows})" + (f"; {more} more bad id(s) in this table" if more else "")
        )


# ---------------------------------------------------------------------------------------------
# Zipf-skewed random batches
# ---------------------------------------------------------------------------------------------

#: Tables up to this many rows get an exact discrete Zipf CDF and a true random permutation;
#: larger ones a continuous (Pareto) approximation and an affine permutation (no big arrays).
_EXACT_ROWS = 1 << 22


@functools.lru_cache(maxsize=64)
def _zipf_cdf(rows: int, alpha: float) -> np.ndarray:
    w = np.arange(1, rows + 1, dtype=np.float64) ** (-alpha)
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    return cdf


@functools.lru_cache(maxsize=64)
def _permutation(rows: int, perm_seed: int) -> np.ndarray:
    return np.random.default_rng([perm_seed, rows]).permutation(rows).astype(np.int64)


def zipf_ids(rows: int, n: int, alpha: float, rng: np.random.Generator, perm_seed: int = 0) -> np.ndarray:
    """``n`` row ids in ``[0, rows)``, rank k (1-based) drawn with probability ~ k^-alpha, ranks
    mapped to rows by a permutation fixed by ``(rows, perm_seed)`` (FBGEMM's benchmark requests do
    Zipf then a random permutation). ``alpha = 0`` is uniform. Returns int64 ``[n]``."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if alpha == 0:
        return rng.integers(0, rows, size=n, dtype=np.int64)
    u = rng.random(n)
    if rows <= _EXACT_ROWS:
        ranks = np.searchsorted(_zipf_cdf(rows, float(alpha)), u, side="right")
        ranks = np.minimum(ranks, rows - 1)  # u -> rank-1 in [0, rows)
        return _permutation(rows, perm_seed)[ranks]
    # Continuous power law on [1, rows+1), floored: close to the discrete law for big tables.
    top = float(rows + 1)
    if abs(alpha - 1.0) < 1e-9:
        x = np.exp(u * math.log(top))
    else:
        e = 1.0 - alpha
        x = (1.0 + u * (top**e - 1.0)) ** (1.0 / e)
    ranks = np.clip(np.floor(x).astype(np.int64) - 1, 0, rows - 1)
    # Affine bijection k -> (a*k + c) mod rows with gcd(a, rows) = 1.
    prng = np.random.default_rng([perm_seed, rows])
    a = int(prng.integers(1, rows))
    while math.gcd(a, rows) != 1:
        a += 1
    c = int(prng.integers(0, rows))
    return (ranks * a + c) % rows


def random_batch(
    config,
    batch_size: int,
    pooling: int = 20,
    alpha: float = 1.05,
    seed: int = 0,
    perm_seed: int | None = None,
) -> Batch:
    """A random batch for ``config`` (a DLRMConfig): ``pooling`` lookups per bag, ids Zipf(alpha)
    over a random permutation of each table's rows (the hot rows stay the same for every seed
    with the same ``perm_seed``, default ``config.seed``), dense features ``log(1 + Exp(10))``.

    Returns a :class:`Batch` with B = ``batch_size`` and T = ``config.nr_tables``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if pooling < 0:
        raise ValueError(f"pooling must be >= 0, got {pooling}")
    rng = np.random.default_rng(seed)
    perm_seed = config.seed if perm_seed is None else perm_seed
    per_table = batch_size * pooling
    ids = np.empty(config.nr_tables * per_table, dtype=np.int64)
    for t, spec in enumerate(config.tables):
        ids[t * per_table : (t + 1) * per_table] = zipf_ids(spec.rows, per_table, alpha, rng, perm_seed)
    offsets = np.arange(config.nr_tables * batch_size + 1, dtype=np.int64) * pooling
    dense = np.log1p(rng.exponential(10.0, size=(batch_size, config.n_dense))).astype(np.float32)
    return Batch(torch.from_numpy(dense), torch.from_numpy(ids), torch.from_numpy(offsets))
