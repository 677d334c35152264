"""Criteo reader: parsed tensors vs a plain-Python reference under both conventions, malformed
lines reported with their numbers, gzip, block boundaries, vocabularies, batches, bad arguments."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest

from updlrm.data import CriteoReader, build_vocabulary
from updlrm.data.criteo import NUM_DENSE, NUM_SPARSE

ROWS = [97 + 13 * t for t in range(NUM_SPARSE)]


def _line(label, dense, cats) -> str:
    fields = ([] if label is None else [str(label)]) + [str(d) for d in dense] + list(cats)
    return "\t".join(fields)


def _good_lines():
    """Hand-made samples: empty fields, negative ints, upper/lower-case and short/long hex ids."""
    cats_a = ["68fd1e64", "", "0000000a", "FFFFFFFF", "1", "abcdef012345"] + [f"{t:08x}" for t in range(20)]
    cats_b = [""] * NUM_SPARSE
    cats_c = [f"{(t * 2654435761) & 0xFFFFFFFF:08x}" for t in range(NUM_SPARSE)]
    return [
        _line(1, [5, "", -2, 0, 12, "", "", "", "", "", "", "", 7], cats_a),
        _line(0, [""] * NUM_DENSE, cats_b),
        _line(0, [123456789012, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, -1], cats_c),
    ]


def _reference(lines, convention, rows=None, max_ind_range=None):
    """Plain-Python preprocessing of good lines (the trusted reference)."""
    labels, dense, sparse = [], [], []
    for line in lines:
        f = line.split("\t")
        labels.append(float(f[0]))
        x = [int(v) if v else 0 for v in f[1 : 1 + NUM_DENSE]]
        if convention == "dlrm":
            dense.append([math.log(max(v, 0) + 1) for v in x])
        else:
            dense.append([math.log(max(v, -2) + 3) for v in x])
        raw = [int(v or "0", 16) for v in f[1 + NUM_DENSE :]]
        if convention == "dlrm":
            sparse.append([r % max_ind_range for r in raw])
        else:
            sparse.append([r % rows[t] for t, r in enumerate(raw)])
    return np.array(labels, np.float32), np.array(dense, np.float64), np.array(sparse, np.int64)


@pytest.fixture
def criteo_file(tmp_path):
    good = _good_lines()
    bad_fields = "1\t2\t3"  # 3 fields
    bad_dense = _line(1, ["x7"] + [0] * 12, ["00000001"] * NUM_SPARSE)
    bad_hex = _line(0, [0] * NUM_DENSE, ["zz000001"] + ["00000001"] * 25)
    # Lines: 1 good, 2 bad fields, 3 good, 4 bad dense, 5 good, 6 bad hex
    lines = [good[0], bad_fields, good[1], bad_dense, good[2], bad_hex]
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, good


@pytest.mark.parametrize("convention", ["dlrm", "torchrec"])
def test_expected_tensors_and_malformed_lines(criteo_file, convention):
    path, good = criteo_file
    kw = dict(max_ind_range=1000) if convention == "dlrm" else dict(table_rows=ROWS)
    reader = CriteoReader(path, convention, progress=False, **kw)
    chunk = reader.read_all()
    labels, dense, sparse = _reference(good, convention, rows=ROWS, max_ind_range=1000)
    np.testing.assert_array_equal(chunk.labels, labels)
    np.testing.assert_allclose(chunk.dense, dense, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(chunk.sparse, sparse)
    assert chunk.dense.dtype == np.float32 and chunk.sparse.dtype == np.int64
    np.testing.assert_array_equal(chunk.line_numbers, [1, 3, 5])
    assert reader.malformed_count == 3
    assert [m.line for m in reader.malformed] == [2, 4, 6]
    assert "3 fields, expected 40" in reader.malformed[0].reason
    assert "I1" in reader.malformed[1].reason and "x7" in reader.malformed[1].reason
    assert "C1" in reader.malformed[2].reason and "zz000001" in reader.malformed[2].reason
    report = reader.report()
    assert "3 malformed" in report and "line 4" in report


def test_random_lines_match_python_reference(tmp_path):
    rng = np.random.default_rng(7)
    lines = []
    for _ in range(1500):
        dense = []
        for _ in range(NUM_DENSE):
            kind = rng.integers(0, 4)
            if kind == 0:
                dense.append("")
            else:
                mag = int(rng.integers(0, 10 ** int(rng.integers(1, 16))))
                dense.append(str(-mag if kind == 1 else mag))
        cats = []
        for _ in range(NUM_SPARSE):
            n = int(rng.integers(0, 13))
            s = "".join(rng.choice(list("0123456789abcdefABCDEF"), size=n))
            cats.append(s)
        lines.append(_line(int(rng.integers(0, 2)), dense, cats))
    path = tmp_path / "rand.txt"
    path.write_text("\n".join(lines))  # no trailing newline
    reader = CriteoReader(path, "torchrec", table_rows=ROWS, block_bytes=4096, progress=False)
    chunk = reader.read_all()
    assert reader.malformed_count == 0
    # Raw values (before the log) checked exactly through torchrec's x+3 with x >= -2 clamp:
    raw_dense = np.array([[int(v) if v else 0 for v in line.split("\t")[1:14]] for line in lines], np.float64)
    np.testing.assert_allclose(chunk.dense, np.log(np.maximum(raw_dense, -2) + 3), rtol=1e-6)
    _, _, sparse = _reference(lines, "torchrec", rows=ROWS)
    np.testing.assert_array_equal(chunk.sparse, sparse)
    np.testing.assert_array_equal(chunk.line_numbers, np.arange(1, len(lines) + 1))


def test_gzip_crlf_and_block_boundaries_give_the_same_result(tmp_path, criteo_file):
    path, good = criteo_file
    ref = CriteoReader(path, "torchrec", table_rows=ROWS, progress=False).read_all()
    gz = tmp_path / "train.txt.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    for p, block in [(gz, 4 << 20), (path, 1024), (crlf, 1500)]:
        r = CriteoReader(p, "torchrec", table_rows=ROWS, block_bytes=block, progress=False)
        got = r.read_all()
        np.testing.assert_array_equal(got.sparse, ref.sparse)
        np.testing.assert_array_equal(got.dense, ref.dense)
        np.testing.assert_array_equal(got.line_numbers, ref.line_numbers)
        assert [m.line for m in r.malformed] == [2, 4, 6]


def test_unlabelled_file_is_detected(tmp_path):
    good = _good_lines()
    path = tmp_path / "test.txt"
    path.write_text("\n".join(line.split("\t", 1)[1] for line in good) + "\n")
    reader = CriteoReader(path, "dlrm", max_ind_range=50, progress=False)
    chunk = reader.read_all()
    assert chunk.labels is None and reader.has_label is False
    _, dense, sparse = _reference(good, "dlrm", max_ind_range=50)
    np.testing.assert_allclose(chunk.dense, dense, rtol=1e-6)
    np.testing.assert_array_equal(chunk.sparse, sparse)


def test_dlrm_vocabulary_matches_numpy_unique(criteo_file, tmp_path):
    path, good = criteo_file
    vocab = build_vocabulary(path, progress=False)
    raw = np.array([[int(v or "0", 16) for v in line.split("\t")[14:]] for line in good], np.int64)
    expected = np.stack([np.unique(raw[:, t], return_inverse=True)[1] for t in range(NUM_SPARSE)], axis=1)
    chunk = CriteoReader(path, "dlrm", vocabulary=vocab, progress=False).read_all()
    np.testing.assert_array_equal(chunk.sparse, expected)
    assert vocab.sizes == [max(len(np.unique(raw[:, t])), 1) for t in range(NUM_SPARSE)]
    vocab.save(tmp_path / "vocab.npz")
    again = type(vocab).load(tmp_path / "vocab.npz")
    assert all(np.array_equal(a, b) for a, b in zip(again.values, vocab.values))


def test_batches_and_trace_cover_every_sample_once(tmp_path):
    rng = np.random.default_rng(1)
    lines = [
        _line(int(rng.integers(0, 2)), rng.integers(0, 100, NUM_DENSE), [f"{v:08x}" for v in rng.integers(0, 2**32, NUM_SPARSE)])
        for _ in range(103)
    ]
    path = tmp_path / "day_0"
    path.write_text("\n".join(lines) + "\n")
    reader = CriteoReader(path, "torchrec", table_rows=ROWS, block_bytes=2048, progress=False)
    full = reader.read_all()
    seen = []
    for cb in reader.batches(16):
        b = cb.batch
        assert b.batch_size == len(cb.line_numbers) and b.nr_tables == NUM_SPARSE
        rows = cb.line_numbers - 1
        for t in (0, 7, 25):
            idx, off = b.table(t)
            np.testing.assert_array_equal(idx.numpy(), full.sparse[rows, t])
            assert off.numel() in (b.batch_size, b.batch_size + 1)
        np.testing.assert_array_equal(b.dense.numpy(), full.dense[rows])
        seen.append(cb.line_numbers)
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(1, 104))
    assert [len(s) for s in seen] == [16] * 6 + [7]
    trace = reader.to_trace()
    assert trace.batch_size == 103 and trace.nr_tables == NUM_SPARSE and trace.table_rows == ROWS
    np.testing.assert_array_equal(trace.table(3)[0], full.sparse[:, 3])


def test_max_samples_stops_early(criteo_file):
    path, _ = criteo_file
    reader = CriteoReader(path, "torchrec", table_rows=ROWS, max_samples=2, progress=False)
    assert len(reader.read_all()) == 2


def test_bad_arguments_are_named(tmp_path, criteo_file):
    path, _ = criteo_file
    with pytest.raises(ValueError, match="table_rows"):
        CriteoReader(path, "torchrec")
    with pytest.raises(ValueError, match="max_ind_range"):
        CriteoReader(path, "dlrm")
    with pytest.raises(ValueError, match="convention"):
        CriteoReader(path, "spark", table_rows=ROWS)
    with pytest.raises(ValueError, match=r"table_rows\[2\]"):
        CriteoReader(path, "torchrec", table_rows=[5, 5, 0] + [5] * 23)
    with pytest.raises(FileNotFoundError):
        CriteoReader(tmp_path / "missing.txt", "torchrec", table_rows=ROWS)
    odd = tmp_path / "odd.txt"
    odd.write_text("a\tb\tc\n")
    with pytest.raises(ValueError, match="line 1 has 3"):
        CriteoReader(odd, "torchrec", table_rows=ROWS, progress=False).read_all()


def test_read_ahead_thread_keeps_order_counts_and_reasons(tmp_path):
    rng = np.random.default_rng(5)
    lines = []
    for i in range(600):
        if i % 97 == 13:
            lines.append("broken\tline")
        else:
            lines.append(_line(i % 2, rng.integers(-5, 50, NUM_DENSE), [f"{v:x}" for v in rng.integers(0, 2**40, NUM_SPARSE)]))
    path = tmp_path / "p.txt"
    path.write_text("\n".join(lines) + "\n")
    results = []
    for read_ahead in (False, True):
        r = CriteoReader(path, "dlrm", max_ind_range=10_000, block_bytes=1024, read_ahead=read_ahead, progress=False)
        chunk = r.read_all()
        results.append((chunk, r.malformed_count, [m.line for m in r.malformed]))
    (a, na, la), (b, nb, lb) = results
    np.testing.assert_array_equal(a.sparse, b.sparse)
    np.testing.assert_array_equal(a.line_numbers, b.line_numbers)
    expected_bad = [i + 1 for i in range(600) if i % 97 == 13]
    assert na == nb == len(expected_bad) and la == lb == expected_bad
    assert len(a) == 600 - len(expected_bad)
    few = CriteoReader(path, "dlrm", max_ind_range=10, keep_malformed=2, block_bytes=1024, read_ahead=True, progress=False)
    assert len(few.read_all()) == 600 - len(expected_bad)
    assert few.malformed_count == len(expected_bad) and [m.line for m in few.malformed] == expected_bad[:2]
    limited = CriteoReader(path, "dlrm", max_ind_range=10, max_samples=250, block_bytes=1024, read_ahead=True, progress=False)
    got = limited.read_all()
    assert len(got) == 250 and limited.samples_read == 250
    np.testing.assert_array_equal(got.line_numbers, a.line_numbers[:250])


def test_progress_bar_and_from_criteo_cli(criteo_file, tmp_path, capsys):
    from updlrm.cli import main
    from updlrm.data import load_trace

    path, good = criteo_file
    CriteoReader(path, "torchrec", table_rows=ROWS, progress=True).read_all()
    assert path.name in capsys.readouterr().err  # tqdm bar labelled with the file
    out = tmp_path / "criteo_trace.pt"
    rc = main(["trace", "from-criteo", str(path), str(out), "--table-rows", ",".join(map(str, ROWS)), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "3 malformed" in text and "line 2:" in text
    tr = load_trace(out)
    _, _, sparse = _reference(good, "torchrec", rows=ROWS)
    assert tr.batch_size == 3 and tr.table_rows == ROWS
    np.testing.assert_array_equal(np.stack([tr.table(t)[0] for t in range(NUM_SPARSE)], axis=1), sparse)


def test_long_fields_and_limits(tmp_path):
    dense_ok = [1234567890123456, -12345678901234567, 123456789012345678, 99999999, -100000000, 0, 7, 8, 9, 10, 11, 12, 13]
    cats_ok = ["123456789abcdef", "FFFFFFFFF", "0123456789", "a"] + ["00000001"] * 22
    good = _line(1, dense_ok, cats_ok)
    too_long_dec = _line(0, [1234567890123456789] + [0] * 12, ["1"] * NUM_SPARSE)
    too_long_hex = _line(0, [0] * NUM_DENSE, ["1234567890abcdef"] + ["1"] * 25)
    path = tmp_path / "long.txt"
    path.write_text("\n".join([good, too_long_dec, too_long_hex]) + "\n")
    reader = CriteoReader(path, "dlrm", max_ind_range=1 << 62, progress=False)
    chunk = reader.read_all()
    assert len(chunk) == 1 and reader.malformed_count == 2
    assert [m.line for m in reader.malformed] == [2, 3]
    np.testing.assert_allclose(chunk.dense[0], np.log(np.maximum(np.array(dense_ok, np.float64), 0) + 1), rtol=1e-6)
    np.testing.assert_array_equal(chunk.sparse[0, :4], [int(c, 16) for c in cats_ok[:4]])
    raw = next(iter(reader.raw_blocks()))  # exact integers before the log
    np.testing.assert_array_equal(raw.dense[0], dense_ok)
