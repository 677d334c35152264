"""Trace type and dlrm_datasets files: exact round trip, files written by hand in the published
layout, batches covering the trace exactly once, table subsets, validation errors, engine batches."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
import torch

from updlrm.data import TableWorkload, Trace, load_trace, save_trace, synthetic_trace


def _random_bags(T, B, rows, seed=0, max_len=6):
    """Python lists of bags [t][b] -> list of ids (the reference representation)."""
    rng = np.random.default_rng(seed)
    return [[list(rng.integers(0, rows[t], size=int(rng.integers(0, max_len + 1)))) for _ in range(B)] for t in range(T)]


def _flatten(bags):
    indices, offsets = [], [0]
    for table in bags:
        for bag in table:
            indices.extend(bag)
            offsets.append(len(indices))
    return np.array(indices, np.int64), np.array(offsets, np.int64)


def _bags_of(trace: Trace):
    out = []
    for t in range(trace.nr_tables):
        idx, off = trace.table(t)
        out.append([list(idx[off[b] : off[b + 1]]) for b in range(trace.batch_size)])
    return out


def test_layout_matches_the_docstring_example():
    tr = Trace([4, 1, 7, 0, 2, 2, 5], [0, 2, 2, 3, 4, 6, 7], batch_size=3)
    assert tr.nr_tables == 2 and tr.table_rows == [8, 6]
    np.testing.assert_array_equal(tr.lengths(), [[2, 0, 1], [1, 2, 1]])
    idx, off = tr.table(1)
    np.testing.assert_array_equal(idx, [0, 2, 2, 5])
    np.testing.assert_array_equal(off, [0, 1, 3, 4])


@pytest.mark.parametrize("name", ["trace.pt", "trace.pt.gz"])
def test_round_trip_is_exact(tmp_path, name):
    tr = synthetic_trace(
        [TableWorkload(rows=1000, alpha=1.1, pooling="uniform", pooling_min=0, pooling_max=9),
         TableWorkload(rows=77, alpha=0.0, pooling="fixed", pooling_factor=3, name="small")],
        samples=300, seed=5,
    )
    path = save_trace(tr, tmp_path / name)
    back = load_trace(path)
    assert back == tr
    assert back.table_names == ["t0", "small"] and back.table_rows == [1000, 77]
    # The file itself is exactly the published tuple: (indices, offsets [T*B+1], lengths [T, B]).
    raw = path.read_bytes()
    if name.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    indices, offsets, lengths = torch.load(io.BytesIO(raw), weights_only=True)
    assert offsets.shape == (2 * 300 + 1,) and lengths.shape == (2, 300)
    assert torch.equal(offsets[1:] - offsets[:-1], lengths.reshape(-1))
    np.testing.assert_array_equal(indices.numpy(), tr.indices)


def test_reads_a_file_written_in_the_dlrm_datasets_layout(tmp_path):
    T, B, rows = 3, 40, [50, 9, 1000]
    bags = _random_bags(T, B, rows, seed=2)
    indices, offsets = _flatten(bags)
    lengths = torch.tensor([[len(b) for b in table] for table in bags])
    path = tmp_path / "fbgemm_t3_bs40_0.pt.gz"
    buf = io.BytesIO()
    # int32 indices as some producers write them; no side file.
    torch.save((torch.tensor(indices, dtype=torch.int32), torch.tensor(offsets), lengths), buf)
    path.write_bytes(gzip.compress(buf.getvalue()))
    tr = load_trace(path)
    assert tr.nr_tables == T and tr.batch_size == B
    assert _bags_of(tr) == bags
    assert tr.table_rows == [max([max(b, default=-1) for b in table]) + 1 for table in bags]
    sub = load_trace(path, tables=[2, 0], table_rows=[50, 9, 1000])
    assert _bags_of(sub) == [bags[2], bags[0]] and sub.table_rows == [1000, 50]


def test_batches_cover_the_trace_exactly_once():
    T, B, rows = 4, 103, [30, 5, 200, 1]
    bags = _random_bags(T, B, rows, seed=3)
    tr = Trace(*_flatten(bags), batch_size=B, table_rows=rows)
    for size in (1, 10, 103, 500):
        parts = list(tr.batches(size))
        assert sum(p.batch_size for p in parts) == B
        assert sum(p.nr_lookups for p in parts) == tr.nr_lookups
        start = 0
        for p in parts:
            assert p.batch_size == min(size, B - start)
            assert _bags_of(p) == [table[start : start + p.batch_size] for table in bags]
            start += p.batch_size
        assert Trace.concat(parts) == tr
    assert [p.batch_size for p in tr.batches(10, drop_last=True)] == [10] * 10


def test_select_by_position_and_name():
    bags = _random_bags(3, 7, [10, 20, 30], seed=4)
    tr = Trace(*_flatten(bags), batch_size=7, table_names=["a", "b", "c"], table_rows=[10, 20, 30])
    sub = tr.select(["c", 0])
    assert sub.table_names == ["c", "a"] and sub.table_rows == [30, 10]
    assert _bags_of(sub) == [bags[2], bags[0]]
    with pytest.raises(ValueError, match="unknown table 'z'"):
        tr.select(["z"])
    with pytest.raises(ValueError, match="table 5 is out of range"):
        tr.select([5])


def test_invalid_traces_are_rejected_with_position():
    with pytest.raises(ValueError, match="T\\*B \\+ 1"):
        Trace([1, 2], [0, 1, 2], batch_size=3)
    with pytest.raises(ValueError, match="decrease at position 2"):
        Trace([1, 2, 3], [0, 2, 1, 3], batch_size=3)
    with pytest.raises(ValueError, match="position 1 \\(table 0\\) is -4"):
        Trace([1, -4], [0, 1, 2], batch_size=2)
    with pytest.raises(ValueError, match="table 2 \\(t2\\): index 9 at position 2 is out of range \\[0, 5\\)"):
        Trace([0, 1, 9], [0, 1, 2, 3], batch_size=1, table_rows=[4, 4, 5])
    with pytest.raises(ValueError, match="offsets\\[-1\\]"):
        Trace([0, 1, 2], [0, 1, 2], batch_size=2)


def test_file_inconsistencies_are_named(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save((torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]), torch.tensor([[1, 1]])), path)
    with pytest.raises(ValueError, match="lengths disagree with offsets at bag 1"):
        load_trace(path)
    torch.save({"not": "a trace"}, path)
    with pytest.raises(ValueError):
        load_trace(path)
    with pytest.raises(FileNotFoundError):
        load_trace(tmp_path / "missing.pt")


def test_to_batch_feeds_embedding_bag_like_the_reference():
    from updlrm.batch import Batch

    rows = [40, 15]
    tr = synthetic_trace([TableWorkload(rows=r, alpha=1.0, pooling="uniform", pooling_min=0, pooling_max=5) for r in rows], 64, seed=1)
    batch = tr.to_batch(n_dense=13)
    assert isinstance(batch, Batch) and batch.batch_size == 64 and tuple(batch.dense.shape) == (64, 13)
    gen = torch.Generator().manual_seed(0)
    for t, r in enumerate(rows):
        w = torch.randn(r, 4, generator=gen)
        ref_bag = torch.nn.EmbeddingBag.from_pretrained(w, mode="sum")
        idx, off = tr.table(t)
        ref = ref_bag(torch.from_numpy(idx.copy()), torch.from_numpy(off[:-1].copy()))
        b_idx, b_off = batch.table(t)
        got = ref_bag(b_idx, b_off[: batch.batch_size])
        torch.testing.assert_close(got, ref)
    back = Trace.from_batch(batch, table_rows=rows)
    assert back == tr


def test_partitioner_reads_a_trace_as_its_access_profile():
    from updlrm.data import access_counts
    from updlrm.partition import TableSpec
    from updlrm.partition.profile import as_trace

    tr = synthetic_trace(TableWorkload(rows=300, alpha=1.1, pooling="uniform", pooling_min=0, pooling_max=6), 50,
                         seed=2, nr_tables=3)
    arrays = as_trace(tr)
    assert arrays.nr_tables == 3 and arrays.samples == 50
    np.testing.assert_array_equal(arrays.indices, tr.indices)
    ref = np.bincount(tr.indices[tr.offsets[50] : tr.offsets[100]], minlength=300)
    np.testing.assert_array_equal(access_counts(tr, 1), ref)
    assert [TableSpec(n, r, 16).rows for n, r in zip(tr.table_names, tr.table_rows)] == [300] * 3
