"""Streaming reader of Criteo click logs (Kaggle train.txt/test.txt, Terabyte day_N), plain or gzip.

Format (one sample a line, tab-separated): ``label, I1..I13, C1..C26`` - the label (0/1), 13
integer features (may be empty or negative) and 26 categorical features (hex hashes such as
``68fd1e64``, may be empty). Kaggle's test.txt has no label (39 fields); the reader detects this
from the first line with 39 or 40 fields unless ``has_label`` is given.

Two preprocessing conventions (shared DLRM.md):

* ``"dlrm"`` (facebookresearch/dlrm): empty -> 0; dense: negatives -> 0, then ``log(x + 1)``;
  categorical: ``int(x, 16)``, then ``% max_ind_range`` when given, then, with a
  :class:`CriteoVocabulary` (per-feature sorted unique raw values, as dlrm's ``np.unique``
  dictionaries), the contiguous id. Needs ``max_ind_range`` or ``vocabulary``.
* ``"torchrec"`` (torchrec.datasets.criteo): empty -> 0; dense: ``log(x + 3)`` (x below -2 is
  raised to -2 so the log stays finite; torchrec itself would give -inf/nan there); categorical:
  ``int(x or "0", 16) % table_rows[t]``. Needs ``table_rows``.

Parsing is vectorised numpy over blocks of bytes (no Python loop over lines or fields): find the
newlines and tabs, check every line has the right number of fields, then read every field of up
to 8 characters as one uint64 and decode and validate it with SWAR arithmetic (9-16 characters:
two words). A line with the wrong number of fields, a non-digit in an integer field, a
non-hex character or an over-long field is *malformed*: it is skipped, counted, and reported with
its 1-based line number and the reason (``reader.malformed``, ``reader.report()``); the run goes
on. Memory is bounded by the block size (default 256 KiB of text per block), not the file size.
"""

from __future__ import annotations

import gzip
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from updlrm.data.trace import Trace

__all__ = [
    "CriteoReader",
    "CriteoChunk",
    "CriteoBatch",
    "CriteoVocabulary",
    "MalformedLine",
    "build_vocabulary",
    "NUM_DENSE",
    "NUM_SPARSE",
    "DENSE_NAMES",
    "SPARSE_NAMES",
]

log = logging.getLogger(__name__)

NUM_DENSE = 13
NUM_SPARSE = 26
DENSE_NAMES = tuple(f"I{i}" for i in range(1, NUM_DENSE + 1))
SPARSE_NAMES = tuple(f"C{i}" for i in range(1, NUM_SPARSE + 1))

_TAB, _NL, _CR, _MINUS = 9, 10, 13, 45
_MAX_DEC_DIGITS = 18  # fits int64
_MAX_HEX_DIGITS = 15  # fits int64 (non-negative)

# ASCII -> hex digit value, 255 for anything else.
_HEX_LUT = np.full(256, 255, dtype=np.uint8)
for _c in range(10):
    _HEX_LUT[ord("0") + _c] = _c
for _c in range(6):
    _HEX_LUT[ord("a") + _c] = 10 + _c
    _HEX_LUT[ord("A") + _c] = 10 + _c
# ASCII -> decimal digit value, 255 for anything else.
_DEC_LUT = np.full(256, 255, dtype=np.uint8)
_DEC_LUT[ord("0") : ord("9") + 1] = np.arange(10, dtype=np.uint8)


@dataclass(frozen=True)
class MalformedLine:
    """A skipped line: its 1-based number in the file and why."""

    line: int
    reason: str


