"""SparsityEngine: the one stateful object of sparse training.

Drop it into any PyTorch loop::

    engine = SparsityEngine(model, optimizer, "rigl", sparsity=0.9, distribution="erk",
                            total_steps=T)
    for x, y in loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        if engine.after_backward():     # False on RigL update iterations
            optimizer.step()
        engine.after_step()

With AMP's GradScaler (fp16), unscale before the engine reads the gradients::

        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)      # the method reads true gradients
        if engine.after_backward():     # False on update iterations and on overflow steps
            scaler.step(optimizer)
        scaler.update()
        engine.after_step()             # no topology update on an overflow step

``after_backward`` lets the method read dense gradients, then zeroes the gradients of masked
weights; ``after_step`` performs the topology update on update steps and re-applies the masks.
The engine never wraps or patches the optimizer or model, so LR schedulers, AMP (autocast and
GradScaler, in the order above) and DDP work as usual.

Each sparsified tensor lives in a layer store (:mod:`.storage`): masked-dense by default, or
compressed (CSR values as the parameter, truly sparse CPU kernels) where the engine's storage
policy (``storage=BackendPolicy(...)``) selects it. Methods see the same interface either way
(``param``, ``masks``, ``dense_grad``, ``dense_grad_rows``, ``active_values``); the policy is
applied again after every topology update, so a dense-to-sparse method (GMP) moves its big
layers to compressed storage once they are sparse enough.
"""
from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..config import default_distribution
from ..errors import CheckpointError, ConfigError
from ..registry import METHODS
from . import methods as _methods  # noqa: F401  (registers the built-in methods)
from .distributions import plan_densities
from .masks import density_report, random_masks, unwrap
from .patterns import UNSTRUCTURED, Pattern, parse_pattern
from .storage import STORAGES, BackendPolicy, GrowScores, LayerStore, MaskedDenseStore
from .storage.base import DEFAULT_BLOCK_ELEMS

log = logging.getLogger(__name__)


class MaskView(MutableMapping):
    """``engine.masks``: {weight name: bool mask} read from (and written to) the layer stores. A
    compressed layer's mask is a sparse CSR view of its pattern; assigning a dense layer's mask
    replaces it (its weights are masked at the next ``apply_masks``)."""

    def __init__(self, stores: Mapping[str, LayerStore]):
        self._stores = stores

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._stores[name].mask

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        self._stores[name].mask = mask

    def __delitem__(self, name: str) -> None:
        raise TypeError("the engine's layers are fixed at construction; a mask can be replaced, not removed")

    def __iter__(self) -> Iterator[str]:
        return iter(self._stores)

    def __len__(self) -> int:
        return len(self._stores)


