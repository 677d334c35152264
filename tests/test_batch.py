"""Batch type, boundary validation (each bad input -> InvalidBatchError with a useful message) and
the Zipf-skewed random batch generator (checked against the Zipf law computed with NumPy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from updlrm import configs
from updlrm.batch import Batch, random_batch, validate_batch, zipf_ids
from updlrm.errors import InvalidBatchError

CFG = configs.get("tiny")  # tables T1..T4 with 50, 7, 120, 33 rows; n_dense 4
B = 3


def good_parts():
    """dense [3, 4], per-table ids and bag starts; bag (t=1, b=1) is empty."""
    dense = torch.arange(B * 4, dtype=torch.float32).reshape(B, 4) / 10
    ids = [
        torch.tensor([1, 2, 49, 0]),
        torch.tensor([6, 6]),
        torch.tensor([119, 0, 5]),
        torch.tensor([32, 1, 2, 3, 4]),
    ]
    offs = [torch.tensor([0, 1, 3]), torch.tensor([0, 2, 2]), torch.tensor([0, 1, 2]), torch.tensor([0, 2, 2])]
    return dense, ids, offs


def good_batch() -> Batch:
    return Batch.from_lists(*good_parts())


def check(batch, *fragments):
    with pytest.raises(InvalidBatchError) as info:
        validate_batch(batch, CFG.tables, CFG.n_dense)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


def test_layout_from_lists_and_table_views():
    batch = good_batch()
    validate_batch(batch, CFG.tables, CFG.n_dense)
    assert batch.batch_size == B and batch.nr_tables == 4 and batch.nr_lookups == 14
    assert batch.indices.tolist() == [1, 2, 49, 0, 6, 6, 119, 0, 5, 32, 1, 2, 3, 4]
    assert batch.offsets.tolist() == [0, 1, 3, 4, 6, 6, 6, 7, 8, 9, 11, 11, 14]
    ids, offs = batch.table(1)
    assert ids.tolist() == [6, 6] and offs.tolist() == [0, 2, 2]
    assert batch.lengths().tolist() == [[1, 2, 1], [2, 0, 0], [1, 1, 1], [2, 0, 3]]
    # include_last_offset style gives the same batch
    dense, idl, offl = good_parts()
    offl = [torch.cat([o, torch.tensor([len(i)])]) for i, o in zip(idl, offl)]
    other = Batch.from_lists(dense, idl, offl)
    assert torch.equal(other.indices, batch.indices) and torch.equal(other.offsets, batch.offsets)
    # torch EmbeddingBag on table(t) equals the sum of the listed rows
    w = torch.randn(120, 5)
    pooled = torch.nn.functional.embedding_bag(*batch.table(2)[:1], w, batch.table(2)[1], mode="sum")
    assert torch.allclose(pooled, torch.stack([w[119], w[0], w[5]]))


def test_int32_ids_and_numpy_inputs_are_converted():
    batch = good_batch()
    b32 = Batch(batch.dense.numpy().astype(np.float64), batch.indices.numpy().astype(np.int32), batch.offsets.to(torch.int32))
    assert b32.indices.dtype == torch.int64 and b32.offsets.dtype == torch.int64
    assert b32.dense.dtype == torch.float32
    validate_batch(b32, CFG.tables, CFG.n_dense)
    assert torch.equal(b32.indices, batch.indices)


def test_id_out_of_range_names_table_position_value_and_range():
    batch = good_batch()
    ids = batch.indices.clone()
    ids[8] = 120  # table 2 ('T3'), sample 2, first lookup of its bag
    check(Batch(batch.dense, ids, batch.offsets), "table 2 ('T3')", "id 120", "indices[8]", "sample 2", "[0, 120)")


def test_negative_id():
    batch = good_batch()
    ids = batch.indices.clone()
    ids[5] = -1  # table 1 ('T2'), sample 0, lookup 1
    check(Batch(batch.dense, ids, batch.offsets), "table 1 ('T2')", "id -1", "indices[5]", "lookup 1", "[0, 7)")


def test_many_bad_ids_are_counted():
    batch = good_batch()
    ids = batch.indices.clone()
    ids[9:14] = 1000
    check(Batch(batch.dense, ids, batch.offsets), "table 3", "4 more bad id(s)")


def test_offsets_not_starting_at_zero():
    batch = good_batch()
    off = batch.offsets.clone()
    off[0] = 1
    check(Batch(batch.dense, batch.indices, off), "offsets[0] must be 0, got 1")


def test_non_monotonic_offsets():
    batch = good_batch()
    off = batch.offsets.clone()
    off[7] = 5  # offsets[7]=5 < offsets[6]=6: table 2, sample 0
    check(Batch(batch.dense, batch.indices, off), "non-decreasing", "offsets[7] = 5 < offsets[6] = 6", "table 2")


def test_last_offset_must_match_indices():
    batch = good_batch()
    check(Batch(batch.dense, batch.indices[:-1], batch.offsets), "last offset (14)", "number of indices (13)")


def test_wrong_table_count():
    dense, ids, offs = good_parts()
    batch = Batch.from_lists(dense, ids[:3], offs[:3])
    check(batch, "expected T*B+1 = 13", "3 tables at batch size 3", "wrong table count")


def test_wrong_offsets_length():
    batch = good_batch()
    check(Batch(batch.dense, batch.indices, batch.offsets[:-2]), "offsets has 11 entries", "expected T*B+1 = 13")


def test_dense_sparse_batch_size_mismatch():
    batch = good_batch()
    check(Batch(batch.dense[:2], batch.indices, batch.offsets), "batch size mismatch", "dense has 2 rows")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_dense(bad):
    batch = good_batch()
    dense = batch.dense.clone()
    dense[2, 1] = bad
    check(Batch(dense, batch.indices, batch.offsets), "dense[2, 1]", "not finite")


def test_wrong_dense_width_and_rank():
    batch = good_batch()
    check(Batch(batch.dense[:, :3], batch.indices, batch.offsets), "3 features", "n_dense=4")
    check(Batch(batch.dense.reshape(-1), batch.indices, batch.offsets), "2-D")


def test_wrong_dtypes():
    batch = good_batch()
    check(Batch(batch.dense, batch.indices.double(), batch.offsets), "indices must be integers", "float64")
    check(Batch(batch.dense, batch.indices, batch.offsets.float()), "offsets must be integers")
    check(Batch(batch.dense.to(torch.int64), batch.indices, batch.offsets), "dense must be floating point")
    check(Batch(batch.dense, batch.indices.reshape(2, 7), batch.offsets), "indices must be 1-D")


def test_empty_batch_and_not_a_batch():
    check(Batch(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)), "empty")
    with pytest.raises(InvalidBatchError, match="expected an updlrm.Batch"):
        validate_batch({"dense": 1}, CFG.tables, CFG.n_dense)


def test_from_lists_errors_name_the_table():
    dense, ids, offs = good_parts()
    offs[2] = torch.tensor([0, 1])
    with pytest.raises(InvalidBatchError, match="table 2: offsets has 2 entries; expected B=3"):
        Batch.from_lists(dense, ids, offs)
    with pytest.raises(InvalidBatchError, match="4 index tensors but 3 offset tensors"):
        Batch.from_lists(dense, ids, offs[:3])


def test_validation_does_not_modify_the_batch():
    batch = good_batch()
    ids = batch.indices.clone()
    ids[0] = -5
    bad = Batch(batch.dense, ids, batch.offsets)
    before = (bad.dense.clone(), bad.indices.clone(), bad.offsets.clone())
    check(bad, "id -5")
    assert torch.equal(bad.dense, before[0]) and torch.equal(bad.indices, before[1])
    assert torch.equal(bad.offsets, before[2])


# -- random batches ------------------------------------------------------------------------------
def test_random_batch_shape_range_and_reproducibility():
    cfg = configs.get("kaggle", row_scale=1e-3)
    a = random_batch(cfg, batch_size=64, pooling=20, seed=7)
    b = random_batch(cfg, batch_size=64, pooling=20, seed=7)
    c = random_batch(cfg, batch_size=64, pooling=20, seed=8)
    validate_batch(a, cfg.tables, cfg.n_dense)
    assert a.dense.shape == (64, 13) and a.nr_tables == 26 and a.nr_lookups == 26 * 64 * 20
    assert bool((a.lengths() == 20).all())
    assert torch.equal(a.indices, b.indices) and torch.equal(a.dense, b.dense)
    assert not torch.equal(a.indices, c.indices)


def test_zipf_frequencies_follow_the_law():
    rows, alpha, n = 1000, 1.05, 200_000
    ids = zipf_ids(rows, n, alpha, np.random.default_rng(0), perm_seed=3)
    assert ids.min() >= 0 and ids.max() < rows
    counts = np.sort(np.bincount(ids, minlength=rows))[::-1]  # by rank, whatever the permutation
    p = np.arange(1, rows + 1, dtype=np.float64) ** -alpha
    p /= p.sum()
    # top ranks: empirical share within 4 standard deviations of the Zipf law
    for k in range(5):
        sd = np.sqrt(n * p[k] * (1 - p[k]))
        assert abs(counts[k] - n * p[k]) < 4 * sd, (k, counts[k], n * p[k])
    # the hottest 1% of rows take the share the law predicts (about 39% here)
    np.testing.assert_allclose(counts[:10].sum() / n, p[:10].sum(), atol=0.01)
    # the same permutation seed keeps the same hot row; another seed moves it
    again = zipf_ids(rows, 10_000, alpha, np.random.default_rng(1), perm_seed=3)
    other = zipf_ids(rows, 10_000, alpha, np.random.default_rng(1), perm_seed=4)
    assert np.bincount(again).argmax() == np.bincount(ids).argmax()
    assert np.bincount(other, minlength=rows).argmax() != np.bincount(ids).argmax()


def test_zipf_large_table_approximation_is_skewed_and_in_range():
    rows = 10_000_000  # above the exact-CDF limit
    ids = zipf_ids(rows, 100_000, 1.05, np.random.default_rng(0))
    assert ids.min() >= 0 and ids.max() < rows
    counts = np.sort(np.bincount(ids))[::-1]
    p1 = 1.0 / np.sum(np.arange(1, rows + 1, dtype=np.float64) ** -1.05)
    assert abs(counts[0] / 100_000 - p1) < 0.3 * p1
    uniform = zipf_ids(rows, 1000, 0.0, np.random.default_rng(0))
    assert uniform.max() < rows
