"""SparseEngine: the SparsityEngine with its large, sparse Linear layers stored compressed.

Same hooks, same methods, same schedules: ``after_backward`` / ``after_step`` drive Static, SET,
RigL, SNFS (and the ``redistribution`` option) and GMP exactly as on the masked-dense engine
(tests/test_sparse_backend.py checks that masks, weights and optimizer state agree). What
changes is per-layer storage. A compressed layer is a :class:`SparseLinear`; its mask is its CSR
pattern, its trainable tensor (``param(name)``) is the values vector, and its optimizer state has
size nnz. A topology update

* drops by the method's drop score over the active values (|w| by default; the exact tie rule of
  ``topk_mask`` holds because CSR storage order is flat-index order);
* grows by the method's ``grow_scores_rows`` hook, block by block over the rows, keeping only
  the best k candidates (:mod:`.streaming`): RigL's dense gradient ∂L/∂W = gᵀx is formed one row
  block at a time from the (x, g) factors captured in the backward pass of update steps, SET's
  random scores are drawn block by block from the same generator stream as a whole-layer draw;
* rebuilds values, gradient and every per-weight optimizer state tensor on the new pattern:
  survivors keep theirs, new connections start at zero (RigL paper, "zero initialisation"). The
  counts may change (redistribution grows more in some layers than it drops; GMP only drops):
  every nnz-sized tensor is rebuilt at the new size, the values in a new Parameter that takes the
  old one's place in the optimizer (``layer.values`` is then another object).

Methods that keep a *dense* per-weight statistic keep it dense here too: SNFS and
``redistribution="momentum"`` hold an EMA of the dense gradient of every layer, updated every
step, so the (x, g) factors are captured at every step and ∂L/∂W formed in full (the method's
2·f_S + f_D training cost; the engine logs this once). Per-layer statistics (mean |w|, mean |EMA|)
read the active entries through :meth:`SparseEngine.active_values`.

An nn.LSTM / nn.GRU is compressed as a whole (:class:`SparseLSTM` / :class:`SparseGRU`) when all
its weight matrices qualify; each matrix is then a compressed layer under torch's parameter name
(``rnn.weight_hh_l0``), its dense gradient the sum over time steps of the captured factors.

The backend policy (:class:`BackendPolicy`) is kept and applied again after every topology update
(``update_masks``, ``set_masks``): a layer (or recurrent module) still stored dense whose active
count now falls within it is compressed in place, optimizer state included, so a dense-to-sparse
method (GMP) moves its big layers to CSR once they are sparse enough. Layers that stay
masked-dense (too dense, too small, not Linear/LSTM/GRU) are handled by the base class.
"""
from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Dict, Iterator, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..registry import METHODS
from ..sparsity.engine import SparsityEngine
from ..sparsity.masks import Target, apply_masks, unwrap
from ..sparsity.topk import topk_mask
from .convert import (BackendPolicy, choose_rnn, compress_linear, compress_rnn, compressed_layers, densify_model,
                      rnn_modules, swap_parameter)
from .csr import carry, flat_from_csr, flat_from_mask, match, row_ids
from .linear import SparseLinear
from .rnn import matrix_names, unsupported_reason
from .streaming import streaming_topk

log = logging.getLogger(__name__)

#: entries of the dense score matrix formed at once while growing: 4 MiB of float32 scores,
#: about 40 MB of temporaries in all (scores, eligibility, candidate indices)
DEFAULT_BLOCK_ELEMS = 1 << 20


def _logical_target(name: str, module_name: str, shape: tuple) -> Target:
    """A target whose "weight" is a storage-free tensor of the layer's dense shape: shape and
    numel queries work, arithmetic on it fails loudly (the real values live in the layer)."""
    return Target(name, module_name, nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False))


def _defined_in(obj, attr: str) -> type:
    return next(c for c in type(obj).__mro__ if attr in vars(c))


