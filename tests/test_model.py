"""DLRM model and configs: forward vs an independent float64 NumPy forward, widths of the standard
configs, seeded initialisation, row scaling, and the probability error bound."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from updlrm import configs
from updlrm.batch import random_batch
from updlrm.configs import DLRMConfig
from updlrm.model import DLRM
from updlrm.partition import TableSpec


# -- an independent reference: NumPy, float64, explicit loops over bags and feature pairs --------
def np_mlp(h: np.ndarray, seq: nn.Sequential) -> np.ndarray:
    for layer in seq:
        if isinstance(layer, nn.Linear):
            h = h @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
        elif isinstance(layer, nn.ReLU):
            h = np.maximum(h, 0.0)
        elif isinstance(layer, nn.Sigmoid):
            h = 1.0 / (1.0 + np.exp(-h))
        else:
            raise AssertionError(f"unexpected layer {layer}")
    return h


def np_pooled(model: DLRM, batch) -> np.ndarray:
    b, t_count = batch.batch_size, batch.nr_tables
    ids, off = batch.indices.numpy(), batch.offsets.numpy()
    out = np.zeros((b, t_count, model.config.embedding_dim))
    for t in range(t_count):
        w = model.embeddings[t].weight.detach().double().numpy()
        for s in range(b):
            bag = ids[off[t * b + s] : off[t * b + s + 1]]
            out[s, t] = w[bag].sum(axis=0)
    return out


def np_interaction(x: np.ndarray, pooled: np.ndarray, itself: bool) -> np.ndarray:
    feats = np.concatenate([x[:, None, :], pooled], axis=1)
    cols = [x]
    for a in range(feats.shape[1]):
        for c in range(a + 1 if itself else a):  # dlrm order: (1,0), (2,0), (2,1), ...
            cols.append(np.sum(feats[:, a] * feats[:, c], axis=1, keepdims=True))
    return np.concatenate(cols, axis=1)


def np_forward(model: DLRM, batch) -> np.ndarray:
    x = np_mlp(batch.dense.double().numpy(), model.bottom_mlp)
    z = np_interaction(x, np_pooled(model, batch), model.config.interaction_itself)
    return np_mlp(z, model.top_mlp)[:, 0]


@pytest.mark.parametrize("itself", [False, True])
def test_forward_matches_numpy_reference(itself):
    cfg = dataclasses.replace(configs.get("tiny"), interaction_itself=itself, seed=3)
    model = DLRM(cfg)
    batch = random_batch(cfg, batch_size=17, pooling=5, alpha=0.8, seed=1)
    # make some bags empty and one long, to cover both cases
    lengths = np.random.default_rng(0).integers(0, 9, size=cfg.nr_tables * 17)
    lengths[3] = 0
    lengths[5] = 40
    ids = np.concatenate(
        [np.random.default_rng(1).integers(0, cfg.tables[i // 17].rows, size=n) for i, n in enumerate(lengths)]
    )
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    batch = type(batch)(batch.dense, ids, offsets)
    with torch.no_grad():
        got = model(batch).double().numpy()
    want = np_forward(model, batch)
    assert got.shape == (17,)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    # the pieces as well
    with torch.no_grad():
        pooled = model.embed(batch).double().numpy()
        x = model.bottom(batch.dense)
        z = model.interact(x, model.embed(batch)).double().numpy()
    np.testing.assert_allclose(pooled, np_pooled(model, batch), atol=1e-6)
    np.testing.assert_allclose(z, np_interaction(x.double().numpy(), pooled, itself), atol=1e-5)


def test_probabilities_in_unit_interval_and_shapes():
    cfg = configs.get("tiny")
    model = DLRM(cfg)
    batch = random_batch(cfg, batch_size=64, pooling=3, seed=2)
    with torch.no_grad():
        p = model(batch)
    assert p.shape == (64,) and p.dtype == torch.float32
    assert bool(((p > 0) & (p < 1)).all())


@pytest.mark.parametrize(
    "name, top_in",
    [
        ("kaggle", 26 * 27 // 2 + 16),  # 351 + 16 = 367 (DLRM.md)
        ("terabyte", 26 * 27 // 2 + 64),
        ("mlperf", 26 * 27 // 2 + 128),
        ("synthetic", 9 * 8 // 2 + 64),
    ],
)
def test_standard_config_widths(name, top_in):
    cfg = configs.get(name, row_scale=1e-5)  # shrink the tables; widths do not depend on rows
    assert cfg.top_input_dim == top_in
    model = DLRM(cfg)
    first_top = model.top_mlp[0]
    assert first_top.in_features == top_in
    assert model.bottom_mlp[0].in_features == cfg.n_dense
    # the independent NumPy interaction must produce exactly that width
    x = np.zeros((2, cfg.embedding_dim))
    pooled = np.zeros((2, cfg.nr_tables, cfg.embedding_dim))
    assert np_interaction(x, pooled, False).shape[1] == top_in
    assert isinstance(model.top_mlp[-1], nn.Sigmoid)
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 1


def test_kaggle_config_matches_published_shape():
    cfg = configs.get("kaggle")
    assert cfg.n_dense == 13 and cfg.embedding_dim == 16
    assert cfg.bottom_mlp == (512, 256, 64, 16) and cfg.top_mlp == (512, 256, 1)
    assert cfg.nr_tables == 26 and cfg.total_rows == 33_762_577
    assert configs.get("terabyte").total_rows == 204_184_588
    synth = configs.get("synthetic")
    assert synth.n_dense == 512 and [t.rows for t in synth.tables] == [1_000_000] * 8


def test_interaction_itself_width():
    cfg = dataclasses.replace(configs.get("kaggle", row_scale=1e-5), interaction_itself=True)
    assert cfg.top_input_dim == 27 * 28 // 2 + 16
    assert DLRM(cfg).top_mlp[0].in_features == 27 * 28 // 2 + 16


def test_row_scale_and_cap():
    full = configs.get("kaggle")
    small = configs.get("kaggle", row_scale=1e-3, max_rows=5000)
    for a, b in zip(full.tables, small.tables):
        want = min(5000, max(min(a.rows, 2), round(a.rows * 1e-3)))
        assert b.rows == want and b.dim == a.dim and b.name == a.name
    assert min(t.rows for t in small.tables) == 2  # the 3- and 4-row tables keep >= 2 rows
    with pytest.raises(ValueError, match="row_scale"):
        configs.get("kaggle", row_scale=0)
    with pytest.raises(ValueError, match="unknown model config 'nope'"):
        configs.get("nope")


def test_seeded_init_is_reproducible():
    cfg = configs.get("tiny")
    a, b = DLRM(cfg), DLRM(cfg)
    c = DLRM(dataclasses.replace(cfg, seed=cfg.seed + 1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    # embedding init uniform in +-sqrt(1/rows) and actually spread over that range
    for spec, bag in zip(cfg.tables, a.embeddings):
        w = bag.weight.detach()
        bound = (1.0 / spec.rows) ** 0.5
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.5 * bound


def test_bad_configs_are_rejected():
    tables = (TableSpec("a", 10, 8),)
    with pytest.raises(ValueError, match="last width"):
        DLRMConfig("x", 4, 8, (16, 4), (8, 1), tables)
    with pytest.raises(ValueError, match="ending in 1"):
        DLRMConfig("x", 4, 8, (8,), (8, 2), tables)
    with pytest.raises(ValueError, match="dim 4"):
        DLRMConfig("x", 4, 8, (8,), (8, 1), (TableSpec("a", 10, 4),))
    with pytest.raises(ValueError, match="interaction must be one of dot, cat"):
        DLRMConfig("x", 4, 8, (8,), (8, 1), tables, interaction="sum")
    with pytest.raises(ValueError, match="interaction_itself applies to the dot"):
        DLRMConfig("x", 4, 8, (8,), (8, 1), tables, interaction="cat", interaction_itself=True)
    with pytest.raises(ValueError, match="final_activation must be one of"):
        DLRMConfig("x", 4, 8, (8,), (8, 1), tables, final_activation="tanh")


@pytest.mark.parametrize("interaction,final", [("dot", "sigmoid"), ("cat", "sigmoid"), ("cat", "none"), ("dot", "relu")])
def test_probability_error_bound_holds_for_perturbations(interaction, final):
    cfg = dataclasses.replace(configs.get("tiny"), seed=5, interaction=interaction, final_activation=final)
    model = DLRM(cfg)
    batch = random_batch(cfg, batch_size=32, pooling=6, seed=4)
    eps = 1e-3
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = model.bottom(batch.dense)
        pooled = model.embed(batch)
        p = model.top(model.interact(x, pooled)).double()
        bound = model.probability_error_bound(x, pooled, eps)
        assert bound.shape == (32,)
        worst = torch.zeros(32, dtype=torch.float64)
        for _ in range(20):
            e = (torch.rand(pooled.shape, generator=gen) * 2 - 1) * eps
            e = torch.where(torch.rand(pooled.shape, generator=gen) < 0.5, e.sign() * eps, e)
            q = model.top(model.interact(x, pooled + e)).double()
            worst = torch.maximum(worst, (q - p).abs())
    assert bool((worst <= bound + 1e-6).all())
    assert float(worst.max()) > 0  # the perturbations did move the output


def test_cat_interaction_and_final_activations_match_numpy():
    """dlrm's cat: R = cat([x] + ly) (width F*d); the last top layer ends as configured."""
    for final in ("sigmoid", "relu", "none"):
        cfg = dataclasses.replace(configs.get("tiny"), seed=2, interaction="cat", final_activation=final)
        assert cfg.top_input_dim == cfg.nr_features * cfg.embedding_dim
        model = DLRM(cfg)
        batch = random_batch(cfg, batch_size=9, pooling=3, seed=1)
        with torch.no_grad():
            x = model.bottom(batch.dense)
            pooled = model.embed(batch)
            got = model(batch).double().numpy()
        z = np.concatenate([x.double().numpy()] + [pooled[:, t].double().numpy() for t in range(cfg.nr_tables)], axis=1)
        linears = [m for m in model.top_mlp if isinstance(m, nn.Linear)]
        for k, layer in enumerate(linears):
            z = z @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
            if k < len(linears) - 1:
                z = np.maximum(z, 0)
        z = z[:, 0]
        want = {"sigmoid": 1 / (1 + np.exp(-z)), "relu": np.maximum(z, 0), "none": z}[final]
        np.testing.assert_allclose(got, want, atol=1e-5)