@dataclass
class CriteoChunk:
    """Preprocessed samples of one block of lines.

    Attributes:
        dense: float32 ``[n, 13]`` preprocessed dense features.
        sparse: int64 ``[n, 26]`` row id of each sample in each table.
        labels: float32 ``[n]`` click labels, or None for unlabelled files.
        line_numbers: int64 ``[n]`` 1-based line of each sample in the file.
    """

    dense: np.ndarray
    sparse: np.ndarray
    labels: np.ndarray | None
    line_numbers: np.ndarray

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    @staticmethod
    def concat(chunks: Sequence["CriteoChunk"]) -> "CriteoChunk":
        if not chunks:
            return CriteoChunk(
                np.zeros((0, NUM_DENSE), np.float32), np.zeros((0, NUM_SPARSE), np.int64), None, np.zeros(0, np.int64)
            )
        labels = None if chunks[0].labels is None else np.concatenate([c.labels for c in chunks])
        return CriteoChunk(
            np.concatenate([c.dense for c in chunks]),
            np.concatenate([c.sparse for c in chunks]),
            labels,
            np.concatenate([c.line_numbers for c in chunks]),
        )

    def slice(self, start: int, stop: int) -> "CriteoChunk":
        return CriteoChunk(
            self.dense[start:stop],
            self.sparse[start:stop],
            None if self.labels is None else self.labels[start:stop],
            self.line_numbers[start:stop],
        )

    def flat_sparse(self) -> tuple[np.ndarray, np.ndarray]:
        """Table-major ``(indices [26*n], offsets [26*n + 1])``: one lookup per table and sample."""
        n = len(self)
        return np.ascontiguousarray(self.sparse.T).reshape(-1), np.arange(NUM_SPARSE * n + 1, dtype=np.int64)


@dataclass
class CriteoBatch:
    """A batch of Criteo samples ready for the engine: ``batch`` is an :class:`updlrm.batch.Batch`
    (dense ``[B, 13]``, one lookup per table and sample), ``labels`` float32 ``[B]`` or None."""

    batch: object
    labels: object
    line_numbers: np.ndarray


