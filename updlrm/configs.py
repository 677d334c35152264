"""DLRM model configurations: the :class:`DLRMConfig` value type and the named standard configs.

Named configs (``configs.get(name)``; sources in shared DLRM.md):

============  ===  ====================  =======================  ==================================
name          dim  bottom MLP            top MLP                  tables
============  ===  ====================  =======================  ==================================
kaggle        16   13-512-256-64-16      (367)-512-256-1          26 Criteo Kaggle tables, 33.8M rows
terabyte      64   13-512-256-64         (415)-512-512-256-1      26 Criteo Terabyte (40M cap), 204M rows
mlperf        128  13-512-256-128        (479)-1024-1024-512-256-1  the same 26 Terabyte tables
synthetic     64   512-512-64            (100)-1024-1024-1024-1   8 x 1,000,000 rows
tiny          8    4-16-8                (d+F(F-1)/2)-16-1        4 small tables (tests)
============  ===  ====================  =======================  ==================================

As in facebookresearch/dlrm, the bottom MLP's first number is the dense-feature width and the top
MLP's input width is not configured: it is ``F(F-1)/2 + d`` with ``F = tables + 1`` features
(``F(F+1)/2 + d`` with ``interaction_itself``, ``F * d`` with ``interaction="cat"``). ``bottom_mlp`` and ``top_mlp`` below hold the
output widths of each Linear layer only.

``row_scale`` shrinks every table so that big configs fit this machine: ``rows' =
max(min(rows, 2), round(rows * row_scale))``, then capped at ``max_rows``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from updlrm.partition import TableSpec

__all__ = ["DLRMConfig", "get", "names", "KAGGLE_ROWS", "TERABYTE_ROWS", "INTERACTIONS", "FINAL_ACTIVATIONS"]

#: Feature interactions the model implements (facebookresearch/dlrm's two).
INTERACTIONS = ("dot", "cat")
#: What may follow the last top-MLP layer.
FINAL_ACTIVATIONS = ("sigmoid", "relu", "none")

#: Rows per table of Criteo Kaggle after dlrm preprocessing (shared DLRM.md).
KAGGLE_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
#: Rows per table of Criteo Terabyte with a 40M cap (torchrec_dlrm README, shared DLRM.md).
TERABYTE_ROWS = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10, 2209,
    11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)  # fmt: skip

#: A scaled table keeps at least this many rows (or its original count when smaller).
MIN_SCALED_ROWS = 2


@dataclass(frozen=True)
class DLRMConfig:
    """Shape and seed of a DLRM model (facebookresearch/dlrm semantics).

    Attributes:
        name: label for reports.
        n_dense: dense-feature width (the bottom MLP's input).
        embedding_dim: d, the width of every embedding row and of the bottom MLP's output.
        bottom_mlp: output width of each bottom Linear layer; the last must equal ``embedding_dim``.
        top_mlp: output width of each top Linear layer; the last must be 1 (the click logit).
        tables: one :class:`TableSpec` per categorical feature (``dim == embedding_dim``).
        interaction: ``"dot"`` (pairwise dot products, dlrm's default) or ``"cat"`` (the bottom
            output and the pooled vectors concatenated, dlrm ``--arch-interaction-op=cat``).
        interaction_itself: keep the diagonal of the dot products (dlrm ``--arch-interaction-itself``).
        seed: seed of the parameter initialisation (same seed -> bit-identical parameters).
        final_activation: after the last top layer: ``"sigmoid"`` (click probabilities, dlrm's
            default), ``"relu"`` (what dlrm's ``DLRM_Net`` builds with ``sigmoid_top=-1``) or
            ``"none"`` (raw logits, as TorchRec's DLRM returns).
    """

    name: str
    n_dense: int
    embedding_dim: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    tables: tuple[TableSpec, ...] = field(default_factory=tuple)
    interaction: str = "dot"
    interaction_itself: bool = False
    seed: int = 0
    final_activation: str = "sigmoid"

    def __post_init__(self) -> None:
        # Normalise lists to tuples so the config stays hashable and immutable.
        object.__setattr__(self, "bottom_mlp", tuple(int(w) for w in self.bottom_mlp))
        object.__setattr__(self, "top_mlp", tuple(int(w) for w in self.top_mlp))
        object.__setattr__(self, "tables", tuple(self.tables))
        if self.n_dense < 1:
            raise ValueError(f"DLRMConfig {self.name!r}: n_dense must be >= 1, got {self.n_dense}")
        if self.embedding_dim < 1:
            raise ValueError(f"DLRMConfig {self.name!r}: embedding_dim must be >= 1, got {self.embedding_dim}")
        if not self.bottom_mlp or any(w < 1 for w in self.bottom_mlp):
            raise ValueError(f"DLRMConfig {self.name!r}: bottom_mlp needs >= 1 positive width, got {self.bottom_mlp}")
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(
                f"DLRMConfig {self.name!r}: the bottom MLP's last width ({self.bottom_mlp[-1]}) must equal "
                f"embedding_dim ({self.embedding_dim}): the interaction combines it with the pooled vectors"
            )
        if not self.top_mlp or any(w < 1 for w in self.top_mlp) or self.top_mlp[-1] != 1:
            raise ValueError(
                f"DLRMConfig {self.name!r}: top_mlp needs positive widths ending in 1 (the logit), got {self.top_mlp}"
            )
        if not self.tables:
            raise ValueError(f"DLRMConfig {self.name!r}: needs at least one embedding table")
        for t, spec in enumerate(self.tables):
            if not isinstance(spec, TableSpec):
                raise TypeError(f"DLRMConfig {self.name!r}: table {t} must be a TableSpec, got {type(spec).__name__}")
            if spec.rows < 1:
                raise ValueError(f"DLRMConfig {self.name!r}: table {t} ({spec.name}) has {spec.rows} rows; need >= 1")
            if spec.dim != self.embedding_dim:
                raise ValueError(
                    f"DLRMConfig {self.name!r}: table {t} ({spec.name}) has dim {spec.dim}, but the dot "
                    f"interaction needs every table at embedding_dim={self.embedding_dim}"
                )
        if self.interaction not in INTERACTIONS:
            raise ValueError(
                f"DLRMConfig {self.name!r}: interaction must be one of {', '.join(INTERACTIONS)}, got {self.interaction!r}"
            )
        if self.interaction == "cat" and self.interaction_itself:
            raise ValueError(f"DLRMConfig {self.name!r}: interaction_itself applies to the dot interaction, not 'cat'")
        if self.final_activation not in FINAL_ACTIVATIONS:
            raise ValueError(
                f"DLRMConfig {self.name!r}: final_activation must be one of {', '.join(FINAL_ACTIVATIONS)}, "
                f"got {self.final_activation!r}"
            )

    @property
    def nr_tables(self) -> int:
        return len(self.tables)

    @property
    def nr_features(self) -> int:
        """F: the bottom MLP output plus one pooled vector per table."""
        return self.nr_tables + 1

    @property
    def nr_interactions(self) -> int:
        """Interaction outputs per sample besides the bottom output: F(F-1)/2 dot products, F(F+1)/2
        with ``interaction_itself``, or T*d pooled values for ``cat``."""
        f = self.nr_features
        if self.interaction == "cat":
            return self.nr_tables * self.embedding_dim
        return f * (f + 1) // 2 if self.interaction_itself else f * (f - 1) // 2

    @property
    def top_input_dim(self) -> int:
        """Width of the top MLP's input: interactions + d (Criteo Kaggle: 351 + 16 = 367; cat: F*d)."""
        return self.nr_interactions + self.embedding_dim

    @property
    def total_rows(self) -> int:
        return sum(spec.rows for spec in self.tables)

    @property
    def embedding_bytes(self) -> int:
        """Bytes of all embedding tables in fp32."""
        return sum(spec.rows * spec.dim * 4 for spec in self.tables)

    def scaled(self, row_scale: float = 1.0, max_rows: int | None = None) -> "DLRMConfig":
        """The same model with every table's row count multiplied by ``row_scale`` and capped at
        ``max_rows`` (a table never shrinks below ``min(rows, 2)`` rows)."""
        if not row_scale > 0:
            raise ValueError(f"row_scale must be > 0, got {row_scale}")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        tables = []
        for spec in self.tables:
            rows = max(min(spec.rows, MIN_SCALED_ROWS), int(round(spec.rows * row_scale)))
            if max_rows is not None:
                rows = min(rows, max_rows)
            tables.append(TableSpec(spec.name, rows, spec.dim))
        return dataclasses.replace(self, tables=tuple(tables))


def _tables(prefix: str, rows: tuple[int, ...], dim: int) -> tuple[TableSpec, ...]:
    return tuple(TableSpec(f"{prefix}{i + 1}", r, dim) for i, r in enumerate(rows))


def _kaggle() -> DLRMConfig:
    return DLRMConfig("kaggle", 13, 16, (512, 256, 64, 16), (512, 256, 1), _tables("C", KAGGLE_ROWS, 16))


def _terabyte() -> DLRMConfig:
    return DLRMConfig("terabyte", 13, 64, (512, 256, 64), (512, 512, 256, 1), _tables("C", TERABYTE_ROWS, 64))


def _mlperf() -> DLRMConfig:
    # MLPerf DLRM (Terabyte, 40M cap): dim 128, bottom 13-512-256-128, top 1024-1024-512-256-1.
    return DLRMConfig(
        "mlperf", 13, 128, (512, 256, 128), (1024, 1024, 512, 256, 1), _tables("C", TERABYTE_ROWS, 128)
    )


def _synthetic() -> DLRMConfig:
    # dlrm's synthetic benchmark: --arch-mlp-bot 512-512-64 (512 dense features),
    # --arch-mlp-top 1024-1024-1024-1, 8 tables of 1M rows, dim 64.
    return DLRMConfig("synthetic", 512, 64, (512, 64), (1024, 1024, 1024, 1), _tables("T", (1_000_000,) * 8, 64))


def _tiny() -> DLRMConfig:
    return DLRMConfig("tiny", 4, 8, (16, 8), (16, 1), _tables("T", (50, 7, 120, 33), 8))


_FACTORIES = {
    "kaggle": _kaggle,
    "terabyte": _terabyte,
    "mlperf": _mlperf,
    "synthetic": _synthetic,
    "tiny": _tiny,
}


def names() -> list[str]:
    """Names accepted by :func:`get`."""
    return list(_FACTORIES)


def get(name: str, row_scale: float = 1.0, max_rows: int | None = None, seed: int | None = None) -> DLRMConfig:
    """The named config, with rows scaled by ``row_scale`` and capped at ``max_rows``.

    Example: ``get("kaggle", row_scale=1e-3)`` keeps Kaggle's 26 tables with ~33.8k rows in all.
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(_FACTORIES)}") from None
    config = factory()
    if seed is not None:
        config = dataclasses.replace(config, seed=int(seed))
    if row_scale != 1.0 or max_rows is not None:
        config = config.scaled(row_scale, max_rows)
    return config
