"""The accuracy study's pieces (updlrm.train): metrics against brute-force / torch references, a
seeded teacher dataset, and a short training run that learns the planted structure."""

from __future__ import annotations

import numpy as np
import torch

from updlrm import configs
from updlrm.model import DLRM
from updlrm.train import TeacherClicks, auc_score, log_loss, predict, train_dlrm


def test_auc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    p = np.round(rng.random(300), 1)  # many ties
    pos, neg = p[y], p[~y]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert abs(auc_score(y.astype(np.float32), p) - brute) < 1e-12
    assert auc_score(y, y.astype(float)) == 1.0


def test_log_loss_matches_torch():
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.4).astype(np.float32)
    p = rng.uniform(0.01, 0.99, 500)
    ref = torch.nn.functional.binary_cross_entropy(torch.from_numpy(p), torch.from_numpy(y).double()).item()
    assert abs(log_loss(y, p) - ref) < 1e-12


def test_teacher_data_is_seeded_and_labelled_by_the_teacher():
    cfg = configs.get("tiny")
    a = TeacherClicks(cfg, pooling=2, seed=3).sample(3000, seed=1)
    b = TeacherClicks(cfg, pooling=2, seed=3).sample(3000, seed=1)
    c = TeacherClicks(cfg, pooling=2, seed=3).sample(3000, seed=2)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert not np.array_equal(a.ids, c.ids)
    assert a.ids.shape == (cfg.nr_tables, 3000 * 2)
    assert abs(a.labels.mean() - a.teacher_probs.mean()) < 0.03
    assert auc_score(a.labels, a.teacher_probs) > 0.75  # the planted structure is learnable
    batch = a.batch(10, 20)
    assert batch.batch_size == 10 and batch.indices.numel() == cfg.nr_tables * 10 * 2
    assert torch.equal(batch.table(1)[0], torch.from_numpy(a.ids[1, 20:40]))


def test_a_short_training_run_learns_the_teacher():
    torch.set_num_threads(1)
    cfg = configs.get("tiny")
    data = TeacherClicks(cfg, pooling=1, seed=0)
    train, test = data.sample(20_000, seed=1), data.sample(4000, seed=2)
    untrained = auc_score(test.labels, predict(DLRM(cfg), test))
    model = train_dlrm(cfg, train, batch_size=256, epochs=1, lr=3e-3)
    auc = auc_score(test.labels, predict(model, test))
    assert auc > 0.65 and auc > untrained + 0.1
    assert log_loss(test.labels, predict(model, test)) < log_loss(test.labels, np.full(test.n, 0.5))
