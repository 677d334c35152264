"""Model import and export: our own checkpoints, facebookresearch/dlrm and TorchRec state dicts.

Three sources give an :class:`updlrm.model.DLRM`:

* **our checkpoint** (:func:`save` / :func:`load`): ``torch.save({"format": "updlrm-checkpoint",
  "version": 1, "config": <DLRMConfig as a dict>, "state_dict": model.state_dict()})``.
* **facebookresearch/dlrm** (``dlrm_s_pytorch.py``'s ``DLRM_Net``; ``--save-model`` writes a dict
  with the model under ``"state_dict"`` next to numpy scalars such as ``test_acc`` and
  ``train_loss``): ``emb_l.{t}.weight`` [rows_t, d], ``bot_l.{2k}.weight/bias`` and
  ``top_l.{2k}.weight/bias`` (``nn.Sequential`` of Linear, activation, Linear, ...). Same maths
  as ours (dot or cat interaction, lower triangle in the same order): the tensors are copied as
  they are.
* **TorchRec** (``torchrec.models.dlrm.DLRM``): ``sparse_arch.embedding_bag_collection.
  embedding_bags.<table>.weight`` (tables in collection order), ``dense_arch.model._mlp.{k}.
  _linear.weight/bias``, ``over_arch.model.0._mlp.{k}._linear.weight/bias`` and
  ``over_arch.model.1.weight/bias`` (the last, activation-free layer). TorchRec keeps the
  interactions in *upper*-triangle row-major order ((0,1), (0,2), ...) and returns logits; we use
  dlrm's lower-triangle order and a sigmoid, so the top MLP's first-layer columns are permuted on
  import (dot products are symmetric, so the model computes the same function). A bare
  ``EmbeddingBagCollection`` state dict (``embedding_bags.<table>.weight``) loads into the tables of
  a given model with :func:`load_torchrec_embeddings`.

Every file is read with ``torch.load(weights_only=True)``, which rebuilds tensors and plain
containers only; numpy's scalar constructor and the dtypes of numeric scalars are added to that
allowlist (nothing else), so a pickle that would run code is refused with the name it needs.

What the tensors cannot settle is never guessed silently. When the shapes fit more than one
architecture (dot and cat interaction of the same width; the diagonal of ``interaction_itself``,
which always has the width of a dot model with one more table) the load is refused, naming the
candidates and the option that picks one (``interaction=``, ``interaction_itself=``). What no
file records (pooling, a final sigmoid) is assumed (sum pooling; dlrm's sigmoid; the sigmoid of
TorchRec's logits), and each assumption made is listed in ``model.import_notes`` (``updlrm serve``
logs them); passing the option removes the note.

Prefixes added by wrappers (``module.`` from DataParallel/DDP, ``model.`` from TorchRec's
``DLRMTrain``, ``_orig_mod.`` from torch.compile) are stripped. The configuration is inferred from
the tensor shapes unless given; when a config is given, every tensor is checked against it first
and the error names the first mismatch (source name, expected shape, found shape). Nothing is
copied into a model until every check has passed.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
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
_DLRM_MD = re.compile(r"^emb_l\.(\d+)\.(embs|proj)\.weight$")  # tricks/md_embedding_bag.py PrEmbeddingBag
_DLRM_QR = re.compile(r"^emb_l\.(\d+)\.weight_[qr]$")  # tricks/qr_embedding_bag.py QREmbeddingBag


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


#: numpy scalar types a checkpoint may hold next to its tensors (dlrm saves ``test_acc`` as
#: np.float64, ``train_loss`` as np.float32, counters as integers). Object, string and void
#: dtypes are left out: only plain numbers are rebuilt.
_NUMPY_SCALAR_CODES = ("?", "b", "h", "i", "l", "q", "B", "H", "I", "L", "Q", "e", "f", "d", "g", "F", "D", "G")


def _numpy_safe_globals() -> list:
    """The exact allowlist for ``torch.load(weights_only=True)``: numpy's scalar constructor (under
    its numpy 1 and numpy 2 module names) and the dtype classes of plain numeric scalars. A numpy
    scalar pickles as ``scalar(dtype, raw_bytes)``, which rebuilds a number and runs nothing else."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed: list = [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    allowed += sorted({type(np.dtype(code)) for code in _NUMPY_SCALAR_CODES}, key=lambda t: t.__name__)
    return allowed


