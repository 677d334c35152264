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
    # the diagonal is never inferred (a missing table gives the same width): it is asked for
    model = model_io.load(path, interaction_itself=True) if itself else model_io.load(path)
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


# -- files as dlrm_s_pytorch.py --save-model writes them, and hostile or broken files -------------
def _dlrm_sd(rows, d, interaction="dot", itself=False, seed=0, n_dense=N_DENSE, top=TOP):
    """A DLRM_Net state dict for any tables (all of width d) and interaction."""
    g = torch.Generator().manual_seed(seed)
    sd = {f"emb_l.{t}.weight": _rand(g, r, d) for t, r in enumerate(rows)}
    sd["bot_l.0.weight"], sd["bot_l.0.bias"] = _rand(g, 16, n_dense), _rand(g, 16)
    sd["bot_l.2.weight"], sd["bot_l.2.bias"] = _rand(g, d, 16), _rand(g, d)
    f = len(rows) + 1
    width = f * d if interaction == "cat" else d + (f * (f + 1) // 2 if itself else f * (f - 1) // 2)
    for k, w in enumerate(top):
        sd[f"top_l.{2 * k}.weight"], sd[f"top_l.{2 * k}.bias"] = _rand(g, w, width), _rand(g, w)
        width = w
    return sd


def _dlrm_ref(sd, rows, d, dense, bags, interaction="dot", itself=False, final="sigmoid"):
    """Independent NumPy forward of DLRM_Net.interact_features + top_l, any interaction and last
    activation (dlrm's create_mlp puts ReLU after the last layer when sigmoid_top=-1)."""
    x = dense.astype(np.float64)
    for k in (0, 2):
        x = np.maximum(x @ _np(sd[f"bot_l.{k}.weight"]).T + _np(sd[f"bot_l.{k}.bias"]), 0)
    pooled = [np.stack([_np(sd[f"emb_l.{t}.weight"])[bag].sum(axis=0) if len(bag) else np.zeros(d) for bag in table])
              for t, table in enumerate(bags)]
    if interaction == "cat":
        z = np.concatenate([x] + pooled, axis=1)
    else:
        feats = np.stack([x] + pooled, axis=1)
        f = feats.shape[1]
        pairs = [(i, j) for i in range(f) for j in range(i + (1 if itself else 0))]
        z = np.concatenate([x, np.stack([(feats[:, i] * feats[:, j]).sum(1) for i, j in pairs], axis=1)], axis=1)
    n_top = len([k for k in sd if k.startswith("top_l.") and k.endswith(".weight")])
    for k in range(n_top):
        z = z @ _np(sd[f"top_l.{2 * k}.weight"]).T + _np(sd[f"top_l.{2 * k}.bias"])
        if k < n_top - 1 or final == "relu":
            z = np.maximum(z, 0)
    z = z[:, 0]
    return 1 / (1 + np.exp(-z)) if final == "sigmoid" else z


def _inputs_for(rows, batch_size=7, seed=11):
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((batch_size, N_DENSE)).astype(np.float32)
    bags = [[rng.integers(0, r, size=int(rng.integers(0, 4))) for _ in range(batch_size)] for r in rows]
    return dense, bags


def _save_like_dlrm(path, sd, mlperf=False):
    """torch.save of dlrm_s_pytorch.py's model_metrics_dict after a test pass: test_acc is
    np.sum(uint8 array) / samples (np.float64), train_loss a float32 loss .numpy() summed
    (np.float32), opt_state_dict a real SGD state dict; with --mlperf-logging test_auc np.float64."""
    params = [v.clone().requires_grad_(True) for v in sd.values()]
    opt = torch.optim.SGD(params, lr=0.1)
    sum((p * p).sum() for p in params).backward()
    opt.step()
    test_accu = 0
    test_accu += np.sum((np.round(np.array([0.2, 0.7, 0.9]), 0) == np.array([0, 1, 0])).astype(np.uint8))
    total_loss = 0
    total_loss += torch.tensor(0.47).numpy() * 128
    metrics = {
        "nepochs": 1, "nbatches": 10, "nbatches_test": 2,
        "state_dict": sd,
        "test_acc": test_accu / 3,
        "epoch": 0, "iter": 10,
        "train_loss": total_loss / 128,
        "total_loss": 0,
        "opt_state_dict": opt.state_dict(),
    }
    if mlperf:
        metrics["test_auc"] = np.float64(0.8)
    assert isinstance(metrics["test_acc"], np.float64) and isinstance(metrics["train_loss"], np.float32)
    torch.save(metrics, path)
    return path


@pytest.mark.parametrize("mlperf", [False, True])
def test_dlrm_save_model_file_with_numpy_scalars_loads_by_path(tmp_path, mlperf):
    sd = _dlrm_state_dict(seed=2)
    path = _save_like_dlrm(tmp_path / "dlrm.pt", sd, mlperf=mlperf)
    model = model_io.load(path)
    dense, bags = _inputs()
    np.testing.assert_allclose(_predict(model, dense, bags), _dlrm_reference(sd, dense, bags), atol=1e-5)


def test_dlrm_file_written_under_numpy_1_loads(tmp_path):
    """numpy 1 pickles its scalars as numpy.core.multiarray.scalar (numpy 2: numpy._core...)."""
    import io
    import zipfile

    sd = _dlrm_state_dict(seed=2)
    src = _save_like_dlrm(tmp_path / "np2.pt", sd)
    out = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
                assert b"numpy.core.multiarray\nscalar" in data
            zout.writestr(info, data)
    path = tmp_path / "np1.pt"
    path.write_bytes(out.getvalue())
    model = model_io.load(path)
    dense, bags = _inputs()
    np.testing.assert_allclose(_predict(model, dense, bags), _dlrm_reference(sd, dense, bags), atol=1e-5)


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path, legacy):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": _dlrm_state_dict(), "test_acc": np.float64(0.5), "hook": _RunsCode(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match=r"refused: the file's pickle needs posix\.system.*could run code"):
        model_io.load(path)
    assert not marker.exists()


