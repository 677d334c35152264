"""Model import and export: our own checkpoints, facebookresearch/dlrm and TorchRec state dicts.

Three sources give an :class:`updlrm.model.DLRM`:

* **our checkpoint** (:func:`save` / :func:`load`): ``torch.save({"format": "updlrm-checkpoint",
  "version": 1, "config": <DLRMConfig as a dict>, "state_dict": model.state_dict()})``; loads with
  ``torch.load(weights_only=True)`` (no pickled code).
* **facebookresearch/dlrm** (``dlrm_s_pytorch.py``'s ``DLRM_Net``; its checkpoints hold the model
  under ``"state_dict"``): ``emb_l.{t}.weight`` [rows_t, d], ``bot_l.{2k}.weight/bias`` and
  ``top_l.{2k}.weight/bias`` (``nn.Sequential`` of Linear, activation, Linear, ...). Same maths
  as ours (dot interaction, lower triangle in the same order, sigmoid at the end): the tensors are
  copied as they are.
* **TorchRec** (``torchrec.models.dlrm.DLRM``): ``sparse_arch.embedding_bag_collection.
  embedding_bags.<table>.weight`` (tables in collection order), ``dense_arch.model._mlp.{k}.
  _linear.weight/bias``, ``over_arch.model.0._mlp.{k}._linear.weight/bias`` and
  ``over_arch.model.1.weight/bias`` (the last, activation-free layer). TorchRec keeps the
  interactions in *upper*-triangle row-major order ((0,1), (0,2), ...) and returns logits; we use
  dlrm's lower-triangle order and a sigmoid, so the top MLP's first-layer columns are permuted on
  import (dot products are symmetric, so the model computes the same function). A bare
  ``EmbeddingBagCollection`` state dict (``embedding_bags.<table>.weight``) loads into the tables of
  a given model with :func:`load_torchrec_embeddings`.

Prefixes added by wrappers (``module.`` from DataParallel/DDP, ``model.`` from TorchRec's
``DLRMTrain``, ``_orig_mod.`` from torch.compile) are stripped. The configuration is inferred from
the tensor shapes unless given; when a config is given, every tensor is checked against it first
and the error names the first mismatch (source name, expected shape, found shape). Nothing is
copied into a model until every check has passed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import torch

from updlrm.configs import DLRMConfig
from updlrm.errors import UpdlrmError
from updlrm.partition import TableSpec

__all__ = [
    "CheckpointError",
    "save",
    "load",
    "config_to_dict",
    "config_from_dict",
    "load_state_dict_checked",
    "from_dlrm_state_dict",
    "from_torchrec_state_dict",
    "load_torchrec_embeddings",
    "to_dlrm_state_dict",
    "to_torchrec_state_dict",
    "detect_format",
]

CHECKPOINT_FORMAT = "updlrm-checkpoint"
CHECKPOINT_VERSION = 1
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
_TR_EBC = "sparse_arch.embedding_bag_collection.embedding_bags."
_TR_DENSE = re.compile(r"^dense_arch\.model\._mlp\.(\d+)\._linear\.(weight|bias)$")
_TR_OVER = re.compile(r"^over_arch\.model\.0\._mlp\.(\d+)\._linear\.(weight|bias)$")
_TR_LAST = re.compile(r"^over_arch\.model\.1\.(weight|bias)$")
_DLRM_EMB = re.compile(r"^emb_l\.(\d+)\.weight$")
_DLRM_MLP = re.compile(r"^(bot_l|top_l)\.(\d+)\.(weight|bias)$")


class CheckpointError(UpdlrmError, ValueError):
    """A checkpoint or state dict does not fit: names the tensor, expected and found shapes."""


# -- config <-> dict ------------------------------------------------------------------------------
def config_to_dict(config: DLRMConfig) -> dict:
    """A JSON/torch-safe dict of a :class:`DLRMConfig` (tables as name/rows/dim dicts)."""
    d = dataclasses.asdict(config)
    d["tables"] = [{"name": t.name, "rows": int(t.rows), "dim": int(t.dim)} for t in config.tables]
    d["bottom_mlp"] = list(config.bottom_mlp)
    d["top_mlp"] = list(config.top_mlp)
    return d


def config_from_dict(d: Mapping) -> DLRMConfig:
    """Inverse of :func:`config_to_dict` (unknown keys are an error)."""
    d = dict(d)
    known = {f.name for f in dataclasses.fields(DLRMConfig)}
    extra = sorted(set(d) - known)
    if extra:
        raise CheckpointError(f"checkpoint config has unknown fields: {', '.join(extra)}")
    d["tables"] = tuple(TableSpec(str(t["name"]), int(t["rows"]), int(t["dim"])) for t in d.get("tables", ()))
    return DLRMConfig(**d)


# -- helpers --------------------------------------------------------------------------------------
def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _unwrap(obj) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint-like object, wrapper prefixes stripped."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    changed = True
    while changed and sd:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _read(path_or_obj) -> object:
    if isinstance(path_or_obj, (str, os.PathLike)):
        path = Path(path_or_obj)
        if not path.exists():
            raise FileNotFoundError(f"model file not found: {path}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad or unsafe pickle
            raise CheckpointError(
                f"{path}: cannot read as a torch state dict with weights_only=True ({exc}). Files that pickle "
                "other objects (dlrm's checkpoints keep numpy scalars next to the weights) can be opened with "
                "torch.load(path, weights_only=False) if you trust them; pass the resulting dict instead"
            ) from exc
    return path_or_obj


def detect_format(obj) -> str:
    """``"updlrm"``, ``"dlrm"``, ``"torchrec"`` or ``"torchrec-ebc"`` for a loaded object."""
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return "updlrm"
    sd = _unwrap(obj)
    keys = list(sd)
    if any(_DLRM_EMB.match(k) for k in keys) and any(k.startswith("bot_l.") for k in keys):
        return "dlrm"
    if any(k.startswith(_TR_EBC) for k in keys) and any(k.startswith("dense_arch.") for k in keys):
        return "torchrec"
    if keys and all(k.startswith("embedding_bags.") for k in keys):
        return "torchrec-ebc"
    if any(k.startswith("bottom_mlp.") for k in keys) and any(k.startswith("embeddings.") for k in keys):
        return "updlrm-state-dict"
    raise CheckpointError(
        "unrecognised state dict: expected an updlrm checkpoint, a facebookresearch/dlrm state dict "
        "(emb_l.*, bot_l.*, top_l.*) or a TorchRec DLRM one (sparse_arch.*, dense_arch.*, over_arch.*); "
        f"first keys: {', '.join(keys[:4])}"
    )


def load_state_dict_checked(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "") -> None:
    """Copy ``state_dict`` into ``model`` after checking every tensor: the first missing,
    unexpected or wrongly shaped tensor raises :class:`CheckpointError` (name, expected shape,
    found shape) and the model is left unchanged."""
    where = f"{source}: " if source else ""
    own = model.state_dict()
    for name, ref in own.items():
        if name not in state_dict:
            raise CheckpointError(f"{where}missing tensor {name!r} (expected shape {_shape(ref)})")
        found = state_dict[name]
        if tuple(found.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{where}tensor {name!r}: expected shape {_shape(ref)}, found shape {_shape(found)}"
            )
        if not (found.is_floating_point() or ref.dtype == found.dtype):
            raise CheckpointError(f"{where}tensor {name!r}: expected dtype {ref.dtype}, found {found.dtype}")
    extra = [k for k in state_dict if k not in own]
    if extra:
        raise CheckpointError(f"{where}unexpected tensor {extra[0]!r} (shape {_shape(state_dict[extra[0]])})")
    with torch.no_grad():
        for name, ref in own.items():
            ref.copy_(state_dict[name].to(ref.dtype))


def _new_model(config: DLRMConfig):
    from updlrm.model import DLRM

    return DLRM(config)


def _mlp_linear_names(prefix: str, n: int) -> list[str]:
    """Our Sequential(Linear, act, Linear, act, ...) layer names: prefix.0, prefix.2, ..."""
    return [f"{prefix}.{2 * k}" for k in range(n)]


def _check_mapping(config: DLRMConfig, mapping: Mapping[str, str], source_sd: Mapping[str, torch.Tensor], source: str):
    """Check the source tensors named in ``mapping`` (ours -> theirs) against a model of ``config``."""
    expected = _expected_shapes(config)
    for ours, theirs in mapping.items():
        want = expected[ours]
        if theirs not in source_sd:
            raise CheckpointError(f"{source}: missing tensor {theirs!r} (expected shape {want})")
        got = _shape(source_sd[theirs])
        if got != want:
            raise CheckpointError(f"{source}: tensor {theirs!r}: expected shape {want}, found shape {got}")


def _expected_shapes(config: DLRMConfig) -> dict[str, list[int]]:
    """Shape of every parameter of ``DLRM(config)``, without building it."""
    out: dict[str, list[int]] = {}
    width = config.n_dense
    for k, w in enumerate(config.bottom_mlp):
        out[f"bottom_mlp.{2 * k}.weight"], out[f"bottom_mlp.{2 * k}.bias"] = [w, width], [w]
        width = w
    for t, spec in enumerate(config.tables):
        out[f"embeddings.{t}.weight"] = [spec.rows, spec.dim]
    width = config.top_input_dim
    for k, w in enumerate(config.top_mlp):
        out[f"top_mlp.{2 * k}.weight"], out[f"top_mlp.{2 * k}.bias"] = [w, width], [w]
        width = w
    return out


def _indexed(sd: Mapping[str, torch.Tensor], pattern: re.Pattern, group: int = 1) -> list[int]:
    return sorted({int(m.group(group)) for k in sd if (m := pattern.match(k))})


# -- facebookresearch/dlrm ------------------------------------------------------------------------
def _dlrm_layers(sd: Mapping[str, torch.Tensor], which: str) -> list[int]:
    return sorted({int(m.group(2)) for k in sd if (m := _DLRM_MLP.match(k)) and m.group(1) == which})


def _infer_interaction_itself(top_in: int, d: int, nr_tables: int, source: str) -> bool:
    f = nr_tables + 1
    if top_in == d + f * (f - 1) // 2:
        return False
    if top_in == d + f * (f + 1) // 2:
        return True
    raise CheckpointError(
        f"{source}: the top MLP takes {top_in} inputs, but d={d} with {nr_tables} tables gives "
        f"{d + f * (f - 1) // 2} (dot interaction) or {d + f * (f + 1) // 2} (with the diagonal)"
    )


def from_dlrm_state_dict(
    state_dict,
    config: DLRMConfig | None = None,
    table_names: Sequence[str] | None = None,
    name: str = "dlrm-import",
):
    """A :class:`updlrm.model.DLRM` with the weights of a facebookresearch/dlrm ``DLRM_Net``.

    ``state_dict``: the model's state dict, a dlrm checkpoint dict (``{"state_dict": ...}``) or
    a path to one. ``config``: check against it; when None it is inferred from the shapes
    (``n_dense``, MLP widths, table rows, ``interaction_itself`` from the top MLP's input width).
    Only sum-pooled plain embeddings are supported (no QR/MD embeddings, no learned pooling weights).
    """
    source = str(state_dict) if isinstance(state_dict, (str, os.PathLike)) else "dlrm state dict"
    sd = _unwrap(_read(state_dict))
    unsupported = [k for k in sd if not (_DLRM_EMB.match(k) or _DLRM_MLP.match(k))]
    if unsupported:
        raise CheckpointError(
            f"{source}: unsupported tensor {unsupported[0]!r} (only emb_l.*.weight, bot_l.*, top_l.* are "
            "imported: QR/mixed-dimension embeddings and learned pooling weights are not supported)"
        )
    emb = _indexed(sd, _DLRM_EMB)
    bot = _dlrm_layers(sd, "bot_l")
    top = _dlrm_layers(sd, "top_l")
    if not emb or not bot or not top:
        raise CheckpointError(f"{source}: needs emb_l.*, bot_l.* and top_l.* tensors")
    if emb != list(range(len(emb))):
        missing = sorted(set(range(emb[-1] + 1)) - set(emb))[0]
        raise CheckpointError(f"{source}: missing tensor 'emb_l.{missing}.weight'")
    if config is None:
        d = int(sd[f"emb_l.{emb[0]}.weight"].shape[1])
        names = list(table_names) if table_names is not None else [f"T{t + 1}" for t in range(len(emb))]
        if len(names) != len(emb):
            raise CheckpointError(f"{source}: {len(emb)} tables but {len(table_names)} table_names")
        tables = tuple(TableSpec(names[t], int(sd[f"emb_l.{t}.weight"].shape[0]), d) for t in range(len(emb)))
        top_in = int(sd[f"top_l.{top[0]}.weight"].shape[1])
        config = DLRMConfig(
            name=name,
            n_dense=int(sd[f"bot_l.{bot[0]}.weight"].shape[1]),
            embedding_dim=d,
            bottom_mlp=tuple(int(sd[f"bot_l.{i}.weight"].shape[0]) for i in bot),
            top_mlp=tuple(int(sd[f"top_l.{i}.weight"].shape[0]) for i in top),
            tables=tables,
            interaction_itself=_infer_interaction_itself(top_in, d, len(tables), source),
        )
    if len(emb) != config.nr_tables:
        raise CheckpointError(f"{source}: has {len(emb)} embedding tables, the config {config.nr_tables}")
    if len(bot) != len(config.bottom_mlp) or len(top) != len(config.top_mlp):
        raise CheckpointError(
            f"{source}: has {len(bot)} bottom and {len(top)} top Linear layers; the config "
            f"{len(config.bottom_mlp)} and {len(config.top_mlp)}"
        )
    mapping: dict[str, str] = {}
    for t in range(config.nr_tables):
        mapping[f"embeddings.{t}.weight"] = f"emb_l.{t}.weight"
    for ours, i in zip(_mlp_linear_names("bottom_mlp", len(bot)), bot):
        mapping[f"{ours}.weight"], mapping[f"{ours}.bias"] = f"bot_l.{i}.weight", f"bot_l.{i}.bias"
    for ours, i in zip(_mlp_linear_names("top_mlp", len(top)), top):
        mapping[f"{ours}.weight"], mapping[f"{ours}.bias"] = f"top_l.{i}.weight", f"top_l.{i}.bias"
    _check_mapping(config, mapping, sd, source)
    model = _new_model(config)
    load_state_dict_checked(model, {ours: sd[theirs] for ours, theirs in mapping.items()}, source)
    return model


def to_dlrm_state_dict(model) -> dict[str, torch.Tensor]:
    """Our model's weights under facebookresearch/dlrm ``DLRM_Net`` names (cloned tensors)."""
    out: dict[str, torch.Tensor] = {}
    for t, w in enumerate(model.embedding_weights()):
        out[f"emb_l.{t}.weight"] = w.detach().clone()
    for ours, theirs in (("bottom_mlp", "bot_l"), ("top_mlp", "top_l")):
        for i, layer in enumerate(getattr(model, ours)):
            if isinstance(layer, torch.nn.Linear):
                out[f"{theirs}.{i}.weight"] = layer.weight.detach().clone()
                out[f"{theirs}.{i}.bias"] = layer.bias.detach().clone()
    return out


# -- TorchRec -------------------------------------------------------------------------------------
def _triu_position(a: torch.Tensor, b: torch.Tensor, f: int) -> torch.Tensor:
    """Position of pair (a, b), a < b, in row-major upper-triangle order of an f x f matrix."""
    return a * f - a * (a + 1) // 2 + (b - a - 1)


def _torchrec_column_order(config: DLRMConfig) -> torch.Tensor:
    """For each of our top-MLP input columns, the TorchRec column holding the same feature."""
    f, d = config.nr_features, config.embedding_dim
    i, j = torch.tril_indices(f, f, offset=-1)  # ours: (i, j), i > j, row-major
    theirs = _triu_position(j, i, f)  # the same dot product at (j, i) in TorchRec's order
    return torch.cat([torch.arange(d), d + theirs])


def from_torchrec_state_dict(
    state_dict,
    config: DLRMConfig | None = None,
    name: str = "torchrec-import",
):
    """A :class:`updlrm.model.DLRM` with the weights of a TorchRec ``DLRM`` state dict.

    Tables are taken in the collection's order (the state dict's key order), named as in
    TorchRec. Each table must serve one feature (the top MLP's input width is checked against
    that). ``config``: check against it, else inferred from the shapes. Predictions equal
    ``sigmoid`` of the TorchRec model's logits.
    """
    source = str(state_dict) if isinstance(state_dict, (str, os.PathLike)) else "TorchRec state dict"
    sd = _unwrap(_read(state_dict))
    table_keys = [k for k in sd if k.startswith(_TR_EBC)]
    bad_tables = [k for k in table_keys if not k.endswith(".weight")]
    if bad_tables:
        raise CheckpointError(f"{source}: unsupported embedding tensor {bad_tables[0]!r}")
    dense = _indexed(sd, _TR_DENSE)
    over = _indexed(sd, _TR_OVER)
    known = set(table_keys) | {k for k in sd if _TR_DENSE.match(k) or _TR_OVER.match(k) or _TR_LAST.match(k)}
    unknown = [k for k in sd if k not in known]
    if unknown:
        raise CheckpointError(f"{source}: unsupported tensor {unknown[0]!r} (not part of TorchRec's DLRM)")
    if not table_keys or not dense or "over_arch.model.1.weight" not in sd:
        raise CheckpointError(
            f"{source}: needs {_TR_EBC}<table>.weight, dense_arch.model._mlp.* and over_arch.model.1.* tensors"
        )
    names = [k[len(_TR_EBC) : -len(".weight")] for k in table_keys]
    if config is None:
        d = int(sd[table_keys[0]].shape[1])
        tables = tuple(TableSpec(n, int(sd[k].shape[0]), d) for n, k in zip(names, table_keys))
        config = DLRMConfig(
            name=name,
            n_dense=int(sd[f"dense_arch.model._mlp.{dense[0]}._linear.weight"].shape[1]),
            embedding_dim=d,
            bottom_mlp=tuple(int(sd[f"dense_arch.model._mlp.{i}._linear.weight"].shape[0]) for i in dense),
            top_mlp=tuple(int(sd[f"over_arch.model.0._mlp.{i}._linear.weight"].shape[0]) for i in over)
            + (int(sd["over_arch.model.1.weight"].shape[0]),),
            tables=tables,
        )
    if config.interaction_itself:
        raise CheckpointError(f"{source}: TorchRec's DLRM has no diagonal interactions; config says interaction_itself")
    if len(table_keys) != config.nr_tables:
        raise CheckpointError(f"{source}: has {len(table_keys)} embedding tables, the config {config.nr_tables}")
    if len(dense) != len(config.bottom_mlp) or len(over) + 1 != len(config.top_mlp):
        raise CheckpointError(
            f"{source}: has {len(dense)} dense and {len(over) + 1} over-arch Linear layers; the config "
            f"{len(config.bottom_mlp)} and {len(config.top_mlp)}"
        )
    mapping: dict[str, str] = {}
    for t, k in enumerate(table_keys):
        mapping[f"embeddings.{t}.weight"] = k
    for ours, i in zip(_mlp_linear_names("bottom_mlp", len(dense)), dense):
        for p in ("weight", "bias"):
            mapping[f"{ours}.{p}"] = f"dense_arch.model._mlp.{i}._linear.{p}"
    top_names = _mlp_linear_names("top_mlp", len(config.top_mlp))
    for ours, i in zip(top_names[:-1], over):
        for p in ("weight", "bias"):
            mapping[f"{ours}.{p}"] = f"over_arch.model.0._mlp.{i}._linear.{p}"
    for p in ("weight", "bias"):
        mapping[f"{top_names[-1]}.{p}"] = f"over_arch.model.1.{p}"
    _check_mapping(config, mapping, sd, source)
    ours_sd = {ours: sd[theirs] for ours, theirs in mapping.items()}
    first = f"{top_names[0]}.weight"
    ours_sd[first] = ours_sd[first][:, _torchrec_column_order(config)]  # TorchRec -> dlrm order
    model = _new_model(config)
    load_state_dict_checked(model, ours_sd, source)
    return model


def load_torchrec_embeddings(model, ebc_state_dict, source: str = "EmbeddingBagCollection state dict") -> None:
    """Load a TorchRec ``EmbeddingBagCollection`` state dict (``embedding_bags.<table>.weight``,
    collection order) into ``model``'s tables; MLP weights stay. Checked first, all or nothing."""
    sd = _unwrap(_read(ebc_state_dict))
    if any(k.startswith(_TR_EBC) for k in sd):
        sd = {k[len("sparse_arch.embedding_bag_collection.") :]: v for k, v in sd.items() if k.startswith(_TR_EBC)}
    keys = [k for k in sd if k.startswith("embedding_bags.") and k.endswith(".weight")]
    if len(keys) != len(sd):
        other = next(k for k in sd if k not in keys)
        raise CheckpointError(f"{source}: unexpected tensor {other!r}")
    weights = model.embedding_weights()
    if len(keys) != len(weights):
        raise CheckpointError(f"{source}: has {len(keys)} tables, the model {len(weights)}")
    for k, w in zip(keys, weights):
        if tuple(sd[k].shape) != tuple(w.shape):
            raise CheckpointError(f"{source}: tensor {k!r}: expected shape {_shape(w)}, found shape {_shape(sd[k])}")
    with torch.no_grad():
        for k, w in zip(keys, weights):
            w.copy_(sd[k].to(w.dtype))


def to_torchrec_state_dict(model) -> dict[str, torch.Tensor]:
    """Our model's weights under TorchRec ``DLRM`` names (top-MLP columns in TorchRec's order)."""
    config = model.config
    out: dict[str, torch.Tensor] = {}
    for spec, w in zip(config.tables, model.embedding_weights()):
        out[f"{_TR_EBC}{spec.name}.weight"] = w.detach().clone()
    linears = [m for m in model.bottom_mlp if isinstance(m, torch.nn.Linear)]
    for k, layer in enumerate(linears):
        out[f"dense_arch.model._mlp.{k}._linear.weight"] = layer.weight.detach().clone()
        out[f"dense_arch.model._mlp.{k}._linear.bias"] = layer.bias.detach().clone()
    tops = [m for m in model.top_mlp if isinstance(m, torch.nn.Linear)]
    order = _torchrec_column_order(config)
    for k, layer in enumerate(tops):
        w = layer.weight.detach().clone()
        if k == 0:
            w_tr = torch.empty_like(w)
            w_tr[:, order] = w  # inverse of the import permutation
            w = w_tr
        if k < len(tops) - 1:
            out[f"over_arch.model.0._mlp.{k}._linear.weight"] = w
            out[f"over_arch.model.0._mlp.{k}._linear.bias"] = layer.bias.detach().clone()
        else:
            out["over_arch.model.1.weight"] = w
            out["over_arch.model.1.bias"] = layer.bias.detach().clone()
    return out


# -- our checkpoint -------------------------------------------------------------------------------
def save(model, path: str | os.PathLike) -> Path:
    """Write ``model`` (config + weights) as an updlrm checkpoint. Returns the path."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config_to_dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load(path_or_obj, config: DLRMConfig | None = None, format: str | None = None):
    """A :class:`updlrm.model.DLRM` from an updlrm checkpoint, a facebookresearch/dlrm or a TorchRec
    DLRM state dict (``format`` ``"updlrm"``, ``"dlrm"``, ``"torchrec"``; detected when None).

    ``config`` is required for a plain updlrm state dict (no config inside) and optional otherwise
    (then it is checked against the tensors).
    """
    obj = _read(path_or_obj)
    source = str(path_or_obj) if isinstance(path_or_obj, (str, os.PathLike)) else "checkpoint"
    fmt = format or detect_format(obj)
    if fmt == "updlrm":
        version = obj.get("version")
        if version != CHECKPOINT_VERSION:
            raise CheckpointError(f"{source}: checkpoint version {version}, this build reads {CHECKPOINT_VERSION}")
        saved = config_from_dict(obj["config"])
        if config is not None and config != saved:
            raise CheckpointError(f"{source}: the checkpoint's config differs from the one given")
        model = _new_model(saved)
        load_state_dict_checked(model, _unwrap(obj["state_dict"]), source)
        return model
    if fmt == "updlrm-state-dict":
        if config is None:
            raise CheckpointError(f"{source}: a bare updlrm state dict has no config; pass config=")
        model = _new_model(config)
        load_state_dict_checked(model, _unwrap(obj), source)
        return model
    if fmt == "dlrm":
        return from_dlrm_state_dict(obj, config)
    if fmt == "torchrec":
        return from_torchrec_state_dict(obj, config)
    if fmt == "torchrec-ebc":
        raise CheckpointError(
            f"{source}: holds only an EmbeddingBagCollection; build a model and use load_torchrec_embeddings"
        )
    raise CheckpointError(f"unknown format {fmt!r}; use 'updlrm', 'dlrm' or 'torchrec'")
