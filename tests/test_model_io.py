"""Model import/export: state dicts in the exact facebookresearch/dlrm and TorchRec key layouts
(built here without those packages) give the predictions of an independent NumPy forward pass;
our checkpoint round-trips; the first mismatched tensor is named and the model is left unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from updlrm import model_io
from updlrm.batch import Batch
from updlrm.configs import DLRMConfig
from updlrm.model_io import CheckpointError
from updlrm.partition import TableSpec

N_DENSE, D = 4, 8
BOTTOM, TOP = (16, D), (16, 1)
ROWS = (50, 7, 120, 33)
F = len(ROWS) + 1


def _rand(gen, *shape):
    return torch.randn(*shape, generator=gen) * 0.3


def _dlrm_state_dict(seed=0, itself=False):
    """A facebookresearch/dlrm DLRM_Net state dict: Sequential(Linear, ReLU, ...) -> indices 0, 2."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for t, r in enumerate(ROWS):
        sd[f"emb_l.{t}.weight"] = _rand(g, r, D)
    width = N_DENSE
    for k, w in enumerate(BOTTOM):
        sd[f"bot_l.{2 * k}.weight"], sd[f"bot_l.{2 * k}.bias"] = _rand(g, w, width), _rand(g, w)
        width = w
    width = D + (F * (F + 1) // 2 if itself else F * (F - 1) // 2)
    for k, w in enumerate(TOP):
        sd[f"top_l.{2 * k}.weight"], sd[f"top_l.{2 * k}.bias"] = _rand(g, w, width), _rand(g, w)
        width = w
    return sd


def _torchrec_state_dict(seed=1, names=("user", "item", "ad", "page")):
    """A torchrec.models.dlrm.DLRM state dict (MLP of Perceptrons with `_linear`; OverArch =
    Sequential(MLP, Linear))."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for n, r in zip(names, ROWS):
        sd[f"sparse_arch.embedding_bag_collection.embedding_bags.{n}.weight"] = _rand(g, r, D)
    width = N_DENSE
    for k, w in enumerate(BOTTOM):
        sd[f"dense_arch.model._mlp.{k}._linear.weight"] = _rand(g, w, width)
        sd[f"dense_arch.model._mlp.{k}._linear.bias"] = _rand(g, w)
        width = w
    width = D + F * (F - 1) // 2
    for k, w in enumerate(TOP[:-1]):
        sd[f"over_arch.model.0._mlp.{k}._linear.weight"] = _rand(g, w, width)
        sd[f"over_arch.model.0._mlp.{k}._linear.bias"] = _rand(g, w)
        width = w
    sd["over_arch.model.1.weight"], sd["over_arch.model.1.bias"] = _rand(g, TOP[-1], width), _rand(g, TOP[-1])
    return sd


def _inputs(batch_size=9, seed=3):
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((batch_size, N_DENSE)).astype(np.float32)
    bags = [[rng.integers(0, r, size=int(rng.integers(0, 5))) for _ in range(batch_size)] for r in ROWS]
    return dense, bags


def _batch(dense, bags) -> Batch:
    indices = np.concatenate([np.concatenate(table) for table in bags]).astype(np.int64)
    lens = [len(b) for table in bags for b in table]
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return Batch(torch.from_numpy(dense), torch.from_numpy(indices), torch.from_numpy(offsets))


def _np(t):
    return t.detach().double().numpy()


def _reference_forward(dense, bags, emb, bottom, top, pair_order, sigmoid):
    """Independent NumPy DLRM: bottom MLP (ReLU everywhere), sum pooling, dot products in
    ``pair_order`` (list of (i, j)), top MLP (ReLU except last), optional sigmoid."""
    x = dense.astype(np.float64)
    for w, b in bottom:
        x = np.maximum(x @ w.T + b, 0)
    pooled = [np.stack([e[bag].sum(axis=0) if len(bag) else np.zeros(D) for bag in table]) for e, table in zip(emb, bags)]
    feats = np.stack([x] + pooled, axis=1)  # [B, F, D]
    z = np.concatenate([x, np.stack([np.einsum("bd,bd->b", feats[:, i], feats[:, j]) for i, j in pair_order], axis=1)], axis=1)
    for k, (w, b) in enumerate(top):
        z = z @ w.T + b
        if k < len(top) - 1:
            z = np.maximum(z, 0)
    z = z[:, 0]
    return 1 / (1 + np.exp(-z)) if sigmoid else z


def _dlrm_pairs(itself=False):
    return [(i, j) for i in range(F) for j in range(i + (1 if itself else 0))]  # dlrm's li/lj order


def _torchrec_pairs():
    return [(i, j) for i in range(F) for j in range(i + 1, F)]  # torch.triu_indices(F, F, 1)


def _dlrm_reference(sd, dense, bags, itself=False):
    emb = [_np(sd[f"emb_l.{t}.weight"]) for t in range(len(ROWS))]
    bottom = [(_np(sd[f"bot_l.{2 * k}.weight"]), _np(sd[f"bot_l.{2 * k}.bias"])) for k in range(len(BOTTOM))]
    top = [(_np(sd[f"top_l.{2 * k}.weight"]), _np(sd[f"top_l.{2 * k}.bias"])) for k in range(len(TOP))]
    return _reference_forward(dense, bags, emb, bottom, top, _dlrm_pairs(itself), sigmoid=True)


def _torchrec_logits(sd, dense, bags):
    emb = [_np(v) for k, v in sd.items() if k.startswith("sparse_arch.")]
    bottom = [(_np(sd[f"dense_arch.model._mlp.{k}._linear.weight"]), _np(sd[f"dense_arch.model._mlp.{k}._linear.bias"]))
              for k in range(len(BOTTOM))]
    top = [(_np(sd[f"over_arch.model.0._mlp.{k}._linear.weight"]), _np(sd[f"over_arch.model.0._mlp.{k}._linear.bias"]))
           for k in range(len(TOP) - 1)]
    top.append((_np(sd["over_arch.model.1.weight"]), _np(sd["over_arch.model.1.bias"])))
    return _reference_forward(dense, bags, emb, bottom, top, _torchrec_pairs(), sigmoid=False)


@torch.no_grad()
def _predict(model, dense, bags):
    return model(_batch(dense, bags)).double().numpy()


@pytest.mark.parametrize("itself", [False, True])
def test_dlrm_checkpoint_gives_reference_predictions(tmp_path, itself):
    sd = _dlrm_state_dict(itself=itself)
    path = tmp_path / "dlrm.pt"
    torch.save({"epoch": 3, "state_dict": sd}, path)  # as dlrm_s_pytorch.py --save-model does
    model = model_io.load(path)
    assert model.config.interaction_itself is itself
    assert [t.rows for t in model.config.tables] == list(ROWS)
    dense, bags = _inputs()
    np.testing.assert_allclose(_predict(model, dense, bags), _dlrm_reference(sd, dense, bags, itself), atol=1e-5)


def test_dlrm_dataparallel_prefix_and_export_round_trip():
    sd = {f"module.{k}": v for k, v in _dlrm_state_dict(seed=4).items()}
    model = model_io.from_dlrm_state_dict(sd)
    exported = model_io.to_dlrm_state_dict(model)
    assert set(exported) == {k[len("module.") :] for k in sd}
    for k, v in exported.items():
        assert torch.equal(v, sd[f"module.{k}"])


def test_torchrec_dlrm_gives_sigmoid_of_reference_logits(tmp_path):
    sd = _torchrec_state_dict()
    model = model_io.from_torchrec_state_dict(sd)
    assert [t.name for t in model.config.tables] == ["user", "item", "ad", "page"]
    dense, bags = _inputs(batch_size=11, seed=5)
    logits = _torchrec_logits(sd, dense, bags)
    np.testing.assert_allclose(_predict(model, dense, bags), 1 / (1 + np.exp(-logits)), atol=1e-5)
    # DLRMTrain wraps the model as `model.`; a file goes through load() with detection.
    path = tmp_path / "torchrec.pt"
    torch.save({f"model.{k}": v for k, v in sd.items()}, path)
    again = model_io.load(path)
    np.testing.assert_allclose(_predict(again, dense, bags), _predict(model, dense, bags), atol=1e-6)
    # Export back to the TorchRec layout: identical tensors (the column permutation is undone).
    back = model_io.to_torchrec_state_dict(model)
    assert list(back) == list(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


def test_torchrec_embedding_bag_collection_into_a_model():
    model = model_io.from_dlrm_state_dict(_dlrm_state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ebc = {k.replace("sparse_arch.embedding_bag_collection.", ""): v
           for k, v in _torchrec_state_dict(seed=7).items() if k.startswith("sparse_arch.")}
    model_io.load_torchrec_embeddings(model, ebc)
    for t, w in enumerate(model.embedding_weights()):
        assert torch.equal(w, list(ebc.values())[t])
    assert torch.equal(model.state_dict()["bottom_mlp.0.weight"], before["bottom_mlp.0.weight"])
    bad = dict(ebc)
    bad["embedding_bags.ad.weight"] = torch.zeros(3, D)
    with pytest.raises(CheckpointError, match=r"embedding_bags.ad.weight.*expected shape \[120, 8\], found shape \[3, 8\]"):
        model_io.load_torchrec_embeddings(model, bad)


def test_own_checkpoint_round_trip(tmp_path):
    config = DLRMConfig("t", N_DENSE, D, BOTTOM, TOP, tuple(TableSpec(f"C{i}", r, D) for i, r in enumerate(ROWS)), seed=9)
    from updlrm.model import DLRM

    model = DLRM(config)
    path = model_io.save(model, tmp_path / "m.updlrm.pt")
    back = model_io.load(path)
    assert back.config == config
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    dense, bags = _inputs()
    np.testing.assert_array_equal(_predict(back, dense, bags), _predict(model, dense, bags))
    # the checkpoint is loadable without unpickling code
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "updlrm-checkpoint" and raw["config"]["tables"][2] == {"name": "C2", "rows": 120, "dim": D}


def test_first_mismatched_tensor_is_named_and_nothing_changes():
    sd = _dlrm_state_dict()
    model = model_io.from_dlrm_state_dict(sd)
    config = model.config
    bad = dict(sd)
    bad["bot_l.2.weight"] = torch.zeros(D, 12)
    with pytest.raises(CheckpointError, match=r"'bot_l.2.weight': expected shape \[8, 16\], found shape \[8, 12\]"):
        model_io.from_dlrm_state_dict(bad, config=config)
    missing = {k: v for k, v in sd.items() if k != "emb_l.2.weight"}
    with pytest.raises(CheckpointError, match="emb_l.2.weight"):
        model_io.from_dlrm_state_dict(missing)
    extra = dict(sd, **{"v_W_l.0": torch.ones(3)})
    with pytest.raises(CheckpointError, match="v_W_l.0"):
        model_io.from_dlrm_state_dict(extra)
    wrong_top = dict(sd)
    wrong_top["top_l.0.weight"] = torch.zeros(16, 20)
    with pytest.raises(CheckpointError, match="top MLP takes 20 inputs"):
        model_io.from_dlrm_state_dict(wrong_top)
    # load_state_dict_checked: a bad tensor late in the order leaves the earlier ones untouched.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ours = {k: torch.full_like(v, 7.0) for k, v in model.state_dict().items()}
    ours["top_mlp.2.bias"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"'top_mlp.2.bias': expected shape \[1\], found shape \[2\]"):
        model_io.load_state_dict_checked(model, ours)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    tr = _torchrec_state_dict()
    tr["dense_arch.model._mlp.1._linear.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match=r"dense_arch.model._mlp.1._linear.bias': expected shape \[8\], found shape \[5\]"):
        model_io.from_torchrec_state_dict(tr)
    with pytest.raises(CheckpointError, match="unrecognised state dict"):
        model_io.load({"foo.weight": torch.zeros(1)})
