"""Sparse export: a trained model's masked weights as CSR tensors in one safetensors file.

Layout of the file (all names are the model's ordinary state_dict names):

* a masked weight ``W`` (an RNN weight matrix ``rnn.weight_hh_l0`` included) → ``<W>.crow_indices`` (int32), ``<W>.col_indices`` (int32),
  ``<W>.values``; the CSR pattern is exactly the mask (a connection kept at value 0 stays in it),
  so masks cost no extra bytes; a weight of more than two dimensions (conv) is stored as its
  (out × rest) matrix;
* every other tensor (biases, norms, dense layers) as is;
* metadata ``sparsetrain`` = JSON {"version": 1, "csr": {name: dense shape}}.

:func:`load_sparse` needs only torch and safetensors (plus this package's SparseLinear for
compressed inference), not the engine, optimizer or config.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from ....errors import CheckpointError, ConfigError
from .indices import csr_from_flat, csr_tensor, flat_from_csr, flat_from_mask
from .convert import compress_rnn, compressed_layers, decompress_rnn, rnn_modules
from .linear import SparseLinear
from .matrix import CSRWeight
from .rnn import SparseRNNBase, matrix_names, unsupported_reason

FORMAT_VERSION = 1
_KEY = "sparsetrain"


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("sparse export needs the 'safetensors' package: pip install 'sparsetrain[export]'") from None
    return st


def _csr_entries(name: str, shape, flat: torch.Tensor, values: torch.Tensor) -> Dict[str, torch.Tensor]:
    crow, col = csr_from_flat(flat, (shape[0], math.prod(shape[1:])))
    return {f"{name}.crow_indices": crow, f"{name}.col_indices": col, f"{name}.values": values}


def _collect(model: nn.Module, masks: Mapping[str, torch.Tensor]):
    """(tensors, {csr weight name: dense shape}) of ``model`` under ``masks``."""
    tensors, csr = {}, {}
    sparse_prefixes = {f"{n}." for n, m in model.named_modules() if isinstance(m, CSRWeight)}
    for name, (_, m) in _all_compressed(model).items():
        csr[name] = list(m.weight_shape)
        tensors.update(_csr_entries(name, m.weight_shape, m.flat_indices(), m.values.detach()))
    for name, t in model.state_dict().items():
        if any(name.startswith(p) and name[len(p):] in ("values", "crow_indices", "col_indices")
               for p in sparse_prefixes):
            continue
        mask = masks.get(name)
        if mask is not None and mask.layout != torch.strided:
            mask = mask.to_dense()
        if mask is not None and not bool(mask.all()):
            flat = flat_from_mask(mask)
            csr[name] = list(t.shape)
            tensors.update(_csr_entries(name, t.shape, flat, t.detach().reshape(-1)[flat]))
        else:
            tensors[name] = t.detach()
    return tensors, csr


def _all_compressed(model: nn.Module) -> Dict[str, tuple]:
    """{weight name: (module name, layer)} of every compressed layer (Linear, RNN matrix, conv)."""
    out = compressed_layers(model)
    seen = {id(m) for _, m in out.values()}
    out.update({f"{n}.weight": (n, m) for n, m in model.named_modules()
                if n and isinstance(m, CSRWeight) and id(m) not in seen})
    return out


def export_sparse(model: nn.Module, path, masks: Optional[Mapping[str, torch.Tensor]] = None) -> int:
    """Write ``model`` to ``path`` (safetensors) with compressed layers and masked weights in CSR.

    ``masks``: {weight name: bool mask} of masked-dense layers (e.g. ``engine.masks``); layers
    already compressed (SparseLinear) need none. Returns the file size in bytes.
    """
    tensors, csr = _collect(model, masks or {})
    tensors = {k: v.contiguous().cpu().clone() for k, v in tensors.items()}  # no shared storage
    meta = {_KEY: json.dumps({"version": FORMAT_VERSION, "csr": csr})}
    _safetensors().save_file(tensors, os.fspath(path), metadata=meta)
    return os.path.getsize(path)


class SparseCheckpoint:
    """An exported model: CSR weights (with their masks) and dense tensors, ready for inference."""

    def __init__(self, tensors: Dict[str, torch.Tensor], shapes: Dict[str, list]):
        self.tensors, self.shapes = tensors, {k: tuple(v) for k, v in shapes.items()}

    def _flat(self, name: str) -> torch.Tensor:
        cols = math.prod(self.shapes[name][1:])
        return flat_from_csr(self.tensors[f"{name}.crow_indices"], self.tensors[f"{name}.col_indices"], cols)

    def sparse_weights(self) -> Dict[str, torch.Tensor]:
        """{name: torch sparse CSR tensor (out × rest)} of every compressed weight."""
        return {n: csr_tensor(self.tensors[f"{n}.crow_indices"], self.tensors[f"{n}.col_indices"],
                              self.tensors[f"{n}.values"], (s[0], math.prod(s[1:])))
                for n, s in self.shapes.items()}

    def masks(self) -> Dict[str, torch.Tensor]:
        """{weight name: dense bool mask} of every compressed weight."""
        out = {}
        for name, shape in self.shapes.items():
            m = torch.zeros(math.prod(shape), dtype=torch.bool)
            m[self._flat(name)] = True
            out[name] = m.view(shape)
        return out

    def dense_weight(self, name: str) -> torch.Tensor:
        values = self.tensors[f"{name}.values"]
        w = torch.zeros(math.prod(self.shapes[name]), dtype=values.dtype)
        w[self._flat(name)] = values
        return w.view(self.shapes[name])

    def dense_state_dict(self) -> Dict[str, torch.Tensor]:
        """A plain state_dict (masked weights densified) for any model of the architecture."""
        out = {k: v for k, v in self.tensors.items() if k.rpartition(".")[0] not in self.shapes}
        out.update({n: self.dense_weight(n) for n in self.shapes})
        return out

    def load_into(self, model: nn.Module, compress: bool = True) -> nn.Module:
        """Load into ``model`` (the architecture it was exported from). With ``compress``,
        Linear layers stored in CSR become :class:`SparseLinear` and Conv2d layers (groups = 1)
        ``SparseConv2d`` (fast sparse inference), and an
        nn.LSTM / nn.GRU whose weight matrices are all stored in CSR a SparseLSTM / SparseGRU."""
        rnns = self._recurrent(model)
        for module_name in rnns:  # sparse ones take the dense state first, like nn.LSTM
            if isinstance(model.get_submodule(module_name), SparseRNNBase):
                decompress_rnn(model, module_name)
        state, done = self.dense_state_dict(), set()
        for name in self.shapes:
            module_name = name[: -len(".weight")] if name.endswith(".weight") else None
            module = _submodule(model, module_name)
            if compress and _compressible(module):
                self._place_sparse(model, module_name, module, name)
                done.update({name, f"{module_name}.bias"})
        rest = {k: v for k, v in state.items() if k not in done}
        try:
            missing, unexpected = model.load_state_dict(rest, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"the exported model does not fit this architecture: {e}") from None
        placed = {n[: -len(".weight")] + "." for n in done if n.endswith(".weight")}
        missing = [k for k in missing if not any(k.startswith(p) for p in placed)]
        if missing or unexpected:
            raise CheckpointError(f"the exported model does not fit this architecture (missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}); build the model it was exported from")
        if compress:
            masks = self.masks()
            for module_name in rnns:
                compress_rnn(model, module_name, masks)
        return model

    def _recurrent(self, model: nn.Module) -> list:
        """Names of the (dense or sparse) LSTM / GRU modules of ``model`` whose weight matrices
        are all stored in CSR here."""
        candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, SparseRNNBase)]
        candidates += [(n, m) for n, m in rnn_modules(model) if unsupported_reason(m) is None]
        return [n for n, m in candidates if all(f"{n}.{w}" in self.shapes for w in matrix_names(m.num_layers))]

    def _place_sparse(self, model: nn.Module, module_name: str, module: nn.Module, name: str) -> None:
        """Put the compressed equivalent of ``module`` (nn.Linear / nn.Conv2d, or their compressed
        layers) holding weight ``name`` in its place."""
        layer = _weight_shape(module)
        if layer != self.shapes[name]:
            raise CheckpointError(f"'{name}' was exported with shape {self.shapes[name]}, the model's layer is "
                                  f"{layer}; build the model it was exported from")
        flat, values = self._flat(name), self.tensors[f"{name}.values"]
        bias = self.tensors.get(f"{module_name}.bias")
        if len(layer) == 2:
            new = SparseLinear(layer[1], layer[0], flat, values, bias)
        else:
            new = _conv().SparseConv2d(module.in_channels, module.out_channels, module.kernel_size, flat, values, bias,
                                stride=_geometry(module).stride, padding=_geometry(module).padding,
                                dilation=_geometry(module).dilation)
        parent, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new.to(next(module.parameters()).device))


def _conv():
    """The conv storage's layer module (it builds on this package, so it is imported when needed)."""
    from ..conv import layer
    return layer