class CriteoVocabulary:
    """dlrm-style per-feature dictionaries: table t maps raw id ``values[t][k]`` to row ``k``
    (``values[t]`` sorted unique, as ``np.unique`` orders them)."""

    def __init__(self, values: Sequence[np.ndarray]):
        if len(values) != NUM_SPARSE:
            raise ValueError(f"CriteoVocabulary needs {NUM_SPARSE} tables, got {len(values)}")
        self.values = [np.asarray(v, dtype=np.int64) for v in values]
        for t, v in enumerate(self.values):
            if v.size and np.any(v[1:] <= v[:-1]):
                raise ValueError(f"CriteoVocabulary table {t} ({SPARSE_NAMES[t]}): values must be sorted and unique")

    @property
    def sizes(self) -> list[int]:
        """Rows of each table (at least 1)."""
        return [max(int(v.size), 1) for v in self.values]

    def lookup(self, t: int, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row ids of raw values of table t, and a mask of values not in the dictionary (-> row 0)."""
        v = self.values[t]
        if v.size == 0:
            return np.zeros(raw.shape, np.int64), np.ones(raw.shape, bool)
        pos = np.searchsorted(v, raw)
        pos_c = np.minimum(pos, v.size - 1)
        unknown = v[pos_c] != raw
        return np.where(unknown, 0, pos_c).astype(np.int64), unknown

    def save(self, path: str | os.PathLike) -> None:
        np.savez_compressed(path, **{name: v for name, v in zip(SPARSE_NAMES, self.values)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CriteoVocabulary":
        with np.load(path) as z:
            missing = [n for n in SPARSE_NAMES if n not in z]
            if missing:
                raise ValueError(f"{path}: not a Criteo vocabulary (missing {', '.join(missing[:3])})")
            return cls([z[n] for n in SPARSE_NAMES])


# -- vectorised field decoding --------------------------------------------------------------------
# Blocks are parsed from a buffer with _PAD leading zero bytes, so that the 8 bytes ending at any
# field end lie inside the buffer: every field of up to 8 characters is read as one uint64 through
# an unaligned sliding-window view and decoded with SWAR arithmetic (8 digits per operation).
_PAD = 8
_ONES = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)
_ASCII_ZEROS = np.uint64(0x3030303030303030)
# _KEEP_LAST[n]: keeps the last n bytes (the high bytes, little-endian) of an 8-byte window.
_KEEP_LAST = np.array([0] + [((1 << (8 * n)) - 1) << (8 * (8 - n)) for n in range(1, 9)], dtype=np.uint64)


def _windows(buf: np.ndarray) -> np.ndarray:
    """``w[i]`` = the 8 bytes ``buf[i:i+8]`` as a little-endian uint64 (a view, no copy)."""
    return np.ndarray(shape=(buf.size - 7,), dtype=np.uint64, buffer=buf, offset=0, strides=(1,))


def _in_range(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Per byte of ``x`` (all bytes < 0x80): 0x80 where lo <= byte <= hi, else 0 (SWAR)."""
    ge_lo = x + np.uint64((0x80 - lo) * 0x0101010101010101)
    gt_hi = x + np.uint64((0x7F - hi) * 0x0101010101010101)
    return ge_lo & ~gt_hi & _HIGH


def _field_words(buf: np.ndarray, ends: np.ndarray, length: np.ndarray) -> np.ndarray:
    """The last ``length`` (<= 8) bytes before each end, left-filled with ASCII '0', as uint64."""
    words = _windows(buf)[ends - 8]
    part = np.flatnonzero(length != 8)  # full 8-byte fields (most Criteo ids) need no mask
    if part.size * 4 > length.size:  # mostly short fields (integers): mask all, no gather/scatter
        keep = _KEEP_LAST[length]
        words &= keep
        words |= _ASCII_ZEROS & ~keep
    elif part.size:
        keep = _KEEP_LAST[length[part]]
        words[part] = (words[part] & keep) | (_ASCII_ZEROS & ~keep)
    return words


def _swar_decimal(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8 ASCII chars per uint64 (first char in the low byte) -> (value, bad)."""
    bad = ((x & _HIGH) | (_in_range(x, 0x30, 0x39) ^ _HIGH)) != 0
    y = x - _ASCII_ZEROS  # digits, byte j has weight 10^(7-j)
    # Combine neighbouring digits, then pairs, then quads (Lemire's eight-digit parse).
    y = (y * np.uint64(10 * 256 + 1)) >> np.uint64(8)
    y = ((y & np.uint64(0x00FF00FF00FF00FF)) * np.uint64(100 * 65536 + 1)) >> np.uint64(16)
    y = ((y & np.uint64(0x0000FFFF0000FFFF)) * np.uint64(10000 * (1 << 32) + 1)) >> np.uint64(32)
    return y.astype(np.int64), bad


def _swar_hex(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8 ASCII hex chars per uint64 (first char in the low byte) -> (value, bad)."""
    low = x | np.uint64(0x2020202020202020)  # 'A'-'F' -> 'a'-'f'; digits unchanged
    ok = _in_range(x, 0x30, 0x39) | _in_range(low, 0x61, 0x66)
    bad = ((x & _HIGH) | (ok ^ _HIGH)) != 0
    # '0'-'9' -> low nibble; 'a'-'f'/'A'-'F' (0x61../0x41..) -> low nibble + 9.
    y = (x & np.uint64(0x0F0F0F0F0F0F0F0F)) + ((x >> np.uint64(6)) & _ONES) * np.uint64(9)
    y = y.byteswap()  # byte k now has weight 16^k: pack nibbles, bytes, half-words
    y = (y | (y >> np.uint64(4))) & np.uint64(0x00FF00FF00FF00FF)
    y = (y | (y >> np.uint64(8))) & np.uint64(0x0000FFFF0000FFFF)
    y = (y | (y >> np.uint64(16))) & np.uint64(0x00000000FFFFFFFF)
    return y.astype(np.int64), bad


def _long_fields(buf, ends, ndig, lut, base_bits_or_ten):
    """Digit-by-digit decode of fields longer than 8 characters (rare)."""
    v = np.zeros(ends.size, dtype=np.int64)
    b = np.zeros(ends.size, dtype=bool)
    for k in range(int(ndig.max())):
        active = k < ndig
        d = lut[buf[ends - 1 - k]]
        b |= active & (d == 255)
        w = np.where(active, d, 0).astype(np.int64)
        v += (w << (4 * k)) if base_bits_or_ten == 16 else w * (10**k)
    return v, b


def _decode(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, hex_: bool) -> tuple[np.ndarray, np.ndarray]:
    """Integers in ``buf[starts:ends]``: signed decimal or hex (empty -> 0). (values int64, bad)."""
    length = ends - starts
    if hex_:
        neg = np.zeros(length.size, dtype=bool)
        ndig, limit, swar, lut = length, _MAX_HEX_DIGITS, _swar_hex, _HEX_LUT
    else:
        neg = (length > 0) & (buf[starts] == _MINUS)
        ndig, limit, swar, lut = length - neg, _MAX_DEC_DIGITS, _swar_decimal, _DEC_LUT
    # Every field through the 8-byte SWAR path (fields longer than 8 get garbage there), then the
    # rare long fields again digit by digit: no gather/scatter over the whole column.
    val, bad = swar(_field_words(buf, ends, np.minimum(ndig, 8)))
    long_idx = np.flatnonzero(ndig > 8)
    if long_idx.size:  # 9..16 characters: the 8 before the last 8 are a second SWAR word
        e, n = ends[long_idx], ndig[long_idx]
        two = n <= 16
        hi, hi_bad = swar(_field_words(buf, e - 8, np.clip(n - 8, 0, 8)))
        scale = np.int64(1 << 32) if hex_ else np.int64(10**8)
        val[long_idx] = np.where(two, hi * scale + val[long_idx], 0)
        bad[long_idx] |= hi_bad | ~two | (n > limit)
        rest = long_idx[~two & (n <= limit)]  # 17..18 decimal digits: digit by digit
        if rest.size:
            val[rest], bad[rest] = _long_fields(buf, ends[rest], ndig[rest], lut, 10)
    if not hex_:
        bad |= neg & (ndig == 0)  # a lone '-'
        val = np.where(neg, -val, val)
    return val, bad


def _decode_decimal(buf, starts, ends):
    return _decode(buf, starts, ends, hex_=False)


def _decode_hex(buf, starts, ends):
    return _decode(buf, starts, ends, hex_=True)


@dataclass
class _RawBlock:
    labels: np.ndarray | None  # int64 [n]
    dense: np.ndarray  # int64 [n, 13]
    cats: np.ndarray  # int64 [n, 26]
    line_numbers: np.ndarray  # int64 [n]
    malformed: list[MalformedLine]
    nr_malformed: int
    nr_lines: int


def _parse_block(block: bytes, first_line: int, has_label: bool, keep_reasons: int) -> _RawBlock:
    """Parse complete lines (``block`` ends with a newline) numbered from ``first_line``."""
    buf = np.frombuffer(b"\0" * _PAD + block, dtype=np.uint8)
    nfields = NUM_DENSE + NUM_SPARSE + (1 if has_label else 0)
    nl = np.flatnonzero(buf == _NL)
    n = nl.size
    line_start = np.empty(n, dtype=np.int64)
    line_start[0] = _PAD
    line_start[1:] = nl[:-1] + 1
    line_end = nl.copy()
    has_cr = (line_end > line_start) & (buf[np.maximum(line_end - 1, 0)] == _CR)
    line_end -= has_cr
    tabs = np.flatnonzero(buf == _TAB)
    tabs_before = np.searchsorted(tabs, line_start)  # tabs before each line
    ntabs = np.diff(np.append(tabs_before, tabs.size))
    good = ntabs == nfields - 1
    if good.all():  # the common case: the tabs are already an [m, nfields-1] matrix
        g = np.arange(n)
        tab_mat = tabs.reshape(n, nfields - 1)
    else:
        g = np.flatnonzero(good)
        tab_mat = tabs[tabs_before[g, None] + np.arange(nfields - 1)]  # [m, nfields-1]
    m = g.size
    c0 = 1 if has_label else 0
    # Field k of a line spans (sep[k-1] + 1, sep[k]) with sep[-1] = line start - 1, sep[last] = end.
    line_end_g = line_end[g]
    labels = lbad = None
    if has_label:
        labels, lbad = _decode_decimal(buf, line_start[g], tab_mat[:, 0])
    if has_label:
        d_starts, d_ends = tab_mat[:, 0:NUM_DENSE] + 1, tab_mat[:, 1 : NUM_DENSE + 1]
    else:
        d_starts = np.empty((m, NUM_DENSE), dtype=np.int64)
        d_starts[:, 0] = line_start[g]
        d_starts[:, 1:] = tab_mat[:, : NUM_DENSE - 1] + 1
        d_ends = tab_mat[:, :NUM_DENSE]
    dense, dbad = _decode_decimal(buf, d_starts.reshape(-1), np.ascontiguousarray(d_ends).reshape(-1))
    c_starts = tab_mat[:, c0 + NUM_DENSE - 1 :] + 1  # [m, 26]
    c_ends = np.empty((m, NUM_SPARSE), dtype=np.int64)
    c_ends[:, :-1] = tab_mat[:, c0 + NUM_DENSE :]
    c_ends[:, -1] = line_end_g
    cats, cbad = _decode_hex(buf, c_starts.reshape(-1), c_ends.reshape(-1))
    dense = dense.reshape(m, NUM_DENSE)
    cats = cats.reshape(m, NUM_SPARSE)
    dbad = dbad.reshape(m, NUM_DENSE)
    cbad = cbad.reshape(m, NUM_SPARSE)
    bad_row = dbad.any(axis=1) | cbad.any(axis=1)
    if lbad is not None:
        bad_row |= lbad

    # Malformed lines of both kinds, in file order; only the first keep_reasons get a reason text.
    wrong = np.flatnonzero(~good)
    field_bad = g[bad_row]
    all_bad = np.sort(np.concatenate([wrong, field_bad]))
    names = (("label",) if has_label else ()) + DENSE_NAMES + SPARSE_NAMES
    bad_lines: list[MalformedLine] = []
    for i in all_bad[: max(keep_reasons, 0)].tolist():  # at most keep_reasons lines
        if not good[i]:
            reason = "empty line" if line_end[i] == line_start[i] else f"{int(ntabs[i]) + 1} fields, expected {nfields}"
        else:
            r = int(np.searchsorted(g, i))
            row_bad = np.concatenate([[bool(lbad[r])] if lbad is not None else [], dbad[r], cbad[r]])
            col = int(np.argmax(row_bad))
            lo = line_start[i] if col == 0 else tab_mat[r, col - 1] + 1
            hi = line_end_g[r] if col == nfields - 1 else tab_mat[r, col]
            text = bytes(buf[lo:hi][:24]).decode("latin-1")
            kind = "hex id" if col >= c0 + NUM_DENSE else "integer"
            reason = f"field {col + 1} ({names[col]}) is not a valid {kind}: {text!r}"
        bad_lines.append(MalformedLine(first_line + i, reason))
    nr_bad = int(all_bad.size)
    if bad_row.any():
        keep = ~bad_row
        g, dense, cats = g[keep], dense[keep], cats[keep]
        labels = None if labels is None else labels[keep]
    return _RawBlock(labels, dense, cats, first_line + g.astype(np.int64), bad_lines, nr_bad, n)


# -- the reader -----------------------------------------------------------------------------------
def _open_binary(path: Path):
    raw = open(path, "rb")
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")
    return raw, raw


class CriteoReader:
    """Stream a Criteo text file as preprocessed chunks, engine batches or a trace.

    Example::

        reader = CriteoReader("day_0.gz", "torchrec", table_rows=TERABYTE_ROWS)
        for cb in reader.batches(2048):        # CriteoBatch: .batch (updlrm Batch), .labels
            probs = engine.predict(cb.batch)
        print(reader.report())                 # samples read, malformed lines with line numbers

    Args:
        path: text file, plain or gzip (detected by content).
        convention: ``"dlrm"`` or ``"torchrec"`` (module docstring).
        table_rows: 26 table sizes (torchrec: the hash moduli; also the trace's row counts).
        max_ind_range: dlrm's ``--max-ind-range`` (raw id modulus), optional.
        vocabulary: dlrm dictionaries (:func:`build_vocabulary`); unknown raw ids map to row 0 and
            are counted in ``reader.oov_counts``.
        has_label: True (40 fields), False (39: Kaggle test.txt) or None (detect from line 1).
        block_bytes: text bytes parsed per block (default 256 KiB: the working arrays then stay
            cache-resident; 384 KiB and up measured ~2x slower per byte here).
        progress: show a tqdm bar (None: only when stderr is a terminal).
        max_samples: stop after this many good samples.
        keep_malformed: how many malformed-line reports to keep (all are counted).
        read_ahead: read and decompress in a background thread, 4 blocks ahead. Off by default:
            on this 2-core machine it did not speed up gzip input (54 vs 45-52 MB/s, loaded).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        convention: str = "dlrm",
        *,
        table_rows: Sequence[int] | None = None,
        max_ind_range: int | None = None,
        vocabulary: CriteoVocabulary | None = None,
        has_label: bool | None = None,
        block_bytes: int = 256 << 10,
        progress: bool | None = None,
        max_samples: int | None = None,
        keep_malformed: int = 1000,
        read_ahead: bool = False,
    ):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"Criteo file not found: {self.path}")
        if convention not in ("dlrm", "torchrec"):
            raise ValueError(f"convention must be 'dlrm' or 'torchrec', got {convention!r}")
        if table_rows is not None:
            table_rows = [int(r) for r in table_rows]
            if len(table_rows) != NUM_SPARSE:
                raise ValueError(f"table_rows needs {NUM_SPARSE} entries, got {len(table_rows)}")
            for t, r in enumerate(table_rows):
                if r < 1:
                    raise ValueError(f"table_rows[{t}] ({SPARSE_NAMES[t]}) is {r}; must be >= 1")
        if max_ind_range is not None and max_ind_range < 1:
            raise ValueError(f"max_ind_range must be >= 1, got {max_ind_range}")
        if convention == "torchrec" and table_rows is None:
            raise ValueError("the torchrec convention hashes ids modulo table_rows: pass table_rows (26 sizes)")
        if convention == "dlrm" and max_ind_range is None and vocabulary is None:
            raise ValueError(
                "the dlrm convention needs max_ind_range (ids % max_ind_range) or a vocabulary "
                "(build_vocabulary(path)) to turn raw hex ids into row ids"
            )
        if block_bytes < 1024:
            raise ValueError(f"block_bytes must be >= 1024, got {block_bytes}")
        self.convention = convention
        self.table_rows = table_rows
        self.max_ind_range = max_ind_range
        self.vocabulary = vocabulary
        self.has_label = has_label
        self.block_bytes = int(block_bytes)
        self.progress = progress
        self.max_samples = max_samples
        self.keep_malformed = keep_malformed
        self.read_ahead = read_ahead
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.lines_read = 0
        self.samples_read = 0
        self.bytes_read = 0
        self.malformed: list[MalformedLine] = []
        self.malformed_count = 0
        self.oov_counts = np.zeros(NUM_SPARSE, dtype=np.int64)

    # -- sizes ----------------------------------------------------------------------------------
    @property
    def output_rows(self) -> list[int]:
        """Rows of each table the produced ids index into."""
        if self.convention == "torchrec":
            return list(self.table_rows)
        if self.vocabulary is not None:
            return self.vocabulary.sizes
        return [self.max_ind_range] * NUM_SPARSE

    # -- raw blocks -----------------------------------------------------------------------------
    def _blocks(self) -> Iterator[bytes]:
        """Blocks of complete lines (each ends with a newline)."""
        raw, stream = _open_binary(self.path)
        total = self.path.stat().st_size
        bar = None
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if show:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=self.path.name, file=sys.stderr)
        carry = b""
        try:
            while True:
                data = stream.read(self.block_bytes)
                eof = not data
                if eof:
                    if not carry:
                        break
                    block, carry = (carry if carry.endswith(b"\n") else carry + b"\n"), b""
                else:
                    data = carry + data
                    cut = data.rfind(b"\n")
                    if cut < 0:
                        carry = data
                        continue
                    block, carry = data[: cut + 1], data[cut + 1 :]
                if bar is not None:
                    bar.n = raw.tell()
                    bar.refresh()
                self.bytes_read += len(block)
                yield block
                if eof:
                    break
        finally:
            if bar is not None:
                bar.close()
            stream.close()
            raw.close()

    def _use_read_ahead(self) -> bool:
        return bool(self.read_ahead)

    @staticmethod
    def _read_ahead(blocks: Iterator[bytes], depth: int = 4) -> Iterator[bytes]:
        """Run ``blocks`` (read + decompress + split) in a background thread, ``depth`` blocks ahead."""
        import queue
        import threading

        q: queue.Queue = queue.Queue(maxsize=depth)
        stop = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for block in blocks:
                    while not stop.is_set():
                        try:
                            q.put(block, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        break
                q.put(done)
            except BaseException as exc:  # hand any error to the consumer
                q.put(exc)
            finally:
                blocks.close()

        thread = threading.Thread(target=produce, name="criteo-read-ahead", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    pass
                thread.join(timeout=0.05)

    def _detect_label(self, block: bytes) -> bool:
        """40 fields -> labelled, 39 -> not, from the first of the block's first 100 lines that
        has either count (a malformed first line does not decide)."""
        counts = [line.count(b"\t") + 1 for line in block.split(b"\n", 100)[:100]]
        for nf in counts:
            if nf == NUM_DENSE + NUM_SPARSE + 1:
                return True
            if nf == NUM_DENSE + NUM_SPARSE:
                return False
        raise ValueError(
            f"{self.path}: line 1 has {counts[0]} tab-separated fields and no line of the first 100 has 40 "
            f"(label, 13 integer, 26 categorical) or 39 (no label); pass has_label to read it anyway"
        )

    # -- preprocessing --------------------------------------------------------------------------
    def _dense(self, dense: np.ndarray) -> np.ndarray:
        x = dense.astype(np.float32)
        if self.convention == "dlrm":
            return np.log(np.maximum(x, 0.0) + np.float32(1.0))
        return np.log(np.maximum(x, -2.0) + np.float32(3.0))

    def _sparse(self, cats: np.ndarray) -> np.ndarray:
        if self.convention == "torchrec":
            return cats % np.asarray(self.table_rows, dtype=np.int64)[None, :]
        ids = cats % self.max_ind_range if self.max_ind_range is not None else cats
        if self.vocabulary is None:
            return ids
        out = np.empty_like(ids)
        for t in range(NUM_SPARSE):  # one vectorised lookup per table
            out[:, t], unknown = self.vocabulary.lookup(t, ids[:, t])
            self.oov_counts[t] += int(unknown.sum())
        return out

    def raw_blocks(self) -> Iterator[_RawBlock]:
        """Parsed but unpreprocessed blocks (raw ints); counters are updated."""
        self._reset_counters()
        has_label = self.has_label
        blocks = self._read_ahead(self._blocks()) if self._use_read_ahead() else self._blocks()
        try:
            yield from self._parsed(blocks, has_label)
        finally:
            blocks.close()
        if self.malformed_count:
            log.warning("%s", self.report())

    def _parsed(self, blocks, has_label) -> Iterator[_RawBlock]:
        """Parse blocks in order, numbering lines across blocks."""
        first_line = 1
        for block in blocks:
            if has_label is None:
                has_label = self._detect_label(block)
                self.has_label = has_label
            room = max(self.keep_malformed - len(self.malformed), 0)
            rb = _parse_block(block, first_line, has_label, room)
            first_line += rb.nr_lines
            if self._account(rb):
                yield self._truncated(rb)
                return
            yield rb

    def _account(self, rb: _RawBlock) -> bool:
        """Update the counters with a parsed block; True when it reaches ``max_samples``."""
        self.lines_read += rb.nr_lines
        self.malformed.extend(rb.malformed[: max(self.keep_malformed - len(self.malformed), 0)])
        self.malformed_count += rb.nr_malformed
        if self.max_samples is not None and self.samples_read + rb.line_numbers.size >= self.max_samples:
            return True
        self.samples_read += rb.line_numbers.size
        return False

    def _truncated(self, rb: _RawBlock) -> _RawBlock:
        keep = self.max_samples - self.samples_read
        self.samples_read += keep
        return _RawBlock(
            None if rb.labels is None else rb.labels[:keep],
            rb.dense[:keep],
            rb.cats[:keep],
            rb.line_numbers[:keep],
            rb.malformed,
            rb.nr_malformed,
            rb.nr_lines,
        )

    def __iter__(self) -> Iterator[CriteoChunk]:
        """Preprocessed chunks, one per block of text."""
        for rb in self.raw_blocks():
            if rb.line_numbers.size == 0:
                continue
            yield CriteoChunk(
                self._dense(rb.dense),
                self._sparse(rb.cats),
                None if rb.labels is None else rb.labels.astype(np.float32),
                rb.line_numbers,
            )

    def read_all(self) -> CriteoChunk:
        """Every sample in one chunk (use only on files that fit in memory)."""
        return CriteoChunk.concat(list(self))

    def chunks_of(self, size: int, drop_last: bool = False) -> Iterator[CriteoChunk]:
        """Chunks of exactly ``size`` samples (the last may be shorter unless ``drop_last``)."""
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        pending: list[CriteoChunk] = []
        have = 0
        for chunk in self:
            pending.append(chunk)
            have += len(chunk)
            if have >= size:
                merged = CriteoChunk.concat(pending)
                start = 0
                while have - start >= size:
                    yield merged.slice(start, start + size)
                    start += size
                pending = [merged.slice(start, have)] if start < have else []
                have -= start
        if have and not drop_last:
            yield CriteoChunk.concat(pending)

    def batches(self, batch_size: int, drop_last: bool = False) -> Iterator[CriteoBatch]:
        """Engine batches of ``batch_size`` samples (:class:`CriteoBatch`)."""
        import torch

        from updlrm.batch import Batch  # lazy: the engine's module

        for chunk in self.chunks_of(batch_size, drop_last):
            indices, offsets = chunk.flat_sparse()
            batch = Batch(torch.from_numpy(chunk.dense.copy()), torch.from_numpy(indices), torch.from_numpy(offsets))
            labels = None if chunk.labels is None else torch.from_numpy(chunk.labels.copy())
            yield CriteoBatch(batch, labels, chunk.line_numbers)

    def to_trace(self) -> Trace:
        """The whole file (or its first ``max_samples``) as a :class:`Trace` of 26 tables, one
        lookup per table and sample; table rows = :attr:`output_rows`."""
        sparse = [c.sparse for c in self]
        ids = np.concatenate(sparse) if sparse else np.zeros((0, NUM_SPARSE), np.int64)
        n = ids.shape[0]
        return Trace(
            np.ascontiguousarray(ids.T).reshape(-1),
            np.arange(NUM_SPARSE * n + 1, dtype=np.int64),
            n,
            list(SPARSE_NAMES),
            self.output_rows,
        )

    def report(self, limit: int = 10) -> str:
        """Summary of the last pass: lines, samples, malformed lines (first ``limit`` with reasons)."""
        lines = [
            f"{self.path}: {self.lines_read:,} lines, {self.samples_read:,} samples, "
            f"{self.malformed_count:,} malformed lines skipped"
        ]
        for m in self.malformed[:limit]:
            lines.append(f"  line {m.line}: {m.reason}")
        if self.malformed_count > min(limit, len(self.malformed)):
            lines.append(f"  ... {self.malformed_count - min(limit, len(self.malformed)):,} more")
        if self.oov_counts.any():
            lines.append(f"  ids not in the vocabulary (mapped to row 0): {int(self.oov_counts.sum()):,}")
        return "\n".join(lines)


def build_vocabulary(
    path: str | os.PathLike, max_ind_range: int | None = None, progress: bool | None = None, **reader_args
) -> CriteoVocabulary:
    """One pass over a Criteo file collecting each feature's sorted unique raw ids (after
    ``% max_ind_range``), as dlrm's preprocessing dictionaries. Malformed lines are skipped."""
    reader = CriteoReader(path, "dlrm", max_ind_range=max_ind_range or (1 << 62), progress=progress, **reader_args)
    parts: list[list[np.ndarray]] = [[] for _ in range(NUM_SPARSE)]
    for rb in reader.raw_blocks():
        ids = rb.cats % max_ind_range if max_ind_range else rb.cats
        for t in range(NUM_SPARSE):
            parts[t].append(np.unique(ids[:, t]))
            if len(parts[t]) >= 32:  # merge now and then to bound memory
                parts[t] = [np.unique(np.concatenate(parts[t]))]
    values = [np.unique(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]
    return CriteoVocabulary(values)
