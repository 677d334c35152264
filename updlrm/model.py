"""The DLRM model as a torch module, with facebookresearch/dlrm semantics.

::

    dense [B, n_dense] -> bottom MLP (Linear+ReLU)* -> x [B, d] ----------------------+
    ids of table t -> EmbeddingBag_t (sum) -> pooled [B, T, d] --+                     |
                                                                 v                     v
             T = concat(x, pooled) as [B, F, d], F = T+1;  Z = T @ T^T  [B, F, F]      |
             Zflat = lower triangle of Z (strict, or incl. the diagonal)  [B, F(F-1)/2] |
             z = concat(x, Zflat)  [B, d + F(F-1)/2]  <---------------------------------+
             p = sigmoid(top MLP(z))  [B]   (ReLU after every top layer but the last)

``config.interaction="cat"`` (dlrm ``--arch-interaction-op=cat``) replaces the dot products:
z = concat(x, pooled_1, ..., pooled_T) ``[B, F*d]``. ``config.final_activation`` picks what follows
the last top layer: ``"sigmoid"`` (default), ``"relu"`` (dlrm's ``DLRM_Net`` with
``sigmoid_top=-1``) or ``"none"`` (logits, as TorchRec's DLRM returns).

The pieces are public so that an engine can swap the embedding backend: ``model.bottom(dense)``,
``model.embed(batch)`` (the model's own CPU tables), ``model.interact(x, pooled)`` and
``model.top(z)``; ``model(batch)`` runs them all on the CPU. Initialisation follows dlrm
(Linear weight ~ N(0, sqrt(2/(fan_in+fan_out))), bias ~ N(0, sqrt(1/fan_out)), embedding rows ~
U(-sqrt(1/rows), sqrt(1/rows))) from a ``torch.Generator`` seeded with ``config.seed``, so the same
config gives bit-identical parameters.

Parameter names (``state_dict``; checkpoint readers rely on them): ``bottom_mlp.{2k}.weight|bias``
(k-th bottom Linear; odd indices are the activations), ``embeddings.{t}.weight`` ``[rows_t, d]``,
``top_mlp.{2k}.weight|bias``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from updlrm.configs import DLRMConfig

__all__ = ["DLRM", "DLRMConfig"]


_LAST = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "none": nn.Identity}


def _make_mlp(in_width: int, widths: tuple[int, ...], last: str, gen: torch.Generator) -> nn.Sequential:
    """Linear layers of ``widths``, ReLU after each but the last, which gets ``_LAST[last]`` (an
    Identity keeps the Linear layers at even indices)."""
    layers: list[nn.Module] = []
    for i, out_width in enumerate(widths):
        linear = nn.Linear(in_width, out_width)
        with torch.no_grad():
            linear.weight.normal_(0.0, math.sqrt(2.0 / (in_width + out_width)), generator=gen)
            linear.bias.normal_(0.0, math.sqrt(1.0 / out_width), generator=gen)
        layers.append(linear)
        layers.append(_LAST[last]() if i == len(widths) - 1 else nn.ReLU())
        in_width = out_width
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """DLRM with sum-pooled EmbeddingBags and dot or cat interaction (see the module docstring).

    ``DLRM(config)``; parameters are initialised from ``config.seed``. All tensors are float32 on
    the CPU; the engine moves what it needs elsewhere.
    """

    def __init__(self, config: DLRMConfig):
        super().__init__()
        if not isinstance(config, DLRMConfig):
            raise TypeError(f"DLRM needs a DLRMConfig, got {type(config).__name__}")
        self.config = config
        gen = torch.Generator().manual_seed(int(config.seed))
        self.bottom_mlp = _make_mlp(config.n_dense, config.bottom_mlp, last="relu", gen=gen)
        self.embeddings = nn.ModuleList()
        for spec in config.tables:
            # _weight: skip EmbeddingBag's own normal_ init, overwritten just below (5 s at full Kaggle)
            bag = nn.EmbeddingBag(spec.rows, spec.dim, mode="sum", _weight=torch.empty(spec.rows, spec.dim))
            bound = math.sqrt(1.0 / spec.rows)
            with torch.no_grad():
                bag.weight.uniform_(-bound, bound, generator=gen)
            self.embeddings.append(bag)
        self.top_mlp = _make_mlp(config.top_input_dim, config.top_mlp, last=config.final_activation, gen=gen)
        f = config.nr_features
        li, lj = torch.tril_indices(f, f, offset=0 if config.interaction_itself else -1)
        # Row-major order over the lower triangle: (1,0), (2,0), (2,1), ... as dlrm does.
        self.register_buffer("_tril_i", li, persistent=False)
        self.register_buffer("_tril_j", lj, persistent=False)

    # -- pieces ---------------------------------------------------------------------------------
    @property
    def tables(self) -> list:
        """The :class:`TableSpec` of every embedding table, in order."""
        return list(self.config.tables)

    def embedding_weights(self) -> list[torch.Tensor]:
        """The embedding tables, ``[rows_t, d]`` float32 each (the live parameters, not copies)."""
        return [bag.weight for bag in self.embeddings]

    def bottom(self, dense: torch.Tensor) -> torch.Tensor:
        """Bottom MLP: dense ``[B, n_dense]`` -> ``[B, d]``."""
        return self.bottom_mlp(dense)

    def embed(self, batch) -> torch.Tensor:
        """Pooled embeddings ``[B, T, d]`` of a (validated) :class:`updlrm.batch.Batch` with the
        model's own tables (torch EmbeddingBag, sum)."""
        pooled = [bag(*batch.table(t)) for t, bag in enumerate(self.embeddings)]
        return torch.stack(pooled, dim=1)

    def interact(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Interaction: x ``[B, d]``, pooled ``[B, T, d]`` -> z ``[B, top_input_dim]``."""
        if self.config.interaction == "cat":
            return torch.cat([x, pooled.reshape(pooled.shape[0], -1)], dim=1)
        feats = torch.cat([x.unsqueeze(1), pooled], dim=1)  # [B, F, d]
        z = torch.bmm(feats, feats.transpose(1, 2))  # [B, F, F]
        zflat = z[:, self._tril_i, self._tril_j]
        return torch.cat([x, zflat], dim=1)

    def top(self, z: torch.Tensor) -> torch.Tensor:
        """Top MLP and its final activation: z ``[B, top_input_dim]`` -> probabilities ``[B]``
        (logits with ``final_activation="none"``)."""
        return self.top_mlp(z).squeeze(1)

    def forward(self, batch) -> torch.Tensor:
        """All-CPU forward of a validated batch: click probabilities ``[B]``."""
        x = self.bottom(batch.dense)
        return self.top(self.interact(x, self.embed(batch)))

    # -- error propagation ----------------------------------------------------------------------
    @torch.no_grad()
    def probability_error_bound(
        self, x: torch.Tensor, pooled: torch.Tensor, pooled_abs_err: torch.Tensor | float
    ) -> torch.Tensor:
        """Upper bound on |p' - p| when ``pooled`` ``[B, T, d]`` is replaced by any ``pooled'``
        with ``|pooled' - pooled| <= pooled_abs_err`` elementwise (broadcastable to [B, T, d]).

        Rigorous in exact arithmetic: each dot product moves by at most
        ``|a||e_b| + |e_a||b| + |e_a||e_b|`` (Euclidean norms), the top MLP is Lipschitz with the
        product of its layers' spectral norms (ReLU is 1-Lipschitz) and the sigmoid with 1/4 (1
        for the other final activations). With ``cat`` the top input moves by the error itself.
        Returns ``[B]`` float64; callers add a small slack for float32 rounding in the MLP itself.
        """
        x = x.double()
        pooled = pooled.double()
        err = torch.as_tensor(pooled_abs_err, dtype=torch.float64).expand_as(pooled)
        lipschitz = 0.25 if self.config.final_activation == "sigmoid" else 1.0
        for layer in self.top_mlp:
            if isinstance(layer, nn.Linear):
                lipschitz *= float(torch.linalg.matrix_norm(layer.weight.double(), ord=2))
        if self.config.interaction == "cat":
            return lipschitz * err.flatten(1).norm(dim=1)
        norms = torch.cat([x.norm(dim=1, keepdim=True), pooled.norm(dim=2)], dim=1)  # [B, F]
        err_norms = torch.cat([torch.zeros_like(norms[:, :1]), err.norm(dim=2)], dim=1)  # [B, F]
        i, j = self._tril_i, self._tril_j
        dz = norms[:, i] * err_norms[:, j] + err_norms[:, i] * norms[:, j] + err_norms[:, i] * err_norms[:, j]
        return lipschitz * dz.norm(dim=1)