def _compressible(module: Optional[nn.Module]) -> bool:
    """Whether an exported CSR weight of ``module`` is loaded as a compressed layer."""
    conv = _conv()
    if type(module) in (nn.Linear, SparseLinear, conv.SparseConv2d):
        return True
    return type(module) is nn.Conv2d and conv.unsupported_reason(module) is None


def _weight_shape(module: nn.Module) -> tuple:
    return tuple(module.weight_shape) if isinstance(module, CSRWeight) else tuple(module.weight.shape)


def _geometry(module: nn.Module):
    """(stride, padding, dilation) of an nn.Conv2d or SparseConv2d, as a namespace."""
    return module.geometry if isinstance(module, CSRWeight) else module


def _submodule(model: nn.Module, name: Optional[str]) -> Optional[nn.Module]:
    if not name:
        return None
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def load_sparse(path) -> SparseCheckpoint:
    """Read a file written by :func:`export_sparse`."""
    st = _safetensors()
    try:
        from safetensors import safe_open
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_KEY])
        tensors = st.load_file(os.fspath(path))
    except (KeyError, ValueError, OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a sparsetrain sparse export ({e}); write it with export_sparse") from None
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has sparse export version {meta.get('version')}, this sparsetrain "
                              f"reads version {FORMAT_VERSION}")
    return SparseCheckpoint(tensors, meta["csr"])