class SparsityEngine:
    """Masks + layer distribution + schedule + method + per-layer storage, advanced by two hooks per step.

    Args:
        model: any ``nn.Module`` (DDP-wrapped is fine).
        optimizer: the optimizer stepping ``model``'s parameters, or None (masks only). Its
            per-parameter state tensors (momentum, Adam moments) are zeroed at new connections.
        method: a registered method name (``static``, ``set``, ``rigl``, ``snfs``, ...).
        sparsity: global target fraction of zeros over the sparsified layers, in [0, 1). Leave it
            out for a model built with compressed layers (``SparseLinear.random``,
            ``SparseLSTM.random``): their patterns are then the masks and the only targets. Given
            a sparsity, compressed layers of the model are planned with the dense ones (a model
            from ``build_sparse`` with the same sparsity and rules): each must hold the count the
            plan gives it, and the other targets get random masks.
        distribution: ``uniform``, ``er``, ``erk`` or ``custom``; None: the method's paper default
            (uniform for GMP, SNIP and edge-popup, ERK otherwise; ``config.default_distribution``).
        total_steps: length of training in steps (schedules are anchored to it).
        dense_first: keep the first sparsifiable layer dense; default True for ``uniform``
            (the paper's rule), False otherwise. ``dense_last`` likewise for the last layer.
        include / exclude: fnmatch patterns over parameter names selecting the sparsified tensors.
        custom: {parameter name: density} fixed per layer; ``erk_power``: ERK exponent.
        seed: seeds the engine's own generator (masks, random growth); same seed, same masks.
        sync_masks: under torch.distributed, broadcast each new mask from rank 0.
        storage: a :class:`BackendPolicy` choosing the layers held compressed (the truly sparse
            CPU backend), applied after the masks are built and again after every topology
            update; None (default): every layer masked-dense.
        pattern: the sparsity pattern of every sparsified layer (``unstructured``, ``2:4``,
            ``block:4x4``, ``channel``; :mod:`.patterns`); ``pattern_overrides``: {fnmatch pattern
            over weight names: pattern}, the first match wins.
        **method_options: the method's hyper-parameters (e.g. ``delta_t``, ``alpha``).

    ``stores`` maps weight names to layer stores, ``layers`` the compressed ones to their modules.
    """

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                 method: str = "rigl", *, sparsity: Optional[float] = None, distribution: Optional[str] = None,
                 total_steps: Optional[int] = None, dense_first: Optional[bool] = None,
                 dense_last: bool = False, include: Optional[Sequence[str]] = None,
                 exclude: Optional[Sequence[str]] = None, custom: Optional[Mapping[str, float]] = None,
                 erk_power: float = 1.0, seed: int = 0, sync_masks: bool = True,
                 storage: Optional[BackendPolicy] = None, pattern: str = "unstructured",
                 pattern_overrides: Optional[Mapping[str, str]] = None, **method_options):
        self.model, self.optimizer = unwrap(model), optimizer
        self.method = METHODS.get(method)(**method_options)
        self.total_steps, self.sync_masks, self.policy = total_steps, sync_masks, storage
        self.generator = torch.Generator().manual_seed(int(seed))
        self.step = 0
        self.last_update: Optional[dict] = None
        self._pending_update = False
        self.overflow, self.overflow_steps = False, 0
        self.stores: Dict[str, LayerStore] = {}
        self.patterns: Dict[str, Pattern] = {}
        self.masks = MaskView(self.stores)
        built = self._built_compressed() if sparsity is not None else {}
        adopted = sparsity is None and self._adopt_compressed(seed)
        if not adopted:
            distribution = distribution or default_distribution(self.method.name)
            self._plan(sparsity, distribution, built, dense_first=dense_first, dense_last=dense_last,
                       include=include, exclude=exclude, custom=custom, erk_power=erk_power, seed=seed,
                       pattern=pattern, pattern_overrides=pattern_overrides)
        elif parse_pattern(pattern).structured or pattern_overrides:
            raise ConfigError("a model built with compressed layers keeps unstructured patterns; remove the pattern")
        self._check_patterns(self.policy)
        self.method.check_patterns(self.patterns)
        self.method.setup(self)
        if not adopted:
            masks = self._initial_masks(built)
            for store in self.stores.values():
                if store.name not in built:
                    store.mask = self._broadcast(masks[store.name])
            self.apply_masks()
            if not self.method.starts_dense:  # pruning methods start all-ones
                self._warn_if_denser_than_asked(sparsity)
        self._apply_policy(announce=True)
        self._arm_capture()

    @classmethod
    def from_sparse_model(cls, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                          method: str = "set", *, block_elems: int = DEFAULT_BLOCK_ELEMS,
                          **options) -> "SparsityEngine":
        """An engine over the compressed layers of a model that was built sparse (e.g. with
        ``SparseLinear.random``) and never had dense weights: their patterns are the masks and
        their densities the layer densities. ``options``: ``total_steps``, ``seed``, ``sync_masks``
        and the method's options."""
        return cls(model, optimizer, method, storage=BackendPolicy(block_elems=block_elems), **options)

    def _plan(self, sparsity: Optional[float], distribution: str, built: Mapping[str, LayerStore], seed: int,
              **rules) -> None:
        """Targets, kept-dense layers and per-layer densities of the model (masked-dense stores whose
        masks the method initialises next; ``built``: the stores of layers it already holds
        compressed, which must hold the plan's counts)."""
        if sparsity is None:
            raise ConfigError("sparsity (the target fraction of zeros) is required; only a model built with "
                              "compressed layers (SparseLinear.random, SparseLSTM.random) can leave it out")
        plan = plan_densities(self.model, sparsity, distribution, logical=[s.target for s in built.values()],
                              **rules)
        self._check_built(built, plan, sparsity, distribution)
        self.kept_dense, self.densities = list(plan.kept_dense), dict(plan.densities)
        self.patterns = {t.name: plan.pattern(t.name) for t in plan.targets}
        self.config = {"method": self.method.name, "sparsity": sparsity, "distribution": distribution,
                       "dense_first": plan.dense_first, "dense_last": rules["dense_last"], "seed": seed,
                       "pattern": str(parse_pattern(rules["pattern"]))}
        if rules["pattern_overrides"]:
            self.config["pattern_overrides"] = dict(rules["pattern_overrides"])
        self.stores.update({t.name: built.get(t.name) or MaskedDenseStore(t, None, self.patterns[t.name])
                            for t in plan.targets})

    def _built_compressed(self) -> Dict[str, LayerStore]:
        """Stores of the layers the model holds compressed before the engine plans it (a model from
        ``build_sparse``); with any, the engine's storage policy is the given one or the default."""
        policy = self.policy or BackendPolicy()
        built: Dict[str, LayerStore] = {}
        for key in STORAGES:
            built.update(STORAGES.get(key).adopt(self.model, policy))
        if built:
            self.policy = policy
        return built

    @staticmethod
    def _check_built(built: Mapping[str, LayerStore], plan, sparsity: float, distribution: str) -> None:
        """Every compressed layer is a target of the plan, holding the plan's count."""
        planned = {t.name for t in plan.targets}
        for name, store in built.items():
            fix = ("build the model with build_sparse(...) at the same sparsity, distribution and layer "
                   "rules, or leave out sparsity to train the compressed layers as they are")
            if name not in planned:
                raise ConfigError(f"'{name}' is built compressed but this plan keeps it dense "
                                  f"(dense_first, dense_last, include or exclude); {fix}")
            if store.n_active() != plan.counts[name]:
                raise ConfigError(f"'{name}' is built compressed with {store.n_active()} weights but sparsity "
                                  f"{sparsity:g} ({distribution}) plans {plan.counts[name]}; {fix}")

    def _initial_masks(self, built: Mapping[str, LayerStore]) -> Dict[str, torch.Tensor]:
        """The method's initial masks; around layers built compressed, random masks for the others
        (only methods that start from random masks can take a model built sparse)."""
        if not built:
            return self.method.init_masks(self)
        if not self.method.starts_from_random_masks():
            raise ConfigError(f"method '{self.method.name}' does not start from random masks, so it cannot take "
                              "a model built sparse; build the model dense (sparsity.build=dense)")
        rest = [t for t in self.targets if t.name not in built]
        return random_masks(rest, self.densities, self.generator, self.patterns)

    def _check_patterns(self, policy: Optional[BackendPolicy]) -> None:
        """The compressed (CSR) storage holds unstructured layers only."""
        if policy is not None and any(p.structured for p in self.patterns.values()):
            raise ConfigError("the sparse (CSR) backend trains unstructured layers only; use sparsity.backend=masked "
                              "with a structured sparsity.pattern")

    def pattern(self, name: str) -> Pattern:
        """The sparsity pattern of layer ``name`` (:mod:`.patterns`)."""
        return self.patterns.get(name, UNSTRUCTURED)

    def _adopt_compressed(self, seed: int) -> bool:
        """Make the layers the model already holds compressed (built sparse) the engine's targets;
        returns whether there were any."""
        policy = self.policy or BackendPolicy()
        adopted = {}
        for key in STORAGES:
            adopted.update(STORAGES.get(key).adopt(self.model, policy))
        if not adopted:
            return False
        self.policy, self.kept_dense = policy, []
        self.stores.update(adopted)
        self.densities = {n: s.n_active() / max(1, s.numel) for n, s in adopted.items()}
        total, active = sum(s.numel for s in adopted.values()), sum(s.n_active() for s in adopted.values())
        self.config = {"method": self.method.name, "sparsity": 1 - active / max(1, total), "distribution": "custom",
                       "dense_first": False, "dense_last": False, "seed": seed}
        return True

    # --- accessors used by methods ----------------------------------------------------------
    @property
    def targets(self) -> list:
        """The sparsified tensors (:class:`masks.Target`) in model order; a compressed layer's
        ``param`` is a storage-free tensor of its dense shape."""
        return [s.target for s in self.stores.values()]

    @property
    def layers(self) -> Dict[str, nn.Module]:
        """{weight name: module} of the layers stored compressed (e.g. ``SparseLinear``)."""
        return {n: s.layer for n, s in self.stores.items() if s.compressed}

    def param(self, name: str) -> nn.Parameter:
        """The trainable tensor of layer ``name``: the dense weight, or a compressed layer's
        vector of active values (row-major order)."""
        return self.stores[name].param

    def dense_grad(self, name: str) -> torch.Tensor:
        """∂L/∂(M⊙W) for layer ``name`` (dense: the gradient of a masked weight is not masked).
        Zeros if the layer got no gradient this step."""
        return self.stores[name].dense_grad()

    def dense_grad_rows(self, name: str, rows: slice) -> torch.Tensor:
        """Rows ``rows`` of :meth:`dense_grad` with the weight viewed as a matrix (dim 0 × the
        rest). A compressed layer computes only these rows."""
        return self.stores[name].dense_grad_rows(rows)

    def active_values(self, name: str, tensor: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The entries of a per-weight tensor of layer ``name`` (default: the weight) at its active
        positions, as a vector in row-major order; methods use it to summarise a layer (mean |w|,
        mean |EMA|) the same way whether the layer is stored dense or compressed."""
        return self.stores[name].active_values(tensor)

    def is_compressed(self, name: str) -> bool:
        """Whether layer ``name`` is stored compressed, with ``param(name)`` its vector of active values."""
        store = self.stores.get(name)
        return store is not None and store.compressed

    # --- the two hooks ----------------------------------------------------------------------
    def after_backward(self, grads_finite: Optional[bool] = None) -> bool:
        """Call right after ``loss.backward()`` (under AMP's GradScaler: after
        ``scaler.unscale_(optimizer)``, so that the method reads true gradients). Returns whether
        to run ``optimizer.step()``.

        Overflow: on a step whose gradients hold inf/NaN (GradScaler's overflow steps) the method
        reads nothing (no gradient average, no topology update on an update step) and the return
        is False. ``grads_finite`` gives that answer; None (default): the engine checks the
        gradients of the optimizer's parameters (the model's without an optimizer), the same set
        GradScaler checks, on the steps whose gradients the method reads (update steps, and every
        step of a method that averages gradients, SNFS)."""
        update = self.method.is_update_step(self.step)
        if grads_finite is None and (update or self.method.uses_dense_grad(self.step)):
            grads_finite = self._grads_finite()
        self.overflow = grads_finite is False
        if self.overflow:
            self.overflow_steps += 1
            log.info("step %d: non-finite gradients (an AMP overflow step): no gradient average, "
                     "no topology update", self.step)
        else:
            self.method.observe_gradients(self, update)
        with torch.no_grad():
            for store in self.stores.values():
                store.mask_gradients()
        self._pending_update = update and not self.overflow
        return not (self.overflow or (update and self.method.skip_optimizer_step))

    @torch.no_grad()
    def _grads_finite(self) -> bool:
        """Whether every gradient of the trained parameters is finite (one device sync)."""
        if self.optimizer is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
        else:
            params = list(self.model.parameters())
        flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
        return bool(torch.stack(flags).all()) if flags else True

    def after_step(self) -> None:
        """Call after the (possibly skipped) optimizer step: update topology (unless the step
        overflowed), re-apply masks."""
        if self._pending_update:
            self.update_masks(self.method.drop_fraction(self.step))
        self._pending_update = False
        self.apply_masks()
        self.step += 1
        self._arm_capture()

    def step_optimizer(self, step_fn: Optional[Callable[[], object]] = None, scaler=None) -> bool:
        """Convenience: ``after_backward``, the optimizer step if allowed, ``after_step``.
        ``step_fn`` replaces ``optimizer.step`` (e.g. to clip first). With ``scaler`` (AMP's
        GradScaler; call this after ``scaler.scale(loss).backward()``): ``scaler.unscale_``, then
        ``after_backward``, ``scaler.step`` (or ``step_fn``) if allowed, ``scaler.update``,
        ``after_step``. Returns whether the optimizer stepped."""
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        run = self.after_backward()
        if run:
            if step_fn is not None:
                step_fn()
            elif scaler is not None:
                scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        if scaler is not None:
            scaler.update()
        self.after_step()
        return run

    def _capturing(self) -> bool:
        """Whether the coming step needs dense gradients of compressed layers: it updates the
        topology (RigL's grow scores), or the method reads them every step (SNFS's EMA)."""
        return self.method.is_update_step(self.step) or self.method.uses_dense_grad(self.step)

    def _arm_capture(self) -> None:
        compressed = [s for s in self.stores.values() if s.compressed]
        if compressed:
            capture = self._capturing()
            for store in compressed:
                store.prepare_step(capture)

    # --- mask mechanics ---------------------------------------------------------------------
    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every masked weight in place."""
        for store in self.stores.values():
            store.apply_mask()

    @torch.no_grad()
    def update_masks(self, fraction: float) -> dict:
        """Drop/grow every layer; returns (and keeps in ``last_update``) what changed."""
        counts = self.method.allocate(self, fraction)
        changed = {name: self._update_layer(name, *counts[name]) for name in list(self.stores)}
        self.method.finish_update(self)
        active = sum(s.n_active() for s in self.stores.values())
        self.last_update = {"step": self.step, "drop_fraction": fraction,
                            "grown": sum(changed.values()),
                            "churn": sum(changed.values()) / max(1, active), "per_layer": changed}
        self._apply_policy()
        return self.last_update

    def _update_layer(self, name: str, n_drop: int, n_grow: int) -> int:
        """Keep the top (n_active − n_drop) by drop score, grow the top n_grow among the rest.
        Returns the number of truly new connections (they start at zero with zero state). A store
        asks for whole-layer grow scores or for blocks of rows (:class:`GrowScores`)."""
        grow = GrowScores(lambda: self.method.grow_scores(self, name),
                          lambda rows, n_cols: self.method.grow_scores_rows(self, name, rows, n_cols))
        drop = self.method.drop_scores(self, name)
        return self.stores[name].update(n_drop, n_grow, drop, grow, self._broadcast, self.optimizer)

    @torch.no_grad()
    def set_masks(self, masks: Mapping[str, torch.Tensor], reason: str = "set") -> dict:
        """Replace every layer's mask at once (pruning: SNIP's step-0 mask, an IMP level, a mined
        ticket) and zero the weights outside it. Weights inside keep their values (a compressed
        layer's positions new to its pattern start at zero with zero optimizer state). Recorded in
        ``last_update`` so observers (FLOPs meter, metrics) see the new topology."""
        if set(masks) != set(self.stores):
            raise ConfigError(f"set_masks needs a mask for exactly the layers {sorted(self.stores)}, "
                              f"got {sorted(masks)}")
        for name, m in masks.items():
            if tuple(m.shape) != self.stores[name].shape:
                raise ConfigError(f"mask '{name}' has shape {tuple(m.shape)}, the weight {self.stores[name].shape}")
        for name, m in masks.items():
            store = self.stores[name]
            store.set_mask(self._broadcast(m.to(device=store.param.device, dtype=torch.bool).clone()), self.optimizer)
        active = sum(s.n_active() for s in self.stores.values())
        total = sum(s.numel for s in self.stores.values())
        self.last_update = {"step": self.step, "reason": reason, "drop_fraction": 0.0, "grown": 0,
                            "churn": 0.0, "density": active / max(1, total)}
        self._apply_policy()
        return self.last_update

    def _distributed(self) -> bool:
        return self.sync_masks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's mask (or sorted positions) on every rank: masks agree even if gradients differ
        in the last bit."""
        if not self._distributed():
            return t
        if t.dtype == torch.bool:
            buf = t.to(torch.uint8)
            dist.broadcast(buf, src=0)
            return buf.bool()
        dist.broadcast(t, src=0)
        return t

    # --- storage ----------------------------------------------------------------------------
    def use_storage(self, policy: Optional[BackendPolicy]) -> "SparsityEngine":
        """Switch storage in place and return the engine: under ``policy`` the layers it selects
        are compressed (model and optimizer follow); None gives every compressed layer back to
        masked-dense storage (its optimizer state scattered to dense)."""
        if policy is None:
            for key in STORAGES:
                self._install(STORAGES.get(key).densify(self.model, self.stores, self.optimizer))
            self.policy = None
            self.apply_masks()
            return self
        self._check_patterns(policy)
        self.policy = policy
        self._apply_policy(announce=True)
        return self

    def _apply_policy(self, announce: bool = False) -> list:
        """Compress the masked-dense layers the storage policy now selects; returns their names."""
        if self.policy is None:
            return []
        names = []
        for key in STORAGES:
            new = STORAGES.get(key).compress(self.model, self.stores, self.policy, self.optimizer, announce)
            self._install(new)
            names += list(new)
        if announce:
            self._announce()
        elif names:
            log.info("sparse backend: step %d: compressed %s (now within the backend policy)", self.step,
                     ", ".join(names))
        return names

    def _install(self, new: Mapping[str, LayerStore]) -> None:
        """Put freshly converted stores in place (model order is kept: the keys exist already)."""
        self.stores.update(new)
        if new:
            capture = self._capturing()
            for store in new.values():
                store.prepare_step(capture)

    def _announce(self) -> None:
        layers = self.layers
        log.info("sparse backend: %d of %d layers compressed (%s)", len(layers), len(self.stores),
                 ", ".join(layers) or "none")
        if layers and self.method.tracks_momentum:
            n = sum(self.stores[name].numel for name in layers)
            log.info("sparse backend: method '%s' keeps a dense per-weight statistic (an EMA of dense "
                     "gradients, %d entries over the compressed layers) and forms their dense gradient "
                     "every step", self.method.name, n)

    def restore_structure(self, state: dict) -> list:
        """Compress the layers that the engine state ``state`` holds compressed (saved masks with a
        sparse layout) but this engine still holds dense, so that the model's and optimizer's saved
        state_dicts fit; returns their names. A no-op without a storage policy.

        A run whose layers were compressed during training (GMP under the automatic policy)
        resumes in this order: this, the model's and optimizer's state_dicts, then
        :meth:`load_state_dict` (which calls this too; it is then a no-op)."""
        masks = state.get("masks") if isinstance(state, Mapping) else None
        method = state.get("config", {}).get("method", self.method.name) if isinstance(state, Mapping) else None
        if self.policy is None or not isinstance(masks, Mapping) or method != self.method.name:
            return []  # leave the model alone: load_state_dict reports a mismatch
        names = []
        for key in STORAGES:
            new = STORAGES.get(key).restore(self.model, self.stores, masks, self.policy, self.optimizer)
            self._install(new)
            names += list(new)
        return names

    # --- reporting --------------------------------------------------------------------------
    def density_report(self) -> dict:
        """Achieved per-layer and global densities (see :func:`masks.density_report`); model-level
        counts use the logical (dense) size of compressed layers, whose parameters physically hold
        only the active values."""
        rep = density_report(self.targets, self.masks, self.kept_dense, self.model)
        for name, p in self.patterns.items():
            rep["layers"][name]["pattern"] = str(p)
        extra = sum(s.numel - s.param.numel() for s in self.stores.values())
        if "model_params" in rep and extra:
            total, nonzero = rep["model_params"] + extra, rep["model_nonzero_params"] + extra
            rep.update(model_params=total, model_nonzero_params=nonzero, model_density=nonzero / max(1, total))
        return rep

    def _warn_if_denser_than_asked(self, sparsity: float) -> None:
        rep = self.density_report()
        asked = 1.0 - sparsity
        if rep["weights_density"] > 1.2 * asked + 1e-9:
            log.warning("requested sparsity %.6g, but %.4g%% of all weights are active (%s); "
                        "the real sparsity over weights is %.6g", sparsity, 100 * rep["weights_density"],
                        self._why_denser(), 1 - rep["weights_density"])

    def _why_denser(self) -> str:
        """The rule that made the masks denser than asked."""
        if self.kept_dense:
            return "dense first/last layer"
        if any(float(m.float().mean()) >= 1.0 for m in self.masks.values()):
            return "layers capped at density 1"
        return "every layer keeps at least one weight: N - floor(s*N) of its N"

    # --- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Step, masks (a compressed layer's as a sparse COO bool tensor), densities, generator,
        the method's state, config and the last update."""
        return {"step": self.step, "masks": {n: s.mask_state() for n, s in self.stores.items()},
                "densities": dict(self.densities), "generator": self.generator.get_state(),
                "method": self.method.state_dict(), "config": dict(self.config),
                "last_update": self.last_update}

    def load_state_dict(self, state: dict) -> None:
        """Restore exactly; a state from a different model or method is a CheckpointError.
        Compressed layers take their pattern from the model's state_dict (load that first, after
        :meth:`restore_structure`); the saved mask must agree with it."""
        self.restore_structure(state)
        try:
            masks, step = state["masks"], int(state["step"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"not a sparsetrain engine state (missing {e}); use the engine "
                                  "state saved by the same sparsetrain version") from None
        if set(masks) != set(self.stores):
            raise CheckpointError(f"engine state has layers {sorted(masks)} but the model has "
                                  f"{sorted(self.stores)}; load it into the same architecture")
        if state.get("config", {}).get("method", self.method.name) != self.method.name:
            raise CheckpointError(f"engine state is for method '{state['config']['method']}', "
                                  f"not '{self.method.name}'")
        saved_pattern = state.get("config", {}).get("pattern", "unstructured")
        if saved_pattern != self.config.get("pattern", "unstructured"):
            raise CheckpointError(f"engine state has sparsity pattern {saved_pattern}, this engine "
                                  f"{self.config.get('pattern', 'unstructured')}; build it with pattern={saved_pattern}")
        for n, m in masks.items():  # check every mask before changing anything
            if not torch.is_tensor(m) or tuple(m.shape) != self.stores[n].shape:
                raise CheckpointError(f"mask '{n}' has shape {tuple(getattr(m, 'shape', ()))}, the model's "
                                      f"weight {self.stores[n].shape}; load it into the same architecture")
        for n, m in masks.items():
            self.stores[n].load_mask(m)
        self.step, self.last_update = step, state.get("last_update")
        self.densities = dict(state.get("densities", self.densities))
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.method.load_state_dict(state.get("method", {}))
        self.apply_masks()
        self._arm_capture()