def test_numpy_allowlist_is_exactly_scalars_and_dtypes(tmp_path):
    allowed = model_io._numpy_safe_globals()
    names = sorted(name if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
                   for entry in allowed for name in ([entry[1]] if isinstance(entry, tuple) else [None]))
    assert "numpy.core.multiarray.scalar" in names and "numpy._core.multiarray.scalar" in names
    assert "numpy.dtype" in names
    dtype_classes = [e for e in allowed if isinstance(e, type) and e is not np.dtype]
    assert dtype_classes and all(issubclass(c, np.dtype) for c in dtype_classes)
    assert {np.dtype(c.type).kind for c in dtype_classes} <= set("biufc")  # no object, string or void
    # so a numpy *array* (numpy's _reconstruct, ndarray) is still refused
    path = tmp_path / "arr.pt"
    torch.save({"state_dict": _dlrm_state_dict(), "extra": np.arange(3)}, path)
    with pytest.raises(CheckpointError, match="refused.*_reconstruct"):
        model_io.load(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.save, used to write a TorchScript file
def test_empty_and_corrupt_files_say_so(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"the file is empty \(0 bytes\)") as info:
        model_io.load(empty)
    assert "weights_only" not in str(info.value) and "()" not in str(info.value)
    good = tmp_path / "good.pt"
    torch.save({"state_dict": _dlrm_state_dict()}, good)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80" + bytes(range(7, 250)))
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match=r"corrupt") as info:
            model_io.load(path)
        assert "weights_only" not in str(info.value)
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a model\n")
    with pytest.raises(CheckpointError, match=r"not a torch checkpoint \(19 bytes starting b'hell'"):
        model_io.load(text)
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), scripted)
    with pytest.raises(CheckpointError, match=r"is a TorchScript archive"):
        model_io.load(scripted)


# -- silent misloads become errors, or assumptions that are stated ----------------------------------
CAT_ROWS = tuple(3 + (5 * t) % 17 for t in range(15))  # 15 tables at d=8: cat and dot both take 128


def test_cat_model_whose_width_equals_dot_is_refused_then_loads_as_asked():
    sd = _dlrm_sd(CAT_ROWS, D, interaction="cat", seed=5)
    assert sd["top_l.0.weight"].shape[1] == D * 16 == D + 16 * 15 // 2
    with pytest.raises(CheckpointError, match=r"more than one dlrm architecture.*dot interaction \(interaction='dot'\)"
                                              r".*cat interaction \(interaction='cat'\).*interaction='dot'\|'cat'"):
        model_io.from_dlrm_state_dict(sd)
    dense, bags = _inputs_for(CAT_ROWS)
    cat = model_io.from_dlrm_state_dict(sd, interaction="cat")
    assert cat.config.interaction == "cat" and cat.import_notes[0].startswith("assumed a sigmoid")
    want = _dlrm_ref(sd, CAT_ROWS, D, dense, bags, interaction="cat")
    np.testing.assert_allclose(_predict(cat, dense, bags), want, atol=1e-5)
    dot = model_io.from_dlrm_state_dict(sd, interaction="dot")
    np.testing.assert_allclose(_predict(dot, dense, bags), _dlrm_ref(sd, CAT_ROWS, D, dense, bags), atol=1e-5)
    assert np.abs(_predict(dot, dense, bags) - want).max() > 1e-3  # the two readings differ


