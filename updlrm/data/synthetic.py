"""Synthetic embedding-lookup traces that look like production ones: skewed, co-accessed, drifting.

Each table draws its row ids from a bounded Zipf law over popularity *ranks* and maps ranks to
rows through a seeded random permutation, as FBGEMM's benchmark requests do (Zipf(alpha) draws,
then a permutation so that hot rows are scattered over the table, not rows 0, 1, 2...). Real
recommendation traffic is highly skewed (alpha ~1.0-1.2 gives realistic hot sets; shared DLRM.md).

Per table (:class:`TableWorkload`):

* ``alpha``: Zipf exponent, ``P(rank k) ∝ k^-alpha`` for k = 1..rows (0 = uniform).
* pooling factor (lookups per bag): ``"fixed"`` (every bag ``pooling`` lookups), ``"uniform"``
  (uniform integer in ``[pooling_min, pooling_max]``), or ``"profile"`` (drawn from
  ``pooling_profile[L]`` = probability of length L, e.g. measured on a real trace with
  :func:`pooling_profile`).
* ``coaccess``: optional :class:`CoAccess`: ``groups`` sets of ``group_size`` rows (themselves drawn
  from the table's Zipf law) that appear together: each bag, with probability ``prob``, starts
  with all rows of one group (its other lookups stay Zipf draws).
* ``drift``: optional :class:`Drift`: every ``period`` samples the rank -> row mapping shifts by
  ``shift`` positions of the permutation, so the top-K hot set of epoch e+1 keeps
  ``max(0, K - shift)`` of the K rows of epoch e.

Everything is drawn from ``numpy.random.Generator(PCG64(seed))``, vectorised; the same arguments
and seed give the same trace, bit for bit.

Sampling: ranks 1..H (H = min(rows, 2^20)) are drawn exactly by inverse CDF over their
cumulative weights; ranks above H (tables bigger than 2^20 rows) from the continuous power law
on [H + 1/2, rows + 1/2) rounded to the nearest rank, whose mass per rank differs from k^-alpha by
O(k^-alpha-2), negligible there. Permutations of tables above 2^24 rows are affine maps
``(a*r + b) mod rows`` with gcd(a, rows) = 1 instead of a stored shuffle (memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

from updlrm.data.trace import Trace

__all__ = ["TableWorkload", "CoAccess", "Drift", "synthetic_trace", "zipf_ranks", "pooling_profile", "fit_zipf_alpha"]

_EXACT_HEAD = 1 << 20  # ranks sampled exactly by inverse CDF
_STORED_PERM_MAX = 1 << 24  # tables up to this size get a true random permutation


@dataclass(frozen=True)
class CoAccess:
    """Co-access groups: ``groups`` groups of ``group_size`` rows; each bag starts with one whole
    group (chosen uniformly) with probability ``prob``."""

    groups: int = 16
    group_size: int = 4
    prob: float = 0.3

    def __post_init__(self) -> None:
        if self.groups < 1 or self.group_size < 1:
            raise ValueError(f"CoAccess needs groups >= 1 and group_size >= 1, got {self.groups}, {self.group_size}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"CoAccess.prob must be in [0, 1], got {self.prob}")


@dataclass(frozen=True)
class Drift:
    """Hot-set drift: every ``period`` samples, rank k maps to permutation slot ``k + e*shift``."""

    period: int
    shift: int

    def __post_init__(self) -> None:
        if self.period < 1 or self.shift < 0:
            raise ValueError(f"Drift needs period >= 1 and shift >= 0, got {self.period}, {self.shift}")


@dataclass(frozen=True)
class TableWorkload:
    """How one table is accessed (see the module docstring)."""

    rows: int
    alpha: float = 1.05
    pooling: str = "fixed"  # "fixed" | "uniform" | "profile"
    pooling_factor: int = 20  # "fixed": lookups per bag
    pooling_min: int = 1  # "uniform": inclusive bounds
    pooling_max: int = 40
    pooling_profile: tuple[float, ...] = field(default=())  # "profile": P(length = L), L = 0..
    coaccess: CoAccess | None = None
    drift: Drift | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"TableWorkload.rows must be >= 1, got {self.rows}")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ValueError(f"TableWorkload.alpha must be a finite number >= 0, got {self.alpha}")
        if self.pooling == "fixed":
            if self.pooling_factor < 0:
                raise ValueError(f"TableWorkload.pooling_factor must be >= 0, got {self.pooling_factor}")
        elif self.pooling == "uniform":
            if not 0 <= self.pooling_min <= self.pooling_max:
                raise ValueError(
                    f"TableWorkload uniform pooling needs 0 <= pooling_min <= pooling_max, "
                    f"got [{self.pooling_min}, {self.pooling_max}]"
                )
        elif self.pooling == "profile":
            p = np.asarray(self.pooling_profile, dtype=np.float64)
            if p.size == 0 or (p < 0).any() or not p.sum() > 0:
                raise ValueError("TableWorkload profile pooling needs pooling_profile: non-negative, positive sum")
        else:
            raise ValueError(f"TableWorkload.pooling must be 'fixed', 'uniform' or 'profile', got {self.pooling!r}")

    @property
    def mean_pooling(self) -> float:
        if self.pooling == "fixed":
            return float(self.pooling_factor)
        if self.pooling == "uniform":
            return (self.pooling_min + self.pooling_max) / 2
        p = np.asarray(self.pooling_profile, dtype=np.float64)
        return float((p / p.sum()) @ np.arange(p.size))


# -- Zipf -----------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _head_cdf(head: int, alpha: float) -> tuple[np.ndarray, float]:
    """Cumulative (unnormalised) weights of ranks 1..head, and their total."""
    w = np.arange(1, head + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(w)
    return cdf, float(cdf[-1])


def _power_integral(lo: float, hi: float, alpha: float) -> float:
    """∫_lo^hi x^-alpha dx."""
    if abs(alpha - 1.0) < 1e-12:
        return math.log(hi / lo)
    e = 1.0 - alpha
    return (hi**e - lo**e) / e


def _power_inverse(lo: float, u: np.ndarray, alpha: float) -> np.ndarray:
    """x such that ∫_lo^x t^-alpha dt = u (u >= 0)."""
    if abs(alpha - 1.0) < 1e-12:
        return lo * np.exp(u)
    e = 1.0 - alpha
    return (lo**e + e * u) ** (1.0 / e)


def zipf_ranks(rows: int, alpha: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` ranks in ``[0, rows)`` (0 = hottest) with ``P(rank k-1) ∝ k^-alpha``, int64."""
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    if alpha == 0:
        return rng.integers(0, rows, size=size, dtype=np.int64)
    head = min(rows, _EXACT_HEAD)
    cdf, head_mass = _head_cdf(head, float(alpha))
    tail_mass = _power_integral(head + 0.5, rows + 0.5, alpha) if rows > head else 0.0
    u = rng.random(size) * (head_mass + tail_mass)
    out = np.searchsorted(cdf, u, side="right").astype(np.int64)  # 0-based rank for u < head_mass
    in_tail = u >= head_mass
    if in_tail.any():
        x = _power_inverse(head + 0.5, u[in_tail] - head_mass, alpha)
        out[in_tail] = np.clip(np.rint(x).astype(np.int64), head + 1, rows) - 1
    np.minimum(out, rows - 1, out=out)  # guard against u rounding to the total
    return out