def _allow_numpy_scalars():
    """A context in which weights_only loading also accepts the numpy scalars above (a no-op on
    torch builds without ``torch.serialization.safe_globals``, torch < 2.5)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    return safe_globals(_numpy_safe_globals()) if safe_globals is not None else nullcontext()


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # first byte of a pickle of protocol >= 2 (torch's legacy format)
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|but got <class '([^']+)'>")


def _read(path_or_obj) -> object:
    """The object in a checkpoint file (``torch.load(weights_only=True)`` with numpy scalars
    allowed), or ``path_or_obj`` itself when it is not a path. Raises CheckpointError saying
    whether the file is empty, not a torch file, corrupt, or refused because it pickles code."""
    if not isinstance(path_or_obj, (str, os.PathLike)):
        return path_or_obj
    path = Path(path_or_obj)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a model file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); was the save interrupted?")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != _ZIP_MAGIC and head[0] != _PICKLE_PROTO:
        raise CheckpointError(
            f"{path}: not a torch checkpoint ({size} bytes starting {head!r}; torch.save writes a zip "
            "archive, or a pickle in its legacy format)"
        )
    try:
        with _allow_numpy_scalars(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused:
            what = refused.group(1) or refused.group(2)
            hint = "" if hasattr(torch.serialization, "safe_globals") else (
                f" (torch {torch.__version__} cannot allowlist numpy scalars; torch >= 2.5 can)"
            )
            raise CheckpointError(
                f"{path}: refused: the file's pickle needs {what}, which is neither a tensor nor a numpy "
                f"scalar; rebuilding it could run code. Checkpoints are read with weights_only=True{hint}. "
                "If you trust the file, re-save just its tensors: torch.save(torch.load(path, "
                "weights_only=False)['state_dict'], 'weights.pt')"
            ) from None
        raise CheckpointError(f"{path}: corrupt torch file ({size} bytes): {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/EOFError/KeyError/... on bad bytes
        if "TorchScript" in str(exc):
            raise CheckpointError(
                f"{path}: is a TorchScript archive (torch.jit.save), which holds code; save the model's "
                "state_dict() with torch.save and load that"
            ) from None
        raise CheckpointError(
            f"{path}: corrupt or truncated torch file ({size} bytes): {type(exc).__name__}: {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    """The gist of a torch load error: its WeightsUnpickler reason or first sentence, short."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    text = text.strip().split("\n\n", 1)[0]
    text = " ".join(text.split())
    text = text.split(". ", 1)[0]
    return (text[:200] + "...") if len(text) > 200 else (text or "no further detail")


def detect_format(obj) -> str:
    """``"updlrm"``, ``"dlrm"``, ``"torchrec"`` or ``"torchrec-ebc"`` for a loaded object."""
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return "updlrm"
    sd = _unwrap(obj)
    keys = list(sd)
    if any(k.startswith("emb_l.") for k in keys) and any(k.startswith(("bot_l.", "top_l.")) for k in keys):
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


# -- settings the tensors cannot show ---------------------------------------------------------------
def _check_pooling(pooling: str | None, source: str, notes: list[str], origin: str) -> None:
    if pooling not in (None, "sum", "mean"):
        raise CheckpointError(f"{source}: pooling must be 'sum' or 'mean', got {pooling!r}")
    if pooling == "mean":
        raise CheckpointError(
            f"{source}: pooling='mean' is not supported: every updlrm backend (cpu, cuda, pim) sums each bag"
        )
    if pooling is None:
        notes.append(
            f"assumed sum pooling ({origin}; the state dict does not record pooling): a model trained "
            "with mean pooling would be served wrong (option pooling=sum confirms; mean is refused)"
        )


def _check_options_against(config: DLRMConfig, source: str, **options) -> None:
    """With an explicit config, the import options must agree with it (or be left None)."""
    wrong = [f"{k}={v!r} (config: {getattr(config, k)!r})" for k, v in options.items()
             if v is not None and v != getattr(config, k)]
    if wrong:
        raise CheckpointError(f"{source}: option(s) contradict the config given: {', '.join(wrong)}")


def _final_activation(final_sigmoid: bool | None, without: str) -> str | None:
    return None if final_sigmoid is None else ("sigmoid" if final_sigmoid else without)


# -- facebookresearch/dlrm ------------------------------------------------------------------------
def _dlrm_layers(sd: Mapping[str, torch.Tensor], which: str) -> list[int]:
    return sorted({int(m.group(2)) for k in sd if (m := _DLRM_MLP.match(k)) and m.group(1) == which})