def test_cat_model_with_a_unique_width_is_inferred_and_noted():
    rows = (50, 7, 120, 33)  # cat: 5*8 = 40; dot: 18, with diagonal: 23
    sd = _dlrm_sd(rows, D, interaction="cat", seed=6)
    model = model_io.from_dlrm_state_dict(sd)
    assert model.config.interaction == "cat"
    assert any("cat interaction" in n and "inferred" in n for n in model.import_notes)
    dense, bags = _inputs_for(rows)
    np.testing.assert_allclose(_predict(model, dense, bags), _dlrm_ref(sd, rows, D, dense, bags, "cat"), atol=1e-5)


def test_state_dict_with_a_table_removed_is_refused_not_read_as_interaction_itself():
    sd = _dlrm_state_dict(seed=3)
    del sd["emb_l.3.weight"]  # the last table: the indices stay contiguous
    with pytest.raises(CheckpointError, match=r"3 tables, dot interaction with the diagonal \(interaction_itself=True\); "
                                              r"4 tables with dot interaction, 1 missing from the file"):
        model_io.from_dlrm_state_dict(sd)
    assert model_io.from_dlrm_state_dict(sd, interaction_itself=True).config.interaction_itself
    with pytest.raises(CheckpointError, match="top MLP takes 18 inputs.*is a table missing"):
        model_io.from_dlrm_state_dict(sd, interaction_itself=False)


def test_dlrm_final_sigmoid_is_an_assumption_and_false_gives_dlrm_relu_output(tmp_path):
    sd = _dlrm_state_dict(seed=8)
    dense, bags = _inputs()
    model = model_io.from_dlrm_state_dict(sd)
    assert model.config.final_activation == "sigmoid"
    assert any("assumed a sigmoid" in n and "final_sigmoid=False" in n for n in model.import_notes)
    raw = model_io.from_dlrm_state_dict(sd, final_sigmoid=False)
    assert raw.config.final_activation == "relu" and raw.import_notes == ()
    want = _dlrm_ref(sd, ROWS, D, dense, bags, final="relu")
    np.testing.assert_allclose(_predict(raw, dense, bags), want, atol=1e-5)
    # our own checkpoint records the activation: no assumption on reload
    back = model_io.load(model_io.save(raw, tmp_path / "raw.pt"))
    assert back.config.final_activation == "relu" and back.import_notes == ()
    with pytest.raises(CheckpointError, match="final_sigmoid=True contradicts"):
        model_io.load(tmp_path / "raw.pt", final_sigmoid=True)


def test_torchrec_pooling_and_logits_are_stated_mean_is_refused():
    sd = _torchrec_state_dict()
    model = model_io.from_torchrec_state_dict(sd)
    assert any("assumed sum pooling" in n for n in model.import_notes)
    assert any("sigmoid(logits)" in n for n in model.import_notes)
    with pytest.raises(CheckpointError, match="pooling='mean' is not supported"):
        model_io.from_torchrec_state_dict(sd, pooling="mean")
    confirmed = model_io.from_torchrec_state_dict(sd, pooling="sum", final_sigmoid=False)
    assert confirmed.import_notes == ()
    dense, bags = _inputs(batch_size=6, seed=9)
    np.testing.assert_allclose(_predict(confirmed, dense, bags), _torchrec_logits(sd, dense, bags), atol=1e-5)
    with pytest.raises(CheckpointError, match="only the dot interaction"):
        model_io.from_torchrec_state_dict(sd, interaction="cat")


