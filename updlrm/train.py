"""Train a small DLRM on a seeded synthetic click dataset whose labels come from a hidden teacher.

The dataset has planted structure, so that AUC and log loss mean something:

* ids: Zipf(``alpha``) over a fixed random permutation of each table's rows (FBGEMM-style, as
  :func:`updlrm.batch.random_batch` draws them), ``pooling`` ids per bag; dense features
  ``log(1 + Exp(10))``;
* labels: ``Bernoulli(sigmoid(temperature * standardized teacher logit + bias))`` where the
  teacher is another DLRM of the same shape with its own seed and N(0, 1/d) embeddings; the
  standardization (mean, std of the teacher's logits) is measured once on a calibration sample,
  and ``bias`` sets the click rate (default ~25%).

A student DLRM (the project's :class:`updlrm.model.DLRM`, its own seed) is trained with Adam on
binary cross-entropy, one pass over the training samples. Everything is seeded: the same
arguments give the same dataset, labels and trained weights (on one thread).

    data = TeacherClicks(configs.get("kaggle", row_scale=1e-3), pooling=1, seed=0)
    train, test = data.sample(200_000, seed=1), data.sample(20_000, seed=2)
    model = train_dlrm(data.config, train, batch_size=1024)
    auc, ll = auc_score(test.labels, predict(model, test)), log_loss(test.labels, predict(model, test))
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from updlrm.batch import Batch, random_batch
from updlrm.configs import DLRMConfig
from updlrm.model import DLRM


@dataclass
class ClickData:
    """``n`` samples with a fixed pooling: dense [n, n_dense] float32, ids [T, n * pooling] int64
    (sample i of table t: ``ids[t, i*pooling : (i+1)*pooling]``), labels [n] float32 (0/1) and the
    teacher's click probabilities [n] float64 (the best any model could predict)."""

    dense: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    teacher_probs: np.ndarray
    pooling: int

    @property
    def n(self) -> int:
        return int(self.labels.size)

    def batch(self, lo: int, hi: int) -> Batch:
        """Samples ``[lo, hi)`` as a :class:`Batch` (table-major ids, offsets [T*B+1])."""
        p, b = self.pooling, hi - lo
        ids = self.ids[:, lo * p : hi * p].reshape(-1)
        offsets = np.arange(self.ids.shape[0] * b + 1, dtype=np.int64) * p
        return Batch(torch.from_numpy(self.dense[lo:hi]), torch.from_numpy(np.ascontiguousarray(ids)),
                     torch.from_numpy(offsets))

    def batches(self, batch_size: int):
        """(lo, hi, Batch) over all samples in order."""
        for lo in range(0, self.n, batch_size):
            hi = min(self.n, lo + batch_size)
            yield lo, hi, self.batch(lo, hi)

    def access_counts(self, rows: list[int]) -> list[np.ndarray]:
        """Per table int64 [rows_t]: lookups of each row in these samples (an access profile)."""
        return [np.bincount(self.ids[t], minlength=r).astype(np.int64) for t, r in enumerate(rows)]


def logits(model: DLRM, batch: Batch) -> torch.Tensor:
    """The click logit [B] (the top MLP without its final sigmoid)."""
    z = model.interact(model.bottom(batch.dense), model.embed(batch))
    return model.top_mlp[:-1](z).squeeze(1)