def _dlrm_unsupported(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Name the dlrm embedding variants we cannot serve, by the keys dlrm_s_pytorch.py gives them."""
    keys = list(sd)
    md = [k for k in keys if _DLRM_MD.match(k)]
    if md:
        raise CheckpointError(
            f"{source}: mixed-dimension embeddings (dlrm --md-flag: PrEmbeddingBag tensors such as {md[0]!r}) "
            "are not supported: updlrm needs every table at the same width d, with no projection"
        )
    qr = [k for k in keys if _DLRM_QR.match(k)]
    if qr:
        raise CheckpointError(
            f"{source}: quotient-remainder embeddings (dlrm --qr-flag: {qr[0]!r}) are not supported"
        )
    vw = [k for k in keys if k.startswith("v_W_l.")]
    if vw:
        raise CheckpointError(
            f"{source}: learned per-row pooling weights (dlrm --weighted-pooling=learned: {vw[0]!r}) are not supported"
        )
    other = [k for k in keys if not (_DLRM_EMB.match(k) or _DLRM_MLP.match(k))]
    if other:
        raise CheckpointError(
            f"{source}: unsupported tensor {other[0]!r} (only emb_l.<t>.weight, bot_l.* and top_l.* are imported)"
        )


def _dlrm_widths(d: int, nr_tables: int) -> dict[tuple[str, bool], int]:
    """Top-MLP input width of each dlrm interaction for ``nr_tables`` tables of width ``d``."""
    f = nr_tables + 1
    return {("dot", False): d + f * (f - 1) // 2, ("dot", True): d + f * (f + 1) // 2, ("cat", False): f * d}


_ARCH_LABEL = {
    ("dot", False): "dot interaction (interaction='dot')",
    ("dot", True): "dot interaction with the diagonal (interaction_itself=True)",
    ("cat", False): "cat interaction (interaction='cat')",
}


def _dlrm_architecture(
    top_in: int, d: int, nr_tables: int, interaction: str | None, itself: bool | None, source: str,
    notes: list[str],
) -> tuple[str, bool]:
    """(interaction, interaction_itself) of a dlrm model whose top MLP takes ``top_in`` inputs.

    Candidates are dot, dot with the diagonal, and cat over the tables in the file; the options
    narrow them. The diagonal is never inferred: a dot model with one table missing from the file
    has the very same width (d + F(F+1)/2 for F features = d + (F+1)F/2 for F+1), so it must be
    asked for. More than one candidate left -> CheckpointError naming each and its option."""
    if interaction not in (None, "dot", "cat"):
        raise CheckpointError(f"{source}: interaction must be 'dot' or 'cat', got {interaction!r}")
    if interaction == "cat" and itself:
        raise CheckpointError(f"{source}: interaction_itself applies to the dot interaction, not 'cat'")
    widths = _dlrm_widths(d, nr_tables)
    allowed = [a for a in widths if (interaction is None or a[0] == interaction) and (itself is None or a[1] == itself)]
    fits = [a for a in allowed if widths[a] == top_in]
    # Readings with tables missing from the file: a dot model with more tables of the same width.
    missing = [n - nr_tables for n in range(nr_tables + 1, nr_tables + 1 + top_in)
               if _dlrm_widths(d, n)[("dot", False)] == top_in]
    if not fits:
        given = ", ".join(f"{widths[a]} ({_ARCH_LABEL[a]})" for a in allowed)
        why = ""
        if missing:
            why = f"; a dot model with {nr_tables + missing[0]} tables would take {top_in}: is a table missing from the file?"
        raise CheckpointError(
            f"{source}: the top MLP takes {top_in} inputs, but d={d} with {nr_tables} tables gives {given}{why}"
        )
    readings = [f"{nr_tables} tables, {_ARCH_LABEL[a]}" for a in fits]
    unasked = [a for a in fits if (a == ("dot", True) and itself is not True) or (a == ("cat", False) and interaction != "cat")]
    if missing and unasked:
        m = missing[0]
        readings.append(
            f"{nr_tables + m} tables with dot interaction, {m} missing from the file "
            f"(emb_l.{nr_tables}.weight{' ...' if m > 1 else ''} absent)"
        )
    if len(readings) > 1:
        raise CheckpointError(
            f"{source}: the tensors fit more than one dlrm architecture (top MLP input width {top_in}, "
            f"d={d}): " + "; ".join(readings) + ". Pick one with interaction='dot'|'cat' and "
            "interaction_itself=True|False (or pass config=); a missing table cannot be chosen"
        )
    arch = fits[0]
    if arch in unasked:
        notes.append(f"{_ARCH_LABEL[arch]} inferred from the top MLP's input width {top_in}")
    return arch


def from_dlrm_state_dict(
    state_dict,
    config: DLRMConfig | None = None,
    table_names: Sequence[str] | None = None,
    name: str = "dlrm-import",
    *,
    interaction: str | None = None,
    interaction_itself: bool | None = None,
    final_sigmoid: bool | None = None,
    source: str | None = None,
):
    """A :class:`updlrm.model.DLRM` with the weights of a facebookresearch/dlrm ``DLRM_Net``.

    ``state_dict``: the model's state dict, a dlrm checkpoint dict (``{"state_dict": ...}``, as
    ``--save-model`` writes) or a path to one. ``config``: check against it; when None it is
    inferred from the shapes (``n_dense``, MLP widths, table rows, the interaction from the top
    MLP's input width; see :func:`_dlrm_architecture` for when that is refused as ambiguous).

    Settings the file cannot show, with what is assumed when they are not given:
    ``final_sigmoid`` (True: dlrm_s_pytorch.py builds ``sigmoid_top`` = the last layer; False for
    a ``DLRM_Net(sigmoid_top=-1)``, whose last layer then ends in ReLU, as dlrm builds it). The
    assumptions made are listed in ``model.import_notes``. Only sum-pooled plain embeddings are
    supported (no QR or mixed-dimension embeddings, no learned pooling weights).
    """
    source = source or (str(state_dict) if isinstance(state_dict, (str, os.PathLike)) else "dlrm state dict")
    sd = _unwrap(_read(state_dict))
    _dlrm_unsupported(sd, source)
    emb = _indexed(sd, _DLRM_EMB)
    bot = _dlrm_layers(sd, "bot_l")
    top = _dlrm_layers(sd, "top_l")
    if not emb or not bot or not top:
        raise CheckpointError(f"{source}: needs emb_l.*, bot_l.* and top_l.* tensors")
    if emb != list(range(len(emb))):
        missing = sorted(set(range(emb[-1] + 1)) - set(emb))[0]
        raise CheckpointError(f"{source}: missing tensor 'emb_l.{missing}.weight'")
    dims = {t: int(sd[f"emb_l.{t}.weight"].shape[1]) for t in emb}
    if len(set(dims.values())) > 1:
        first = dims[0]
        odd = next(t for t in emb if dims[t] != first)
        raise CheckpointError(
            f"{source}: tables of different widths (emb_l.0.weight has d={first}, emb_l.{odd}.weight "
            f"d={dims[odd]}): mixed-dimension tables are not supported; updlrm needs one width d"
        )
    notes: list[str] = []
    final = _final_activation(final_sigmoid, without="relu")
    if config is None:
        d = dims[0]
        names = list(table_names) if table_names is not None else [f"T{t + 1}" for t in range(len(emb))]
        if len(names) != len(emb):
            raise CheckpointError(f"{source}: {len(emb)} tables but {len(table_names)} table_names")
        tables = tuple(TableSpec(names[t], int(sd[f"emb_l.{t}.weight"].shape[0]), d) for t in range(len(emb)))
        top_in = int(sd[f"top_l.{top[0]}.weight"].shape[1])
        kind, itself = _dlrm_architecture(top_in, d, len(tables), interaction, interaction_itself, source, notes)
        if final is None:
            final = "sigmoid"
            notes.append(
                "assumed a sigmoid after the last top layer (dlrm_s_pytorch.py's default; the file cannot "
                "show it); option final_sigmoid=False for a DLRM_Net built with sigmoid_top=-1"
            )
        config = DLRMConfig(
            name=name,
            n_dense=int(sd[f"bot_l.{bot[0]}.weight"].shape[1]),
            embedding_dim=d,
            bottom_mlp=tuple(int(sd[f"bot_l.{i}.weight"].shape[0]) for i in bot),
            top_mlp=tuple(int(sd[f"top_l.{i}.weight"].shape[0]) for i in top),
            tables=tables,
            interaction=kind,
            interaction_itself=itself,
            final_activation=final,
        )
    else:
        _check_options_against(config, source, interaction=interaction, interaction_itself=interaction_itself,
                               final_activation=final)
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
    model.import_notes = tuple(notes)
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


def _torchrec_features_hint(top_in: int, d: int, nr_tables: int, source: str) -> None:
    """Explain an over-arch input width that does not fit one feature per table."""
    f = nr_tables + 1
    if top_in == d + f * (f - 1) // 2:
        return
    fits = [n for n in range(1, top_in + 1) if d + (n + 1) * n // 2 == top_in]
    if fits and fits[0] > nr_tables:
        raise CheckpointError(
            f"{source}: the over-arch takes {top_in} inputs, which fits {fits[0]} sparse features, but the "
            f"collection holds {nr_tables} tables. Either a table serves several features (TorchRec "
            "EmbeddingBagConfig.feature_names with more than one name), which updlrm does not support: "
            "each table gives one pooled vector here, so re-export the model with one table per feature; "
            "or a table is missing from the state dict"
        )
    raise CheckpointError(
        f"{source}: the over-arch takes {top_in} inputs, but d={d} with {nr_tables} tables (one feature "
        f"each) gives {d + f * (f - 1) // 2}" + (f"; it fits {fits[0]} features: are tables extra?" if fits else "")
    )


def from_torchrec_state_dict(
    state_dict,
    config: DLRMConfig | None = None,
    name: str = "torchrec-import",
    *,
    final_sigmoid: bool | None = None,
    pooling: str | None = None,
    interaction: str | None = None,
    interaction_itself: bool | None = None,
    source: str | None = None,
):
    """A :class:`updlrm.model.DLRM` with the weights of a TorchRec ``DLRM`` state dict.

    Tables are taken in the collection's order (the state dict's key order), named as in
    TorchRec. Each table must serve one feature: the over-arch's input width is checked against
    that, and a table shared by several features is refused with the reason. ``config``: check
    against it, else inferred from the shapes.

    Settings the state dict cannot show, with what is assumed when they are not given (each
    assumption is listed in ``model.import_notes``): ``pooling`` ("sum", TorchRec's default;
    "mean" is refused, no backend averages bags) and ``final_sigmoid`` (True: predictions are
    ``sigmoid`` of TorchRec's logits; False: the logits themselves). ``interaction`` can only be
    "dot" and ``interaction_itself`` only False (TorchRec's DLRM has no other).
    """
    source = source or (str(state_dict) if isinstance(state_dict, (str, os.PathLike)) else "TorchRec state dict")
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
        if unknown[0].startswith("inter_arch."):
            raise CheckpointError(
                f"{source}: unsupported tensor {unknown[0]!r}: a learned interaction (inter_arch.*, as in "
                "TorchRec's DLRM_DCN or DLRM_Projection) is not supported, only DLRM's dot interaction"
            )
        raise CheckpointError(f"{source}: unsupported tensor {unknown[0]!r} (not part of TorchRec's DLRM)")
    if interaction not in (None, "dot") or interaction_itself:
        raise CheckpointError(
            f"{source}: TorchRec's DLRM has only the dot interaction without the diagonal; got "
            f"interaction={interaction!r}, interaction_itself={interaction_itself!r}"
        )
    notes: list[str] = []
    _check_pooling(pooling, source, notes, "TorchRec's default PoolingType.SUM")
    final = _final_activation(final_sigmoid, without="none")
    if not table_keys or not dense or "over_arch.model.1.weight" not in sd:
        raise CheckpointError(
            f"{source}: needs {_TR_EBC}<table>.weight, dense_arch.model._mlp.* and over_arch.model.1.* tensors"
        )
    names = [k[len(_TR_EBC) : -len(".weight")] for k in table_keys]
    if config is None:
        d = int(sd[table_keys[0]].shape[1])
        odd = next((k for k in table_keys if int(sd[k].shape[1]) != d), None)
        if odd is not None:
            raise CheckpointError(
                f"{source}: tables of different widths ({table_keys[0]!r} has d={d}, {odd!r} "
                f"d={int(sd[odd].shape[1])}): updlrm needs one embedding_dim for all tables"
            )
        first_top = f"over_arch.model.0._mlp.{over[0]}._linear.weight" if over else "over_arch.model.1.weight"
        _torchrec_features_hint(int(sd[first_top].shape[1]), d, len(table_keys), source)
        if final is None:
            final = "sigmoid"
            notes.append("predictions are sigmoid(logits) of TorchRec's DLRM, which returns logits; "
                         "option final_sigmoid=False serves the logits")
        tables = tuple(TableSpec(n, int(sd[k].shape[0]), d) for n, k in zip(names, table_keys))
        config = DLRMConfig(
            name=name,
            n_dense=int(sd[f"dense_arch.model._mlp.{dense[0]}._linear.weight"].shape[1]),
            embedding_dim=d,
            bottom_mlp=tuple(int(sd[f"dense_arch.model._mlp.{i}._linear.weight"].shape[0]) for i in dense),
            top_mlp=tuple(int(sd[f"over_arch.model.0._mlp.{i}._linear.weight"].shape[0]) for i in over)
            + (int(sd["over_arch.model.1.weight"].shape[0]),),
            tables=tables,
            final_activation=final,
        )
    else:
        _check_options_against(config, source, final_activation=final)
    if config.interaction != "dot":
        raise CheckpointError(f"{source}: TorchRec's DLRM has the dot interaction; config says {config.interaction!r}")
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
    model.import_notes = tuple(notes)
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
    if config.interaction != "dot" or config.interaction_itself:
        raise CheckpointError("TorchRec's DLRM has only the dot interaction without the diagonal; this model "
                              f"has interaction={config.interaction!r}, interaction_itself={config.interaction_itself}")
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


def load(
    path_or_obj,
    config: DLRMConfig | None = None,
    format: str | None = None,
    *,
    interaction: str | None = None,
    interaction_itself: bool | None = None,
    final_sigmoid: bool | None = None,
    pooling: str | None = None,
):
    """A :class:`updlrm.model.DLRM` from an updlrm checkpoint, a facebookresearch/dlrm or a TorchRec
    DLRM state dict (``format`` ``"updlrm"``, ``"dlrm"``, ``"torchrec"``; detected when None).

    ``config`` is required for a plain updlrm state dict (no config inside) and optional otherwise
    (then it is checked against the tensors). The keyword options settle what the tensors leave
    open (see :func:`from_dlrm_state_dict` and :func:`from_torchrec_state_dict`): ``interaction``
    ("dot"|"cat"), ``interaction_itself``, ``final_sigmoid`` and ``pooling`` ("sum"; "mean" is
    refused). When the shapes fit more than one architecture the load is refused with the
    candidates; what is assumed instead of read from the file is listed in ``model.import_notes``
    (empty for our own checkpoints, which record everything).
    """
    obj = _read(path_or_obj)
    source = str(path_or_obj) if isinstance(path_or_obj, (str, os.PathLike)) else "checkpoint"
    fmt = format or detect_format(obj)
    if fmt in ("updlrm", "updlrm-state-dict"):
        if fmt == "updlrm":
            version = obj.get("version")
            if version != CHECKPOINT_VERSION:
                raise CheckpointError(f"{source}: checkpoint version {version}, this build reads {CHECKPOINT_VERSION}")
            saved = config_from_dict(obj["config"])
            if config is not None and config != saved:
                raise CheckpointError(f"{source}: the checkpoint's config differs from the one given")
            config, tensors = saved, obj["state_dict"]
        elif config is None:
            raise CheckpointError(f"{source}: a bare updlrm state dict has no config; pass config=")
        else:
            tensors = obj
        _check_options_against(config, source, interaction=interaction, interaction_itself=interaction_itself)
        if final_sigmoid is not None and final_sigmoid != (config.final_activation == "sigmoid"):
            raise CheckpointError(
                f"{source}: final_sigmoid={final_sigmoid} contradicts the config (final_activation="
                f"{config.final_activation!r})"
            )
        if pooling not in (None, "sum"):
            _check_pooling(pooling, source, [], "")
        model = _new_model(config)
        load_state_dict_checked(model, _unwrap(tensors), source)
        model.import_notes = ()
        return model
    if fmt == "dlrm":
        if pooling not in (None, "sum"):
            _check_pooling(pooling, source, [], "")
        return from_dlrm_state_dict(obj, config, interaction=interaction, interaction_itself=interaction_itself,
                                    final_sigmoid=final_sigmoid, source=source)
    if fmt == "torchrec":
        return from_torchrec_state_dict(obj, config, final_sigmoid=final_sigmoid, pooling=pooling,
                                        interaction=interaction, interaction_itself=interaction_itself, source=source)
    if fmt == "torchrec-ebc":
        raise CheckpointError(
            f"{source}: holds only an EmbeddingBagCollection; build a model and use load_torchrec_embeddings"
        )
    raise CheckpointError(f"unknown format {fmt!r}; use 'updlrm', 'dlrm' or 'torchrec'")
