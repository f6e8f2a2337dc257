"""CSR storage: a sparsified nn.Linear, or the weight matrices of an nn.LSTM / nn.GRU, held as
:class:`SparseLinear` layers whose trainable tensor is the vector of active values.

A compressed layer's mask is its CSR pattern, ``param`` its values vector (CSR storage order =
row-major flat order, so the tie rule of ``topk_mask`` holds unchanged) and its optimizer state
has size nnz. A topology update (:meth:`CSRStore.update`)

* drops by the method's drop score over the active values (|w| by default);
* grows by the method's ``grow_scores_rows`` hook, block by block over the rows, keeping only the
  best k candidates (:mod:`.streaming`): RigL's dense gradient ∂L/∂W = gᵀx is formed one row block
  at a time from the (x, g) factors captured in the backward pass of the steps that need it, SET's
  random scores are drawn block by block from the same generator stream as a whole-layer draw;
* rebuilds values, gradient and every per-weight optimizer state tensor on the new pattern:
  survivors keep theirs, new connections start at zero (RigL paper, "zero initialisation"). The
  counts may change (redistribution, GMP): every nnz-sized tensor is rebuilt at the new size, the
  values in a new Parameter that takes the old one's place in the optimizer.

Methods that keep a *dense* per-weight statistic keep it dense here too (SNFS and
``redistribution="momentum"`` hold an EMA of every layer's dense gradient), so the factors are then
captured at every step and ∂L/∂W formed in full (the method's 2·f_S + f_D training cost).

An nn.LSTM / nn.GRU is compressed as a whole (:class:`SparseLSTM` / :class:`SparseGRU`) when all
its weight matrices qualify; each matrix is then a store under torch's parameter name
(``rnn.weight_hh_l0``), its dense gradient the sum over time steps of the captured factors.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterator, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.profiler import record_function

from ....errors import CheckpointError, ConfigError
from ...masks import Target
from ...topk import topk_mask
from ..base import STORAGES, BackendPolicy, GrowScores, LayerStore, Storage, Sync
from ..dense import MaskedDenseStore
from .convert import (choose_rnn, compress_linear, compress_rnn, compressed_layers, densify_model, mask_counts,
                      rnn_modules, swap_parameter)
from .indices import carry, flat_from_csr, flat_from_mask, match
from .matrix import CSRWeight, coo_flat, coo_mask
from .rnn import matrix_names, unsupported_reason
from .streaming import streaming_topk

log = logging.getLogger(__name__)


def _logical_target(name: str, module_name: str, shape: tuple) -> Target:
    """A target whose "weight" is a storage-free tensor of the layer's dense shape: shape and
    numel queries work, arithmetic on it fails loudly (the real values live in the layer)."""
    return Target(name, module_name, nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False))


class CSRStore(LayerStore):
    """One :class:`CSRWeight` layer (a SparseLinear, an RNN weight matrix, a SparseConv2d) as a
    layer store; it works on the weight as a matrix (dim 0 × the rest), whose flat positions are
    the weight's own."""

    compressed = True

    def __init__(self, name: str, module_name: str, layer: CSRWeight, block_elems: int):
        super().__init__(_logical_target(name, module_name, layer.weight_shape))
        self.layer, self.block_elems = layer, int(block_elems)
        self._factors: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    @property
    def param(self) -> nn.Parameter:
        return self.layer.values

    @property
    def mask(self) -> torch.Tensor:
        """A sparse CSR bool view sharing the layer's indices (no dense memory)."""
        return self.layer.mask_view()

    @mask.setter
    def mask(self, mask: torch.Tensor) -> None:
        raise ConfigError(f"'{self.name}' is stored compressed: its mask is its pattern; change it with "
                          "engine.set_masks(...), which also moves the optimizer state")

    def n_active(self) -> int:
        return self.layer.nnz

    # --- gradients ------------------------------------------------------------------------------
    def prepare_step(self, capture: bool) -> None:
        self.layer.capture = [] if capture else None
        self._factors = None

    def dense_grad(self) -> torch.Tensor:
        """∂L/∂W in full, shaped as the weight (prefer :meth:`dense_grad_rows`)."""
        return self.dense_grad_rows(slice(0, self.layer.n_rows)).view(self.shape)

    def dense_grad_rows(self, rows: slice) -> torch.Tensor:
        """Rows of ∂L/∂W (the weight as a matrix) formed by the layer from the factors captured in
        this step's backward pass (every use of the layer); zeros if none were captured."""
        factors = self._captured()
        if factors is None:
            n = len(range(*rows.indices(self.layer.n_rows)))
            return self.layer.values.new_zeros(n, self.layer.n_cols)
        return self.layer.grad_rows(factors, rows)

    def _captured(self) -> Optional[Tuple[torch.Tensor, ...]]:
        cap = self.layer.capture
        if self._factors is None and cap:
            self._factors = self.layer.join_factors(cap)
        return self._factors

    def active_values(self, tensor: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The values vector itself, or a dense-shaped ``tensor`` (SNFS's EMA) gathered at the pattern."""
        t = (self.layer.values if tensor is None else tensor).detach().reshape(-1)
        return t if t.numel() == self.layer.nnz else t[self.layer.flat_indices()]

    # --- topology -------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, n_drop: int, n_grow: int, drop_scores: torch.Tensor, grow: GrowScores, sync: Sync,
               optimizer: Optional[torch.optim.Optimizer]) -> int:
        old = self.layer.flat_indices()
        with record_function("csr_update.drop"):
            kept = old[topk_mask(self._active_scores(drop_scores, old), self.layer.nnz - n_drop)]
        with record_function("csr_update.grow"):
            grown = streaming_topk(self._score_blocks(grow, kept), n_grow) if n_grow else kept.new_zeros(0)
        with record_function("csr_update.move_state"):
            new = sync(torch.sort(torch.cat([kept, grown])).values)
            pos, found = match(old, new)
            self._move_state(new, pos, found, optimizer)
        return int(new.numel() - int(found.sum()))

    def _active_scores(self, scores: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """Drop scores over the active entries (a dense-shaped score is gathered at them)."""
        s = scores.reshape(-1)
        if s.numel() == old.numel():
            return s
        if s.numel() == self.numel:
            return s[old]
        raise ValueError(f"drop scores of '{self.name}' have {s.numel()} entries, expected {old.numel()} "
                         "(active values) or the dense size")

    def _score_blocks(self, grow: GrowScores, kept: torch.Tensor) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
        """(offset, grow scores, excluded local positions) per block of rows: the kept
        connections may not be grown again."""
        n_rows, n_cols = self.layer.shape
        step = max(1, self.block_elems // n_cols)
        bounds = torch.searchsorted(kept, torch.arange(0, n_rows + step, step, device=kept.device).clamp_(max=n_rows)
                                    * n_cols).tolist()
        for i, r0 in enumerate(range(0, n_rows, step)):
            r1, lo = min(n_rows, r0 + step), r0 * n_cols
            with record_function("csr_update.grow_scores"):
                scores = grow.rows(slice(r0, r1), n_cols)
            yield lo, scores, kept[bounds[i]:bounds[i + 1]] - lo

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor, optimizer: Optional[torch.optim.Optimizer]) -> None:
        """The new mask becomes the pattern: weights inside keep their values and optimizer state;
        positions new to the pattern start at zero with zero state."""
        new = flat_from_mask(mask)
        pos, found = match(self.layer.flat_indices(), new)
        self._move_state(new, pos, found, optimizer)

    def _move_state(self, new: torch.Tensor, pos: torch.Tensor, found: torch.Tensor,
                    optimizer: Optional[torch.optim.Optimizer]) -> None:
        """Re-index values, gradient and per-weight optimizer state to the pattern ``new``. A changed
        count makes ``layer.values`` a new Parameter, put in the optimizer's place of the old one
        (see :meth:`CSRWeight.set_pattern`)."""
        p = self.layer.values
        grad = None if p.grad is None else carry(p.grad, pos, found)
        q = self.layer.set_pattern(new, carry(p.detach(), pos, found))
        if q is p:
            state = optimizer.state.get(p, {}) if optimizer is not None else {}
            for key, value in list(state.items()):
                if torch.is_tensor(value) and value.shape == p.shape:
                    state[key] = carry(value, pos, found)
        else:
            swap_parameter(optimizer, p, q, lambda t: carry(t, pos, found))
        q.grad = grad

    # --- persistence ----------------------------------------------------------------------------
    def mask_state(self) -> torch.Tensor:
        """A sparse COO bool tensor of the weight's shape (deep-copies and saves like any tensor; a
        masked-dense store loads it too)."""
        return coo_mask(self.layer.flat_indices(), self.shape)

    def load_mask(self, mask: torch.Tensor) -> None:
        """The pattern comes from the model's state_dict (load that first); the mask must agree."""
        if not torch.equal(_positions(mask).to(self.layer.col_indices.device), self.layer.flat_indices()):
            raise CheckpointError(f"the saved mask of '{self.name}' differs from the layer's sparse "
                                  "structure; load the model's state_dict before the engine's")


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Sorted flat positions of the True entries of a dense, CSR or COO mask."""
    if mask.layout == torch.sparse_csr:
        return flat_from_csr(mask.crow_indices(), mask.col_indices(), mask.shape[1])
    if mask.layout == torch.sparse_coo:
        return coo_flat(mask)
    return flat_from_mask(mask)


def saved_sparse(mask, shape: tuple) -> bool:
    """Whether ``mask`` (from a saved engine state) says a layer of ``shape`` was stored compressed."""
    return torch.is_tensor(mask) and mask.layout != torch.strided and tuple(mask.shape) == shape


class CSRStorage(Storage):
    """Moves plain nn.Linear layers and nn.LSTM / nn.GRU modules to CSR and back (see the module
    docstring); the decision per layer is :class:`BackendPolicy`'s."""

    name = "csr"

    def compress(self, model: nn.Module, stores: Mapping[str, LayerStore], policy: BackendPolicy,
                 optimizer: Optional[torch.optim.Optimizer], announce: bool) -> Dict[str, LayerStore]:
        masks = {n: s.mask for n, s in stores.items()}
        linear = [s for s in _dense(stores) if _is_linear(model, s.target)
                  and policy.choose(s.name, s.numel, s.n_active()) == "sparse"]
        out = {}
        for s in linear:
            out.update(self._linear(model, s.target, s.mask, policy, optimizer))
        for module_name in _rnns_to_compress(model, stores, masks, policy, announce):
            out.update(self._rnn(model, module_name, masks, policy, optimizer))
        return out

    def adopt(self, model: nn.Module, policy: BackendPolicy) -> Dict[str, LayerStore]:
        return {n: CSRStore(n, m, layer, policy.block_elems) for n, (m, layer) in compressed_layers(model).items()}

    def restore(self, model: nn.Module, stores: Mapping[str, LayerStore], saved: Mapping[str, torch.Tensor],
                policy: BackendPolicy, optimizer: Optional[torch.optim.Optimizer]) -> Dict[str, LayerStore]:
        out = {}
        for s in _dense(stores):
            if _is_linear(model, s.target) and saved_sparse(saved.get(s.name), s.shape):
                out.update(self._linear(model, s.target, _dense_mask(saved[s.name], s.param), policy, optimizer))
        for module_name, rnn in rnn_modules(model):
            names = [f"{module_name}.{n}" for n in matrix_names(rnn.num_layers)]
            if unsupported_reason(rnn) is None and all(
                    n in stores and saved_sparse(saved.get(n), stores[n].shape) for n in names):
                masks = {n: _dense_mask(saved[n], stores[n].param) for n in names}
                out.update(self._rnn(model, module_name, masks, policy, optimizer))
        return out

    def densify(self, model: nn.Module, stores: Mapping[str, LayerStore],
                optimizer: Optional[torch.optim.Optimizer]) -> Dict[str, LayerStore]:
        mine = {n: s for n, s in stores.items() if isinstance(s, CSRStore)}
        masks = densify_model(model, optimizer)
        return {n: MaskedDenseStore(Target(n, s.target.module_name, model.get_parameter(n)), masks[n])
                for n, s in mine.items()}

    @staticmethod
    def _linear(model, target: Target, mask: torch.Tensor, policy: BackendPolicy, optimizer) -> Dict[str, CSRStore]:
        layer = compress_linear(model, target.module_name, mask, optimizer, policy.cache_transpose)
        layer.kernel = policy.kernel
        return {target.name: CSRStore(target.name, target.module_name, layer, policy.block_elems)}

    @staticmethod
    def _rnn(model, module_name: str, masks, policy: BackendPolicy, optimizer) -> Dict[str, CSRStore]:
        matrices = compress_rnn(model, module_name, masks, optimizer, policy.cache_transpose)
        for layer in matrices.values():
            layer.kernel = policy.kernel
        return {n: CSRStore(n, module_name, layer, policy.block_elems) for n, layer in matrices.items()}


def _dense(stores: Mapping[str, LayerStore]) -> list:
    return [s for s in stores.values() if not s.compressed]


def _dense_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to_dense().to(device=like.device, dtype=torch.bool)


def _is_linear(model: nn.Module, t: Target) -> bool:
    """Whether target ``t`` is the weight of a plain nn.Linear (the layers we can compress)."""
    return bool(t.module_name) and t.name == f"{t.module_name}.weight" and \
        type(model.get_submodule(t.module_name)) is nn.Linear


def _rnns_to_compress(model: nn.Module, stores: Mapping[str, LayerStore], masks: Mapping[str, torch.Tensor],
                      policy: BackendPolicy, announce: bool) -> list:
    """Names of the dense-held nn.LSTM / nn.GRU modules with sparsified weights to compress, decided
    per module (:func:`choose_rnn`: all weight matrices or none); logs each decision."""
    out = []
    for module_name, rnn in rnn_modules(model):
        if not any(s.target.module_name == module_name for s in stores.values()):
            continue
        chosen, why = choose_rnn(policy, module_name, rnn, mask_counts(masks))
        log.log(logging.INFO if announce else logging.DEBUG, "sparse backend: %s '%s': %s",
                "compressing" if chosen else "leaving dense", module_name, why)
        if chosen:
            out.append(module_name)
    return out


STORAGES.register("csr")(CSRStorage())