class SparseEngine(SparsityEngine):
    """A :class:`SparsityEngine` whose eligible layers run truly sparse on CPU.

    Build it like the masked-dense engine (it first builds the masks exactly as that engine
    does, then compresses), from an existing engine (:meth:`from_engine`,
    :func:`use_sparse_backend`), or around a model built sparse from the start
    (:meth:`from_sparse_model`). Extra args: ``max_density``, ``min_size``, ``overrides`` (see
    :class:`BackendPolicy`), ``cache_transpose`` (see :class:`SparseLinear`), ``kernel`` ("mkl" or
    "sparseprop", see :class:`BackendPolicy`) and ``block_elems`` (memory bound of a growth step).
    ``layers`` maps weight names to the compressed layers; ``is_compressed(name)`` tells them apart;
    ``policy`` is re-applied after every topology update (dense-stored layers that became sparse
    enough are compressed). Methods that keep a dense per-weight statistic by definition (SNFS,
    ``redistribution="momentum"``: an EMA of dense gradients) keep it dense here as well, and the
    dense gradient of every compressed layer is formed at every step for it.
    """

    layers: Mapping[str, SparseLinear] = MappingProxyType({})

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                 method: str = "rigl", *, max_density: float = 0.1, min_size: int = 1 << 16,
                 overrides: Optional[Mapping[str, str]] = None, cache_transpose: bool = True,
                 block_elems: int = DEFAULT_BLOCK_ELEMS, kernel: str = "mkl", **engine_options):
        policy = BackendPolicy(max_density, min_size, dict(overrides or {}), cache_transpose, kernel)
        super().__init__(model, optimizer, method, **engine_options)
        self.block_elems = int(block_elems)
        self._compress(policy)

    @classmethod
    def from_engine(cls, engine: SparsityEngine, *, max_density: float = 0.1, min_size: int = 1 << 16,
                    overrides: Optional[Mapping[str, str]] = None, cache_transpose: bool = True,
                    block_elems: int = DEFAULT_BLOCK_ELEMS, kernel: str = "mkl") -> "SparseEngine":
        """Take over a masked-dense engine's state (masks, step, generator, method) and compress
        its eligible layers in its model and optimizer. Use the returned engine from then on."""
        new = cls.__new__(cls)
        new.__dict__.update(vars(engine))
        new.targets, new._by_name, new.masks = list(engine.targets), dict(engine._by_name), dict(engine.masks)
        new.block_elems = int(block_elems)
        new._compress(BackendPolicy(max_density, min_size, dict(overrides or {}), cache_transpose, kernel))
        return new

    @classmethod
    def from_sparse_model(cls, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                          method: str = "set", *, total_steps: Optional[int] = None, seed: int = 0,
                          sync_masks: bool = True, block_elems: int = DEFAULT_BLOCK_ELEMS,
                          **method_options) -> "SparseEngine":
        """An engine over the SparseLinear layers of a model that was built sparse (e.g. with
        :meth:`SparseLinear.random`) and never had dense weights; their current patterns are
        the masks and their densities the layer densities."""
        model = unwrap(model)
        found = compressed_layers(model)
        if not found:
            raise ConfigError("the model has no SparseLinear layer; build it with SparseLinear.random "
                              "or construct SparseEngine(model, ...) on a dense model")
        layers = {n: layer for n, (_, layer) in found.items()}
        new = cls.__new__(cls)
        new.model, new.optimizer = model, optimizer
        new.method = METHODS.get(method)(**method_options)
        new.total_steps, new.sync_masks, new.block_elems = total_steps, sync_masks, int(block_elems)
        new.targets = [_logical_target(n, m, l.shape) for n, (m, l) in found.items()]
        new.kept_dense, new._by_name = [], {t.name: t for t in new.targets}
        new.densities = {n: l.density for n, l in layers.items()}
        total = sum(l.out_features * l.in_features for l in layers.values())
        new.config = {"method": new.method.name, "sparsity": 1 - sum(l.nnz for l in layers.values()) / total,
                      "distribution": "custom", "dense_first": False, "dense_last": False, "seed": seed}
        new.generator = torch.Generator().manual_seed(int(seed))
        new.step, new.last_update, new._pending_update, new._multipliers = 0, None, False, {}
        new.method.setup(new)
        new.masks, new.policy = {}, BackendPolicy()
        new._adopt(layers)
        return new

    # --- compression ----------------------------------------------------------------------------
    def _compress(self, policy: BackendPolicy) -> None:
        """Keep ``policy`` (applied again after every topology update) and compress what it selects."""
        self.policy, self.layers = policy, {}
        self._compress_eligible(announce=True)
        log.info("sparse backend: %d of %d layers compressed (%s)", len(self.layers), len(self.targets),
                 ", ".join(self.layers) or "none")
        self._adopt(dict(self.layers))

    def _compress_eligible(self, announce: bool = False) -> list:
        """Compress every dense-stored Linear target and nn.LSTM / nn.GRU the policy now selects
        (a dense-to-sparse method, GMP, moves a layer here once its active count falls within
        ``max_density``); returns the weight names compressed. ``announce``: log every recurrent
        module's decision at INFO (else DEBUG)."""
        chosen = [t for t in self._dense_targets() if self._linear(t) and self.policy.choose(
            t.name, t.param.numel(), int(self.masks[t.name].sum())) == "sparse"]
        for t in chosen:
            self._compress_layer(t, self.masks[t.name])
        names = [t.name for t in chosen]
        for module_name in self._rnns_to_compress(announce):
            names += self._compress_rnn(module_name, self.masks)
        return names

    def _compress_now_sparse(self) -> None:
        names = self._compress_eligible()
        if names:
            log.info("sparse backend: step %d: compressed %s (now within the backend policy)",
                     self.step, ", ".join(names))

    def _compress_layer(self, t: Target, mask: torch.Tensor) -> None:
        """Replace target ``t``'s nn.Linear by a SparseLinear holding it under ``mask`` (a dense bool
        tensor); the optimizer's parameter and per-weight state follow (see compress_linear)."""
        layer = compress_linear(self.model, t.module_name, mask, self.optimizer, self.policy.cache_transpose)
        self._register({t.name: layer}, t.module_name)

    def _compress_rnn(self, module_name: str, masks: Mapping[str, torch.Tensor]) -> list:
        """Replace the nn.LSTM / nn.GRU ``module_name`` by its sparse counterpart under ``masks``
        (dense bool tensors by weight name); returns the names of its matrices."""
        matrices = compress_rnn(self.model, module_name, masks, self.optimizer, self.policy.cache_transpose)
        self._register(matrices, module_name)
        return list(matrices)

    def _register(self, new: Dict[str, SparseLinear], module_name: str) -> None:
        """Make the freshly compressed ``new`` {weight name: layer} compressed targets of the engine."""
        for name, layer in new.items():
            layer.capture = [] if self._capturing() else None
            layer.kernel = self.policy.kernel
            self._replace_target(_logical_target(name, module_name, layer.shape))
            self.masks[name] = layer.mask_view()
            self._multipliers.pop(name, None)
        layers = {**self.layers, **new}
        self.layers = {x.name: layers[x.name] for x in self.targets if x.name in layers}  # target order

    def _rnns_to_compress(self, announce: bool) -> list:
        """Names of the dense-stored nn.LSTM / nn.GRU modules with sparsified weights to compress,
        decided per module (:func:`choose_rnn`: all weight matrices or none); logs each decision."""
        out = []
        for module_name, rnn in rnn_modules(self.model):
            if not any(t.module_name == module_name for t in self.targets):
                continue
            chosen, why = choose_rnn(self.policy, module_name, rnn, self.masks)
            log.log(logging.INFO if announce else logging.DEBUG, "sparse backend: %s '%s': %s",
                    "compressing" if chosen else "leaving dense", module_name, why)
            if chosen:
                out.append(module_name)
        return out

    def _linear(self, t: Target) -> bool:
        """Whether target ``t`` is the weight of a plain nn.Linear (the layers we can compress)."""
        return bool(t.module_name) and t.name == f"{t.module_name}.weight" and \
            type(self.model.get_submodule(t.module_name)) is nn.Linear

    def _replace_target(self, target: Target) -> None:
        self.targets = [target if t.name == target.name else t for t in self.targets]
        self._by_name[target.name] = target

    def _adopt(self, layers: Dict[str, SparseLinear]) -> None:
        self.layers = dict(layers)
        for name, layer in self.layers.items():
            self.masks[name] = layer.mask_view()
        self._arm_capture()
        if self.layers and self.method.tracks_momentum:
            n = sum(l.out_features * l.in_features for l in self.layers.values())
            log.info("sparse backend: method '%s' keeps a dense per-weight statistic (an EMA of dense "
                     "gradients, %d entries over the compressed layers) and forms their dense gradient "
                     "every step", self.method.name, n)

    # --- accessors (the engine interface methods use) ---------------------------------------------
    def is_compressed(self, name: str) -> bool:
        return name in self.layers

    def param(self, name: str) -> nn.Parameter:
        """The dense weight, or for a compressed layer its values vector (CSR storage order)."""
        return self.layers[name].values if name in self.layers else super().param(name)

    def active_values(self, name: str, tensor: Optional[torch.Tensor] = None) -> torch.Tensor:
        """As the base engine's; for a compressed layer the values vector itself, or a
        dense-shaped ``tensor`` (SNFS's EMA) gathered at the pattern (storage order = row-major)."""
        if name not in self.layers:
            return super().active_values(name, tensor)
        layer = self.layers[name]
        t = (layer.values if tensor is None else tensor).detach().reshape(-1)
        return t if t.numel() == layer.nnz else t[layer.flat_indices()]

    def dense_grad(self, name: str) -> torch.Tensor:
        """∂L/∂W; for a compressed layer this forms the whole dense matrix (prefer
        :meth:`dense_grad_rows`)."""
        if name not in self.layers:
            return super().dense_grad(name)
        return self.dense_grad_rows(name, slice(0, self.layers[name].out_features))

    def dense_grad_rows(self, name: str, rows: slice) -> torch.Tensor:
        """Rows of ∂L/∂W = gᵀx from the factors captured at this update step's backward pass
        (summed over every use of the layer); zeros if none were captured."""
        if name not in self.layers:
            return super().dense_grad_rows(name, rows)
        layer = self.layers[name]
        factors = self._factors(name)
        if factors is None:
            n = len(range(*rows.indices(layer.out_features)))
            return layer.values.new_zeros(n, layer.in_features)
        x, g = factors
        return g[:, rows].T @ x

    def _factors(self, name: str) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        if name not in self._factor_cache:
            cap = self.layers[name].capture or []
            self._factor_cache[name] = (torch.cat([x for x, _ in cap]), torch.cat([g for _, g in cap])) if cap else None
        return self._factor_cache[name]

    def _capturing(self) -> bool:
        """Whether the coming backward pass keeps (x, ∂L/∂y): the step updates the topology
        (RigL's grow scores), or the method reads dense gradients every step (SNFS's EMA)."""
        return self.method.is_update_step(self.step) or self.method.uses_dense_grad(self.step)

    def _arm_capture(self) -> None:
        """Capture (x, ∂L/∂y) in the backward pass of the coming step iff :meth:`_capturing`."""
        capture = self._capturing()
        for layer in self.layers.values():
            layer.capture = [] if capture else None
        self._factor_cache = {}

    def _dense_targets(self):
        return [t for t in self.targets if t.name not in self.layers]

    # --- hooks ----------------------------------------------------------------------------------
    def after_step(self) -> None:
        super().after_step()
        self._arm_capture()

    @torch.no_grad()
    def _mask_gradients(self) -> None:
        for t in self._dense_targets():
            if t.param.grad is not None:
                t.param.grad.mul_(self.masks[t.name])

    def apply_masks(self) -> None:
        apply_masks(self._dense_targets(), self.masks)

    # --- topology updates -------------------------------------------------------------------------
    def update_masks(self, fraction: float) -> dict:
        """As the base engine's, then compress the dense-stored layers now within the policy."""
        out = super().update_masks(fraction)
        self._compress_now_sparse()
        return out

    @torch.no_grad()
    def set_masks(self, masks: Mapping[str, torch.Tensor], reason: str = "set") -> dict:
        """As the base engine's. A compressed layer takes the new mask as its pattern: weights
        inside keep their values and optimizer state; positions new to the pattern start at zero
        with zero state (the masked-dense engine leaves their stale state in place). Then the
        dense-stored layers now within the policy are compressed."""
        out = super().set_masks(masks, reason)  # validates; leaves dense bool masks in self.masks
        for name, layer in self.layers.items():
            new = flat_from_mask(self.masks[name])
            pos, found = match(layer.flat_indices(), new)
            self._move_state(layer, new, pos, found)
            self.masks[name] = layer.mask_view()
        self._compress_now_sparse()
        return out

    def _update_layer(self, name: str, n_drop: int, n_grow: int) -> int:
        if name not in self.layers:
            return super()._update_layer(name, n_drop, n_grow)
        layer = self.layers[name]
        old = layer.flat_indices()
        keep = topk_mask(self._drop_scores(name, old), layer.nnz - n_drop)
        kept = old[keep]
        grown = self._grow(name, kept, n_grow)
        new = self._broadcast_positions(torch.sort(torch.cat([kept, grown])).values)
        pos, found = match(old, new)
        self._move_state(layer, new, pos, found)
        self.masks[name] = layer.mask_view()
        return int(new.numel() - int(found.sum()))

    def _drop_scores(self, name: str, old: torch.Tensor) -> torch.Tensor:
        """Drop scores over the active entries (a dense-shaped score is gathered at them)."""
        s = self.method.drop_scores(self, name).reshape(-1)
        if s.numel() == old.numel():
            return s
        if s.numel() == self._by_name[name].param.numel():
            return s[old]
        raise ValueError(f"drop scores of '{name}' have {s.numel()} entries, expected {old.numel()} "
                         "(active values) or the dense size")

    def _grow(self, name: str, kept: torch.Tensor, k: int) -> torch.Tensor:
        if k == 0:
            return kept.new_zeros(0)
        return streaming_topk(self._score_blocks(name, kept), k)

    def _score_blocks(self, name: str, kept: torch.Tensor) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
        """(offset, grow scores, eligible) per block of rows; kept connections are ineligible."""
        n_rows, n_cols = self.layers[name].shape
        scorer = self._row_scorer(name, n_cols)
        step = max(1, self.block_elems // n_cols)
        for r0 in range(0, n_rows, step):
            r1 = min(n_rows, r0 + step)
            lo, hi = r0 * n_cols, r1 * n_cols
            a, b = torch.searchsorted(kept, torch.tensor([lo, hi], device=kept.device)).tolist()
            eligible = torch.ones(hi - lo, dtype=torch.bool, device=kept.device)
            eligible[kept[a:b] - lo] = False
            yield lo, scorer(slice(r0, r1)), eligible

    def _row_scorer(self, name: str, n_cols: int):
        """Block scores from the method's row hook; if a method overrides ``grow_scores`` but not
        the row hook (stale hook inherited from a parent), score the whole layer once instead."""
        if issubclass(_defined_in(self.method, "grow_scores_rows"), _defined_in(self.method, "grow_scores")):
            return lambda rows: self.method.grow_scores_rows(self, name, rows, n_cols)
        whole = self.method.grow_scores(self, name).reshape(-1, n_cols)
        return lambda rows: whole[rows]

    def _broadcast_positions(self, flat: torch.Tensor) -> torch.Tensor:
        """Rank 0's new pattern on every rank (the counts agree, so shapes match)."""
        if self._distributed():
            dist.broadcast(flat, src=0)
        return flat

    @torch.no_grad()
    def _move_state(self, layer: SparseLinear, new: torch.Tensor, pos: torch.Tensor, found: torch.Tensor) -> None:
        """Re-index values, gradient and per-weight optimizer state to the new pattern. A changed
        count (redistribution, pruning) makes ``layer.values`` a new Parameter, put in the
        optimizer's place of the old one (see :meth:`SparseLinear.set_pattern`)."""
        p = layer.values
        grad = None if p.grad is None else carry(p.grad, pos, found)
        q = layer.set_pattern(new, carry(p.detach(), pos, found))
        if q is p:
            state = self.optimizer.state.get(p, {}) if self.optimizer is not None else {}
            for key, value in list(state.items()):
                if torch.is_tensor(value) and value.shape == p.shape:
                    state[key] = carry(value, pos, found)
        else:
            swap_parameter(self.optimizer, p, q, lambda t: carry(t, pos, found))
        q.grad = grad

    # --- reporting and persistence ---------------------------------------------------------------
    def density_report(self) -> dict:
        """As the base engine's; model-level counts use the logical (dense) size of compressed
        layers, whose parameters physically hold only nnz values."""
        rep = super().density_report()
        if "model_params" in rep:
            extra = sum(l.out_features * l.in_features - l.nnz for l in self.layers.values())
            total, nonzero = rep["model_params"] + extra, rep["model_nonzero_params"] + extra
            rep.update(model_params=total, model_nonzero_params=nonzero, model_density=nonzero / max(1, total))
        return rep

    def state_dict(self) -> dict:
        """As the base engine's; masks of compressed layers are sparse COO bool tensors (they
        deep-copy and ``torch.save`` like any tensor; the masked-dense engine loads them too)."""
        state = super().state_dict()
        for name, layer in self.layers.items():
            state["masks"][name] = _coo_mask(layer)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore the engine state. Compressed layers take their pattern from the model's
        state_dict (load that first); the saved mask must agree with it.

        A run whose layers were compressed during training (GMP under the automatic policy)
        resumes in this order: :meth:`restore_structure`, the model's and optimizer's
        state_dicts, then this (it calls ``restore_structure`` too, which is then a no-op)."""
        self.restore_structure(state)
        super().load_state_dict(state)
        self._arm_capture()

    def restore_structure(self, state: dict) -> list:
        """Compress the layers that the engine state ``state`` holds compressed (saved masks with a
        sparse layout) but this engine still holds dense, under their saved masks, so that the
        model's and optimizer's saved state_dicts fit. Returns their names."""
        masks = state.get("masks") if isinstance(state, Mapping) else None
        method = state.get("config", {}).get("method", self.method.name) if isinstance(state, Mapping) else None
        if not isinstance(masks, Mapping) or method != self.method.name:
            return []  # leave the model alone: load_state_dict reports the mismatch
        chosen = [t for t in self._dense_targets() if self._linear(t) and torch.is_tensor(masks.get(t.name))
                  and masks[t.name].layout != torch.strided and tuple(masks[t.name].shape) == t.shape]
        for t in chosen:
            self._compress_layer(t, masks[t.name].to_dense().to(device=t.param.device, dtype=torch.bool))
        return [t.name for t in chosen] + self._restore_rnns(masks)

    def _restore_rnns(self, masks: Mapping[str, torch.Tensor]) -> list:
        """restore_structure for recurrent modules: compress an nn.LSTM / nn.GRU whose matrices
        all have a saved sparse-layout mask of the right shape."""
        out = []
        for module_name, rnn in rnn_modules(self.model):
            names = [f"{module_name}.{n}" for n in matrix_names(rnn.num_layers)]
            saved = {n: masks.get(n) for n in names}
            if unsupported_reason(rnn) is None and all(
                    torch.is_tensor(m) and m.layout != torch.strided and n in self._by_name
                    and tuple(m.shape) == self._by_name[n].shape for n, m in saved.items()):
                device = getattr(rnn, "weight_hh_l0").device
                out += self._compress_rnn(module_name, {n: m.to_dense().to(device=device, dtype=torch.bool)
                                                        for n, m in saved.items()})
        return out

    def _restore_mask(self, name: str, mask: torch.Tensor) -> None:
        if name not in self.layers:
            return super()._restore_mask(name, mask)
        layer = self.layers[name]
        if not torch.equal(_positions(mask).to(layer.col_indices.device), layer.flat_indices()):
            raise CheckpointError(f"the saved mask of '{name}' differs from the layer's sparse "
                                  "structure; load the model's state_dict before the engine's")
        self.masks[name] = layer.mask_view()


def _coo_mask(layer: SparseLinear) -> torch.Tensor:
    idx = torch.stack([row_ids(layer.crow_indices), layer.col_indices.long()])
    ones = torch.ones(layer.nnz, dtype=torch.bool, device=idx.device)
    return torch.sparse_coo_tensor(idx, ones, layer.shape, is_coalesced=True, check_invariants=False)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Sorted flat positions of the True entries of a dense, CSR or COO mask."""
    if mask.layout == torch.sparse_csr:
        return flat_from_csr(mask.crow_indices(), mask.col_indices(), mask.shape[1])
    if mask.layout == torch.sparse_coo:
        mask = mask.coalesce()
        idx = mask.indices()[:, mask.values()]
        return idx[0] * mask.shape[1] + idx[1]
    return flat_from_mask(mask)


def use_sparse_backend(model: nn.Module, engine: SparsityEngine, **options) -> SparseEngine:
    """Switch a training run to the truly sparse CPU backend; returns the engine to use from now on.

    Eligible Linear layers of ``model`` (that of ``engine``) are replaced in place by
    :class:`SparseLinear`, eligible nn.LSTM / nn.GRU by :class:`SparseLSTM` / :class:`SparseGRU`;
    ``engine.optimizer``'s parameter groups and state follow. Options:
    ``max_density``, ``min_size``, ``overrides``, ``cache_transpose``, ``block_elems``, ``kernel``
    (see :class:`SparseEngine`).
    Call it after building the engine and optimizer, before the first step (or between steps).
    """
    if unwrap(model) is not engine.model:
        raise ConfigError("use_sparse_backend: 'model' is not the model the engine was built on")
    if isinstance(engine, SparseEngine):
        raise ConfigError("the engine already uses the sparse backend")
    return SparseEngine.from_engine(engine, **options)


def use_dense_backend(model: nn.Module, engine: SparseEngine) -> SparsityEngine:
    """The way back: every compressed layer of ``model`` becomes an nn.Linear (nn.LSTM, nn.GRU) again (optimizer
    state scattered to dense), and a masked-dense :class:`SparsityEngine` with the same state
    is returned; use it from then on."""
    if unwrap(model) is not engine.model:
        raise ConfigError("use_dense_backend: 'model' is not the model the engine was built on")
    masks = densify_model(engine.model, engine.optimizer)
    new = SparsityEngine.__new__(SparsityEngine)
    sparse_only = ("layers", "block_elems", "_factor_cache", "policy")
    new.__dict__.update({k: v for k, v in vars(engine).items() if k not in sparse_only})
    new.masks = {**engine.masks, **masks}
    new.targets = [Target(t.name, t.module_name, engine.model.get_parameter(t.name))
                   if t.name in masks else t for t in engine.targets]
    new._by_name = {t.name: t for t in new.targets}
    new.apply_masks()
    return new