def test_mixed_dimension_and_shared_tables_are_named():
    # dlrm --md-flag: every big table is a PrEmbeddingBag (embs [rows, d_t], proj [base, d_t] when d_t < base)
    g = torch.Generator().manual_seed(0)
    md = {k: v for k, v in _dlrm_state_dict().items() if not k.startswith("emb_l.")}
    for t, (r, dt) in enumerate([(300, 4), (250, 8), (400, 2)]):
        md[f"emb_l.{t}.embs.weight"] = _rand(g, r, dt)
        if dt < D:
            md[f"emb_l.{t}.proj.weight"] = _rand(g, D, dt)
    with pytest.raises(CheckpointError, match=r"mixed-dimension embeddings \(dlrm --md-flag.*not supported"):
        model_io.load(md)
    plain = _dlrm_state_dict()
    plain["emb_l.2.weight"] = torch.zeros(120, 4)
    with pytest.raises(CheckpointError, match=r"different widths.*emb_l.2.weight d=4"):
        model_io.load(plain)
    qr = dict(_dlrm_state_dict())
    qr["emb_l.0.weight_q"] = qr.pop("emb_l.0.weight")
    with pytest.raises(CheckpointError, match=r"quotient-remainder"):
        model_io.load(qr)
    # TorchRec: table "item" serves two features (EmbeddingBagConfig(feature_names=["item", "item_2"])),
    # so the over-arch takes d + C(6, 2) inputs for 4 tables
    tr = _torchrec_state_dict()
    tr["over_arch.model.0._mlp.0._linear.weight"] = torch.zeros(16, D + 6 * 5 // 2)
    with pytest.raises(CheckpointError, match=r"fits 5 sparse features, but the collection holds 4 tables.*"
                                              r"feature_names with more than one name"):
        model_io.load(tr)


def test_serving_loader_logs_the_assumptions(tmp_path, caplog):
    from updlrm.serving.loader import ServeSettings, build_dlrm, parse_model_options

    path = tmp_path / "tr.pt"
    torch.save(_torchrec_state_dict(), path)
    with caplog.at_level("INFO", logger="updlrm.serving"):
        build_dlrm(ServeSettings(model=str(path)))
    assert "assumed sum pooling" in caplog.text and "sigmoid(logits)" in caplog.text
    caplog.clear()
    cat_path = tmp_path / "cat.pt"
    torch.save({"state_dict": _dlrm_sd(CAT_ROWS, D, interaction="cat")}, cat_path)
    with pytest.raises(CheckpointError, match=r"interaction='dot'\|'cat'.*\(updlrm serve: --model-option KEY=VALUE\)"):
        build_dlrm(ServeSettings(model=str(cat_path)))
    options = parse_model_options(["interaction=cat", "final_sigmoid=false", "pooling=sum"])
    assert options == {"interaction": "cat", "final_sigmoid": False, "pooling": "sum"}
    model = build_dlrm(ServeSettings(model=str(cat_path), model_options=options))
    assert model.config.interaction == "cat" and model.config.final_activation == "relu"
    for bad, why in (("interaction", "expected KEY=VALUE"), ("colour=red", "KEY one of"), ("final_sigmoid=maybe", "true|false")):
        with pytest.raises(ValueError, match=why):
            parse_model_options([bad])
    # a file written by dlrm_s_pytorch.py --save-model serves by path
    saved = _save_like_dlrm(tmp_path / "dlrm.pt", _dlrm_state_dict())
    assert build_dlrm(ServeSettings(model=str(saved))).config.nr_tables == len(ROWS)


# -- non-finite weights are refused by every backend ---------------------------------------------------
@pytest.mark.parametrize("backend", ["cpu", "pim", "cuda"])
@pytest.mark.parametrize("where", ["embeddings.2.weight", "top_mlp.0.bias"])
def test_nan_or_inf_weights_are_refused_when_the_engine_is_built(monkeypatch, backend, where):
    from updlrm.engine import Engine

    if backend == "cuda" and not torch.cuda.is_available():  # run the cuda backend on the cpu device
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    options = {"cuda_device": "cpu"} if backend == "cuda" and not torch.cuda.is_available() else {}
    if backend == "pim":
        options = {"nr_dpus": 4}
    for bad in (float("nan"), float("inf")):
        model = model_io.from_dlrm_state_dict(_dlrm_state_dict())
        with torch.no_grad():
            model.state_dict()[where].view(-1)[5 if "embeddings" in where else 0] = bad
        with pytest.raises(ValueError, match=rf"model weight '{where}'.*{bad}.*NaN or inf weights are refused"):
            Engine(model, backend=backend, **options)


def test_huge_but_finite_weights_are_not_mistaken_for_inf():
    from updlrm.engine import Engine

    model = model_io.from_dlrm_state_dict(_dlrm_state_dict())
    with torch.no_grad():
        model.embeddings[2].weight[:2] = 3e38  # their float32 sum overflows to inf
    with Engine(model, backend="cpu"):
        pass


@pytest.mark.parametrize("backend", ["cpu", "pim", "cuda"])
def test_imported_cat_model_serves_the_same_on_every_backend(monkeypatch, backend):
    from updlrm.engine import Engine

    options = {"pim": {"nr_dpus": 4}}.get(backend, {})
    if backend == "cuda" and not torch.cuda.is_available():  # the cuda backend's code on the cpu device
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        options = {"cuda_device": "cpu"}
    sd = _dlrm_sd(CAT_ROWS, D, interaction="cat", seed=4)
    model = model_io.from_dlrm_state_dict(sd, interaction="cat", final_sigmoid=False)
    dense, bags = _inputs_for(CAT_ROWS, batch_size=12, seed=2)
    want = _dlrm_ref(sd, CAT_ROWS, D, dense, bags, interaction="cat", final="relu")
    assert 0 < (want > 0).sum() < len(want)  # the ReLU both passes and clips
    with Engine(model, backend=backend, **options) as engine:
        got = engine.predict(_batch(dense, bags)).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_serve_command_rejects_a_bad_model_option(capsys):
    from updlrm.cli import main

    assert main(["serve", "--model", "tiny", "--model-option", "interaction=sum"]) == 2
    assert "--model-option interaction='sum': expected dot|cat" in capsys.readouterr().err
