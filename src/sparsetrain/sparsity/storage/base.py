"""How a sparsified layer is held: the small interface every layer store implements, the registry
of compressed storages, and the policy choosing which layers they hold.

The engine keeps one :class:`LayerStore` per sparsified tensor and talks to it only through this
interface, so a storage (masked-dense, CSR, ...) is one folder under ``storage/``:

* ``param`` is the trainable tensor (a dense weight, or a CSR values vector) and ``mask`` the
  pattern as a bool tensor of the weight's shape (dense, or a sparse view without dense memory);
* ``dense_grad`` / ``dense_grad_rows`` give ∂L/∂W, whole or a block of rows of the weight viewed
  as a matrix, and ``active_values`` a per-weight tensor at the active positions (row-major);
* ``mask_gradients`` / ``apply_mask`` keep masked weights out of the step and physically zero;
* ``update`` drops and grows (exact counts; survivors keep value and optimizer state, new
  connections start at zero with zero state) and ``set_mask`` installs a whole new pattern;
* ``mask_state`` / ``load_mask`` are its part of the engine's ``state_dict``.

A :class:`Storage` moves layers into its own store type and back (compress, adopt a model built
that way, restore a checkpoint's structure, densify). Storages register in :data:`STORAGES`; the
engine applies each registered one under its :class:`BackendPolicy`.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, NamedTuple, Optional

import torch
from torch import nn

from ...errors import ConfigError
from ...registry import Registry
from ..masks import Target
from ..topk import count_active

BACKENDS = ("sparse", "dense")
KERNELS = ("auto", "native", "mkl", "sparseprop")
CONV_KERNELS = ("auto", "native", "mkl", "sparseprop")

#: entries of the dense score matrix formed at once while growing a compressed layer: 16 MiB of
#: float32 scores, about 60 MB of temporaries in all (the gradient block, its scores, a cleaned
#: copy, one comparison); a 4096 x 4096 layer takes 4 blocks (fewer, larger GEMMs and selections)
DEFAULT_BLOCK_ELEMS = 1 << 22

#: ``sync(tensor)`` returns rank 0's copy of a mask or position tensor (identity on one process)
Sync = Callable[[torch.Tensor], torch.Tensor]


class GrowScores(NamedTuple):
    """The method's grow scores of one layer, in the two forms a store may ask for: ``whole()``
    (weight-shaped) or ``rows(rows, n_cols)`` (a block of rows of the weight as a matrix, so a
    compressed layer never holds a dense score matrix)."""

    whole: Callable[[], torch.Tensor]
    rows: Callable[[slice, int], torch.Tensor]


class LayerStore:
    """One sparsified tensor as the engine sees it (see the module docstring for the contract).

    ``target`` names it (weight name, module name; for a compressed store ``target.param`` is a
    storage-free tensor of the dense shape, so shape and numel queries work everywhere). A
    compressed store also exposes the module holding it as ``layer`` (``engine.layers``).
    """

    #: whether ``param`` holds only the active values (the layer is physically sparse)
    compressed: bool = False

    def __init__(self, target: Target):
        self.target = target

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def shape(self) -> tuple:
        """The weight's logical (dense) shape."""
        return self.target.shape

    @property
    def numel(self) -> int:
        """Entries of the logical weight; ``numel − param.numel()`` are not stored at all."""
        return self.target.param.numel()

    @property
    def param(self) -> nn.Parameter:
        raise NotImplementedError

    @property
    def mask(self) -> torch.Tensor:
        raise NotImplementedError

    def n_active(self) -> int:
        return int(self.mask.sum())

    def dense_grad(self) -> torch.Tensor:
        raise NotImplementedError

    def dense_grad_rows(self, rows: slice) -> torch.Tensor:
        raise NotImplementedError

    def active_values(self, tensor: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def prepare_step(self, capture: bool) -> None:
        """Compressed stores, before a step's forward pass: whether its backward pass must keep what
        ``dense_grad`` needs (a compressed layer's dense gradient is not otherwise computed)."""

    # the two per-step calls run under the engine's torch.no_grad() (one context for all layers)
    def mask_gradients(self) -> None:
        """Zero the gradient of masked weights (after the method read the dense gradient)."""

    def apply_mask(self) -> None:
        """Zero every masked weight in place."""

    def update(self, n_drop: int, n_grow: int, drop_scores: torch.Tensor, grow: GrowScores, sync: Sync,
               optimizer: Optional[torch.optim.Optimizer]) -> int:
        """Keep the top (n_active − n_drop) active weights by ``drop_scores``, grow the top ``n_grow``
        of ``grow`` among the rest; returns the number of truly new connections."""
        raise NotImplementedError

    def set_mask(self, mask: torch.Tensor, optimizer: Optional[torch.optim.Optimizer]) -> None:
        """Install ``mask`` (dense bool, weight-shaped) and zero the weights outside it."""
        raise NotImplementedError

    def mask_state(self) -> torch.Tensor:
        """The mask as saved in the engine's state_dict (a copy)."""
        raise NotImplementedError

    def load_mask(self, mask: torch.Tensor) -> None:
        """Install a mask saved by :meth:`mask_state` of any store of this layer."""
        raise NotImplementedError


class Storage:
    """A kind of compressed storage: moves layers into its stores and back. Every hook returns
    {weight name: new store} for the layers it took over (or gave back) and updates the model
    and optimizer in place (modules replaced, parameters and per-weight state converted)."""

    name = "storage"

    def compress(self, model: nn.Module, stores: Mapping[str, LayerStore], policy: "BackendPolicy",
                 optimizer: Optional[torch.optim.Optimizer], announce: bool) -> Dict[str, LayerStore]:
        """Stores for the dense-held layers that ``policy`` now assigns to this storage;
        ``announce``: log each decision at INFO (else DEBUG)."""
        return {}

    def adopt(self, model: nn.Module, policy: "BackendPolicy") -> Dict[str, LayerStore]:
        """Stores for layers ``model`` was built with in this storage's format."""
        return {}

    def restore(self, model: nn.Module, stores: Mapping[str, LayerStore], saved: Mapping[str, torch.Tensor],
                policy: "BackendPolicy", optimizer: Optional[torch.optim.Optimizer]) -> Dict[str, LayerStore]:
        """Stores for the dense-held layers whose ``saved`` engine masks say this storage held them."""
        return {}

    def densify(self, model: nn.Module, stores: Mapping[str, LayerStore],
                optimizer: Optional[torch.optim.Optimizer]) -> Dict[str, LayerStore]:
        """Masked-dense stores for every layer this storage holds."""
        return {}


#: the compressed storages by name (the engine applies them in name order)
STORAGES = Registry("storage")


def check_kernel(kernel: str) -> None:
    """ConfigError unless ``kernel`` is known and its implementation importable."""
    if kernel not in KERNELS:
        raise ConfigError(f"unknown sparse kernel '{kernel}'; choose one of: {', '.join(KERNELS)}")
    if kernel == "native":
        from .csr import native  # built at install when a C compiler was there
        if not native.available():
            raise ConfigError("kernel 'native' was not built (no C compiler when sparsetrain was installed): "
                              "reinstall with gcc or clang available, or use kernel='auto' or 'mkl'")
    if kernel == "sparseprop":
        from .csr.functional import sparseprop_backend  # the optional package is probed on demand
        if sparseprop_backend() is None:
            raise ConfigError("kernel 'sparseprop' needs the sparseprop package: pip install "
                              "'sparsetrain[accel]' (x86-64 Linux), or use kernel='mkl'")


@dataclass(frozen=True)
class BackendPolicy:
    """Which sparsified layers are stored compressed (the engine's storage policy).

    It is applied when the engine is built or switched to it and again after every topology
    update, so a layer pruned below ``max_density`` (GMP) is compressed then; a compressed layer
    is never decompressed automatically (``use_dense_backend`` does that). An nn.LSTM / nn.GRU is
    decided as a whole: it is compressed iff every weight matrix of it would be, or an override
    pattern matching the module's own name (e.g. ``{"rnn": "sparse"}``) forces it.

    Args:
        max_density: compress only layers with at most this fraction of active weights.
        min_size: compress only layers with at least this many weights (dense entries).
        overrides: {fnmatch pattern over weight names: "sparse" | "dense"}; the first matching
            pattern wins over the automatic rule (a layer other than Linear, Conv2d, LSTM or GRU
            always stays dense).
        cache_transpose: compressed layers keep Wᵀ's structure between steps (faster backward,
            8 more bytes per connection); see ``SparseLinear``.
        kernel: products of compressed Linear layers: "auto" (the default: "native" for float32
            on the CPU where it was built, else "mkl"), "native" (this package's C kernels, split
            between threads by nonzeros: float32, CPU), "mkl" (torch's MKL CSR products) or
            "sparseprop" (the AVX2 kernels of the sparseprop package, ``pip install
            sparsetrain[accel]``: float32 only, needs no Wᵀ structure). The default was chosen
            by the per-shape measurements in docs/performance.md; it is fixed per run, not
            re-measured, so that runs stay bitwise reproducible.
        block_elems: entries of a compressed layer's grow scores formed at once (memory bound of
            a growth step).
        conv_min_size: compress an nn.Conv2d (groups = 1) only with at least this many weights
            (its cost is nnz × output positions: convs pay off far below ``min_size``).
        conv_kernel: products of compressed convolutions: "auto" (sparseprop's direct kernels
            where they cover the layer, else unfold + the native kernels where built, else unfold
            + MKL), "sparseprop" (same), "native" or "mkl" (unfold + that kernel).
    """

    max_density: float = 0.1
    min_size: int = 1 << 16
    overrides: Mapping[str, str] = field(default_factory=dict)
    cache_transpose: bool = True
    kernel: str = "auto"
    block_elems: int = DEFAULT_BLOCK_ELEMS
    conv_min_size: int = 1 << 12
    conv_kernel: str = "auto"

    def __post_init__(self):
        check_kernel(self.kernel)
        if self.conv_kernel not in CONV_KERNELS:
            raise ConfigError(f"unknown conv kernel '{self.conv_kernel}'; choose one of: {', '.join(CONV_KERNELS)}")
        if self.conv_kernel == "native":
            check_kernel("native")
        bad = {p: b for p, b in self.overrides.items() if b not in BACKENDS}
        if bad:
            raise ConfigError(f"backend overrides {bad} are invalid; use 'sparse' or 'dense'")
        if not 0.0 <= self.max_density <= 1.0:
            raise ConfigError(f"max_density must be in [0, 1], got {self.max_density}")
        if int(self.block_elems) < 1:
            raise ConfigError(f"block_elems must be a positive integer, got {self.block_elems}")

    def override(self, name: str) -> Optional[str]:
        """The backend the first override pattern matching ``name`` forces, or None."""
        return next((b for p, b in self.overrides.items() if fnmatch.fnmatchcase(name, p)), None)

    def choose(self, name: str, numel: int, active: int, min_size: Optional[int] = None) -> str:
        """'sparse' or 'dense' for weight ``name`` with ``numel`` entries, ``active`` of them active:
        an override, else density ≤ ``max_density`` and at least ``min_size`` (default
        ``self.min_size``) weights."""
        forced = self.override(name)
        if forced is not None:
            return forced
        # compare counts, not floats: a layer built at density d has count_active(numel, d) weights
        small_enough = active <= count_active(numel, self.max_density)
        big_enough = numel >= (self.min_size if min_size is None else min_size)
        return "sparse" if small_enough and big_enough else "dense"