class TeacherClicks:
    """The hidden teacher and the sampler of labelled data (see the module docstring)."""

    def __init__(self, config: DLRMConfig, pooling: int = 1, alpha: float = 1.05, seed: int = 0,
                 temperature: float = 2.5, click_rate: float = 0.25, calibration_samples: int = 8192):
        self.config = config
        self.pooling = int(pooling)
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.temperature = float(temperature)
        self.bias = math.log(click_rate / (1.0 - click_rate))
        self.perm_seed = 1_000_003 + self.seed  # the hot rows, shared by every sample drawn
        teacher_cfg = dataclasses.replace(config, seed=10_000 + self.seed)
        self.teacher = DLRM(teacher_cfg).eval()
        gen = torch.Generator().manual_seed(20_000 + self.seed)
        with torch.no_grad():
            for bag in self.teacher.embeddings:
                bag.weight.normal_(0.0, 1.0 / math.sqrt(config.embedding_dim), generator=gen)
        cal = self._draw(calibration_samples, seed=30_000 + self.seed)
        with torch.no_grad():
            z = logits(self.teacher, cal).double()
        self.logit_mean, self.logit_std = float(z.mean()), float(z.std().clamp_min(1e-12))

    def _draw(self, n: int, seed: int) -> Batch:
        return random_batch(self.config, n, pooling=self.pooling, alpha=self.alpha, seed=seed, perm_seed=self.perm_seed)

    def sample(self, n: int, seed: int, chunk: int = 8192) -> ClickData:
        """``n`` labelled samples drawn with ``seed`` (different seeds: disjoint draws, same hot rows)."""
        T, p = self.config.nr_tables, self.pooling
        dense = np.empty((n, self.config.n_dense), dtype=np.float32)
        ids = np.empty((T, n * p), dtype=np.int64)
        probs = np.empty(n, dtype=np.float64)
        for k, lo in enumerate(range(0, n, chunk)):
            hi = min(n, lo + chunk)
            b = self._draw(hi - lo, seed=seed * 1_000 + k)
            dense[lo:hi] = b.dense.numpy()
            ids[:, lo * p : hi * p] = b.indices.numpy().reshape(T, (hi - lo) * p)
            with torch.no_grad():
                z = (logits(self.teacher, b).double() - self.logit_mean) / self.logit_std
            probs[lo:hi] = torch.sigmoid(self.temperature * z + self.bias).numpy()
        labels = (np.random.default_rng(seed + 40_000).random(n) < probs).astype(np.float32)
        return ClickData(dense, ids, labels, probs, p)


def train_dlrm(config: DLRMConfig, data: ClickData, batch_size: int = 1024, epochs: int = 1, lr: float = 3e-3,
               seed: int = 0, progress: Optional[Callable[[int, int, float], None]] = None) -> DLRM:
    """A student DLRM (seed ``seed``) trained with Adam on ``data``'s labels (binary cross-entropy).

    ``progress(step, steps, loss)`` is called after every step when given. Returns the model in
    eval mode."""
    torch.manual_seed(seed)
    model = DLRM(dataclasses.replace(config, seed=seed))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    steps = epochs * -(-data.n // batch_size)
    step = 0
    order_rng = np.random.default_rng(seed)
    for _ in range(epochs):
        # shuffle by blocks of batch_size samples (cheap, keeps batches contiguous in memory)
        for blk in order_rng.permutation(-(-data.n // batch_size)):
            lo = int(blk) * batch_size
            hi = min(data.n, lo + batch_size)
            b = data.batch(lo, hi)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(logits(model, b), torch.from_numpy(data.labels[lo:hi]))
            loss.backward()
            opt.step()
            step += 1
            if progress is not None:
                progress(step, steps, loss.item())
    return model.eval()


@torch.no_grad()
def predict(model: DLRM, data: ClickData, batch_size: int = 4096) -> np.ndarray:
    """Click probabilities [n] float64 of ``model`` (all-CPU forward)."""
    out = np.empty(data.n, dtype=np.float64)
    for lo, hi, b in data.batches(batch_size):
        out[lo:hi] = model(b).double().numpy()
    return out


def auc_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores sharing their mean rank)."""
    y = np.asarray(labels) > 0.5
    p = np.asarray(probs, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    _, inv, counts = np.unique(p, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranks = (first + (counts + 1) / 2.0)[inv]  # 1-based mean rank of each tie group
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy (natural log) with probabilities clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))