def fit_zipf_alpha(counts: np.ndarray, top: int | None = None) -> float:
    """Maximum-likelihood Zipf exponent of per-row access ``counts`` (any order), fitted over the
    ``top`` most popular ranks (default: every entry of ``counts``, zeros included), by the discrete power-law MLE
    ``sum_k c_k log k / N = E_alpha[log k]`` solved by bisection."""
    c = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    if top is not None:
        c = c[:top]
    n = c.size
    if n < 2 or c.sum() == 0:
        raise ValueError("fit_zipf_alpha needs counts on at least 2 rows")
    logk = np.log(np.arange(1, n + 1, dtype=np.float64))
    target = float(c @ logk / c.sum())

    def mean_logk(a: float) -> float:
        w = np.exp(-a * logk)
        return float(w @ logk / w.sum())

    lo, hi = 0.0, 8.0
    for _ in range(60):  # mean_logk decreases in alpha
        mid = (lo + hi) / 2
        if mean_logk(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# -- permutations ---------------------------------------------------------------------------------
class _RankToRow:
    """Seeded bijection rank -> row of one table (true shuffle, or affine map for huge tables)."""

    def __init__(self, rows: int, rng: np.random.Generator):
        self.rows = rows
        if rows <= _STORED_PERM_MAX:
            self.perm = rng.permutation(rows).astype(np.int64)
        else:
            self.perm = None
            while True:
                a = int(rng.integers(1, rows))
                if math.gcd(a, rows) == 1:
                    break
            self.a, self.b = a, int(rng.integers(0, rows))

    def __call__(self, slots: np.ndarray) -> np.ndarray:
        slots = slots % self.rows
        if self.perm is not None:
            return self.perm[slots]
        # (a*s + b) mod rows without int64 overflow: split a into 2^20-sized limbs.
        a_hi, a_lo = divmod(self.a, 1 << 20)
        part = (a_hi * slots) % self.rows
        part = (part * (1 << 20)) % self.rows
        return (part + a_lo * slots + self.b) % self.rows


# -- generator ------------------------------------------------------------------------------------
def _draw_lengths(w: TableWorkload, n: int, rng: np.random.Generator) -> np.ndarray:
    if w.pooling == "fixed":
        return np.full(n, w.pooling_factor, dtype=np.int64)
    if w.pooling == "uniform":
        return rng.integers(w.pooling_min, w.pooling_max + 1, size=n, dtype=np.int64)
    p = np.asarray(w.pooling_profile, dtype=np.float64)
    return rng.choice(p.size, size=n, p=p / p.sum()).astype(np.int64)


def _table_indices(w: TableWorkload, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row ids of one table for bags of the given lengths (concatenated), int64."""
    n = lengths.size
    total = int(lengths.sum())
    to_row = _RankToRow(w.rows, rng)
    ranks = zipf_ranks(w.rows, w.alpha, total, rng)
    if w.coaccess is not None:
        ca = w.coaccess
        group_ranks = zipf_ranks(w.rows, w.alpha, ca.groups * ca.group_size, rng).reshape(ca.groups, ca.group_size)
        with_group = rng.random(n) < ca.prob
        which = rng.integers(0, ca.groups, size=n)
        bag_start = np.cumsum(lengths) - lengths
        width = np.minimum(lengths, ca.group_size)  # a short bag takes the group's first members
        sel = np.flatnonzero(with_group & (width > 0))
        if sel.size:
            col = np.arange(ca.group_size)
            mask = col[None, :] < width[sel, None]  # [nsel, group_size]
            pos = (bag_start[sel, None] + col[None, :])[mask]
            ranks[pos] = group_ranks[which[sel]][mask]
    slots = ranks
    if w.drift is not None and w.drift.shift:
        sample_of = np.repeat(np.arange(n, dtype=np.int64), lengths)
        slots = ranks + (sample_of // w.drift.period) * w.drift.shift
    return to_row(slots)


def synthetic_trace(
    tables: Sequence[TableWorkload] | TableWorkload,
    samples: int,
    seed: int = 0,
    nr_tables: int | None = None,
) -> Trace:
    """A seeded synthetic :class:`Trace` of ``samples`` samples.

    ``tables``: one :class:`TableWorkload` per table, or a single one repeated ``nr_tables``
    times (each table still gets its own permutation and draws). Table ``t`` is drawn from its
    own child generator ``SeedSequence(seed).spawn(T)[t]``, so adding a table does not change the
    others. Example::

        tr = synthetic_trace(TableWorkload(rows=100_000, alpha=1.1, pooling_factor=20), 4096, nr_tables=8)
        tr.lengths().shape  # (8, 4096)
    """
    if isinstance(tables, TableWorkload):
        tables = [tables] * (1 if nr_tables is None else int(nr_tables))
    tables = list(tables)
    if not tables:
        raise ValueError("synthetic_trace needs at least one table")
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    children = np.random.SeedSequence(int(seed)).spawn(len(tables))
    all_lengths, all_indices = [], []
    for w, child in zip(tables, children):
        rng = np.random.Generator(np.random.PCG64(child))
        lengths = _draw_lengths(w, samples, rng)
        all_lengths.append(lengths)
        all_indices.append(_table_indices(w, lengths, rng))
    offsets = np.zeros(len(tables) * samples + 1, dtype=np.int64)
    np.cumsum(np.concatenate(all_lengths), out=offsets[1:])
    names = [w.name or f"t{t}" for t, w in enumerate(tables)]
    return Trace(np.concatenate(all_indices), offsets, samples, names, [w.rows for w in tables])


def pooling_profile(trace: Trace, table: int | str, max_length: int | None = None) -> tuple[float, ...]:
    """Measured ``P(length = L)`` of a table's bags, for ``TableWorkload(pooling="profile")``."""
    _, off = trace.table(table)
    lens = np.diff(off)
    if max_length is not None:
        lens = np.minimum(lens, max_length)
    counts = np.bincount(lens)
    return tuple(float(c) for c in counts / max(counts.sum(), 1))
