"""Exports of structured sparse weights to formats that run fast.

* :func:`channel_prune`: a channel-sparse network as a physically smaller dense ``nn.Module``
  (fewer output channels, the following BatchNorm and the next layer's inputs cut to match;
  an output channel is removed when its own mask row is empty (``channel``) or when the next
  layer reads it through no active weight (that layer's ``channel:in``)):
  a speed-up on any hardware. Works for chains of Linear/Conv2d layers joined by per-channel
  or per-position modules (ReLU, BatchNorm, max-pooling, flatten, dropout), e.g. the zoo's MLPs
  and LeNet-5; checked against the masked model on an example input.
* :func:`to_bsr`: a block-sparse weight as a BSR tensor (``Tensor.to_sparse_bsr``).
* :func:`pack_2_4` / :func:`to_semi_structured`: a 2:4 weight packed as torch's semi-structured
  sparse tensor needs it (``torch.sparse.to_sparse_semi_structured``, CUDA compute capability
  ≥ 8.0: kept values plus a 2-bit position per value). :func:`pack_2_4` is the same packing in
  plain tensors, so the validity and dense-equivalence of what would be packed are checked on
  any device.

A removed channel is one whose mask row is empty: its output is the constant its bias gives (after
the activation etc.), which the export folds into the next layer's bias. That is exact when the
next layer is a Linear, a conv without zero padding, or the constant is zero; otherwise the export
refuses (one line saying why).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from .masks import unwrap

#: modules allowed between two exported layers: they act per channel or per position
PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.MaxPool1d, nn.MaxPool2d,
                nn.Flatten, nn.Dropout, nn.Identity, nn.BatchNorm1d, nn.BatchNorm2d)
LAYERS = (nn.Linear, nn.Conv2d)


@dataclass
class _Layer:
    name: str
    module: nn.Module
    inp: torch.Tensor = None  # type: ignore[assignment]
    out_shape: Tuple[int, ...] = ()


def _parent(model: nn.Module, name: str) -> Tuple[nn.Module, str]:
    *path, last = name.split(".")
    parent = model
    for p in path:
        parent = getattr(parent, p)
    return parent, last


def _trace(model: nn.Module, example: torch.Tensor) -> List[_Layer]:
    """The Linear/Conv2d layers in call order with their inputs on ``example``; every layer must be
    called once and in module order (a chain), or the export refuses."""
    layers = [_Layer(n, m) for n, m in model.named_modules() if isinstance(m, LAYERS)]
    calls: List[str] = []
    by_module = {id(lay.module): lay for lay in layers}

    def hook(module, inputs, output):
        lay = by_module[id(module)]
        calls.append(lay.name)
        lay.inp, lay.out_shape = inputs[0].detach(), tuple(output.shape)

    handles = [lay.module.register_forward_hook(hook) for lay in layers]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    if calls != [lay.name for lay in layers]:
        raise ConfigError("channel export needs a chain of Linear/Conv2d layers each called once in module order "
                          f"(got calls {calls}); export a sequential model")
    for name, m in model.named_modules():
        if m is not model and not list(m.children()) and not isinstance(m, LAYERS + PASS_THROUGH):
            raise ConfigError(f"channel export cannot pass module '{name}' ({type(m).__name__}); it supports "
                              "ReLU, BatchNorm, max-pooling, flatten and dropout between Linear/Conv2d layers")
    return layers


def _alive(mask: torch.Tensor) -> torch.Tensor:
    """Output channels with at least one active weight."""
    return mask.reshape(mask.shape[0], -1).any(dim=1)


def _used(nxt: nn.Module, mask: torch.Tensor, channels: int) -> torch.Tensor:
    """Which of the ``channels`` outputs of the layer before ``nxt`` feed an active weight of
    ``nxt`` (``mask``: its weight mask); a Linear after a flatten reads ``per`` features per
    channel (channel-major)."""
    if isinstance(nxt, nn.Linear):
        if nxt.in_features % channels:
            return torch.ones(channels, dtype=torch.bool)  # not a chain; _fold_dead_inputs says why
        return mask.reshape(mask.shape[0], channels, -1).any(dim=2).any(dim=0)
    return mask.any(dim=(0, 2, 3)) if mask.shape[1] == channels else torch.ones(channels, dtype=torch.bool)


def _fold_dead_inputs(nxt: _Layer, prev_channels: int, dead: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(input index of the alive features of ``nxt``, bias correction from the dead ones): the dead
    channels' inputs to ``nxt`` are constants (their value on the traced example), folded into the
    bias."""
    m, x = nxt.module, nxt.inp[:1]
    if isinstance(m, nn.Linear):
        if m.in_features % prev_channels:
            raise ConfigError(f"channel export: '{nxt.name}' has {m.in_features} inputs, not a multiple of the "
                              f"{prev_channels} channels before it; is the model a chain?")
        per = m.in_features // prev_channels  # flatten is channel-major: features c·per ... (c+1)·per − 1
        feat_dead = dead.repeat_interleave(per)
        read = feat_dead & (m.weight.detach() != 0).any(dim=0)  # removed and read by a non-zero weight
        const = x[0, read]
        if not torch.allclose(nxt.inp[:, read], const.expand_as(nxt.inp[:, read])):
            raise ConfigError(f"channel export: the removed inputs of '{nxt.name}' are not constant; is the model a chain?")
        return torch.nonzero(~feat_dead).squeeze(1), m.weight.detach()[:, read] @ const
    if m.in_channels != prev_channels:
        raise ConfigError(f"channel export: '{nxt.name}' takes {m.in_channels} channels, the layer before it "
                          f"gives {prev_channels}; is the model a chain?")
    removed = dead
    dead = dead & (m.weight.detach() != 0).any(dim=(0, 2, 3))  # removed and read by a non-zero weight
    vals = x[0, dead]  # (n_dead, H, W): constant per channel
    const = vals.reshape(vals.shape[0], -1)[:, :1] if vals.numel() else vals.reshape(0, 1)
    if vals.numel() and not torch.allclose(vals.reshape(vals.shape[0], -1), const.expand(-1, vals[0].numel())):
        raise ConfigError(f"channel export: the removed input channels of '{nxt.name}' are not constant")
    padded = m.padding == "same" if isinstance(m.padding, str) else any(int(p) > 0 for p in m.padding)
    if padded and vals.numel() and bool((const != 0).any()):
        raise ConfigError(f"channel export: removed channels feed a non-zero constant into the zero-padded conv "
                          f"'{nxt.name}', which no bias can represent at the borders; mask their biases too")
    correction = m.weight.detach()[:, dead].sum(dim=(2, 3)) @ const.squeeze(1)
    return torch.nonzero(~removed).squeeze(1), correction


def _smaller(m: nn.Module, rows: torch.Tensor, cols: torch.Tensor, extra_bias: torch.Tensor) -> nn.Module:
    """A copy of Linear/Conv2d ``m`` keeping output ``rows`` and input ``cols``, bias += extra."""
    w = m.weight.detach()[rows][:, cols]
    if isinstance(m, nn.Linear):
        new = nn.Linear(w.shape[1], w.shape[0], bias=True, device=w.device, dtype=w.dtype)
    else:
        if m.groups != 1:
            raise ConfigError(f"channel export supports convolutions with groups=1, not groups={m.groups}")
        new = nn.Conv2d(w.shape[1], w.shape[0], m.kernel_size, m.stride, m.padding, m.dilation, bias=True,
                        padding_mode=m.padding_mode, device=w.device, dtype=w.dtype)
    bias = (m.bias.detach()[rows] if m.bias is not None else torch.zeros_like(w[:, 0].reshape(-1))) + extra_bias[rows]
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(bias)
    return new


def _slice_norms(model: nn.Module, after: str, before: Optional[str], alive: torch.Tensor) -> None:
    """Cut the BatchNorm layers between layer ``after`` and ``before`` (module order) to ``alive``."""
    names = [n for n, _ in model.named_modules()]
    lo, hi = names.index(after), names.index(before) if before else len(names)
    for name in names[lo + 1:hi]:
        m = model.get_submodule(name)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            new = copy.deepcopy(m)
            new.num_features = int(alive.sum())
            for attr in ("weight", "bias"):
                if getattr(m, attr) is not None:
                    setattr(new, attr, nn.Parameter(getattr(m, attr).detach()[alive].clone()))
            for attr in ("running_mean", "running_var"):
                if getattr(m, attr) is not None:
                    setattr(new, attr, getattr(m, attr)[alive].clone())
            parent, last = _parent(model, name)
            setattr(parent, last, new)


@torch.no_grad()
def channel_prune(model: nn.Module, masks: Mapping[str, torch.Tensor], example: torch.Tensor,
                  atol: float = 1e-5) -> nn.Module:
    """A physically smaller copy of ``model`` (in eval mode) without the output channels whose mask
    rows are empty or that no active weight of the next layer reads. ``masks``: {weight name: bool mask} (``engine.masks``); ``example``: an input
    batch on which the copy is traced and checked (outputs equal to the masked model within
    ``atol``, else a ConfigError). The last layer keeps all its outputs; a layer's removed outputs
    are cut from the next layer's inputs and their constant contribution is folded into its bias."""
    src = unwrap(model)
    was_training = src.training
    src.eval()
    try:
        ref = src(example)
        out = copy.deepcopy(src)
        for name, p in out.named_parameters():  # masked weights are zero in the copy, whatever its state
            if name in masks:
                p.mul_(masks[name].to(p.device, p.dtype))
        layers = _trace(out, example)
        cols = torch.arange(layers[0].module.weight.shape[1]) if layers else None
        extra = None
        for i, lay in enumerate(layers):
            w = lay.module.weight
            n_out = w.shape[0]
            last = i == len(layers) - 1
            mask = masks.get(f"{lay.name}.weight")
            alive = torch.ones(n_out, dtype=torch.bool) if last or mask is None else _alive(mask).cpu()
            nxt_mask = None if last else masks.get(f"{layers[i + 1].name}.weight")
            if nxt_mask is not None:  # outputs no active weight of the next layer reads (channel:in)
                alive &= _used(layers[i + 1].module, nxt_mask.cpu(), n_out)
            if not bool(alive.any()):
                alive[0] = True  # an all-empty layer keeps one (zero) channel so shapes stay valid
            rows = torch.nonzero(alive).squeeze(1)
            bias_extra = torch.zeros(n_out, dtype=w.dtype, device=w.device) if extra is None else extra
            new = _smaller(lay.module, rows.to(w.device), cols.to(w.device), bias_extra)
            if not last:
                nxt_cols, extra_next = _fold_dead_inputs(layers[i + 1], n_out, ~alive.to(w.device))
                _slice_norms(out, lay.name, layers[i + 1].name, alive.to(w.device))
                cols, extra = nxt_cols.cpu(), extra_next
            parent, attr = _parent(out, lay.name)
            setattr(parent, attr, new)
        got = out(example)
        if not torch.allclose(got, ref, atol=atol, rtol=1e-4):
            raise ConfigError(f"channel export differs from the masked model by {float((got - ref).abs().max()):.3g}; "
                              "the model is not a plain chain of layers")
        return out.eval()
    finally:
        src.train(was_training)


def channel_counts(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    """{layer name: weight shape} of the Linear/Conv2d layers of ``model`` (the exported sizes)."""
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, LAYERS)}


# --- block sparse (BSR) ---------------------------------------------------------------------------
def to_bsr(weight: torch.Tensor, blocksize: Tuple[int, int], mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The weight (masked by ``mask`` if given) as a 2-D BSR tensor of ``blocksize`` (a conv's
    weight is viewed as c_out × the rest); all-zero blocks are not stored."""
    w = weight.detach() if mask is None else weight.detach() * mask
    mat = w.reshape(w.shape[0], -1)
    r, c = blocksize
    if mat.shape[0] % r or mat.shape[1] % c:
        raise ConfigError(f"BSR export: a {tuple(mat.shape)} matrix does not split into {r}x{c} blocks")
    return mat.to_sparse_bsr((r, c))


# --- 2:4 semi-structured --------------------------------------------------------------------------
def check_2_4(weight: torch.Tensor) -> None:
    """ConfigError unless every group of 4 consecutive entries of each row has at most 2 non-zeros."""
    mat = weight.detach().reshape(weight.shape[0], -1)
    if mat.shape[1] % 4:
        raise ConfigError(f"2:4 packing needs rows of a multiple of 4 entries, got {mat.shape[1]}")
    per = (mat.reshape(-1, 4) != 0).sum(1)
    if bool((per > 2).any()):
        raise ConfigError(f"{int((per > 2).sum())} groups of 4 have more than 2 non-zeros; train with "
                          "sparsity.pattern=2:4 before packing")


def pack_2_4(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(values, positions) of a 2:4 weight matrix: per group of 4, the 2 kept entries (the
    non-zeros, padded with zeros at the lowest free positions) in increasing position, and each
    one's position 0..3 in the group (the 2-bit metadata of the semi-structured format)."""
    check_2_4(weight)
    g = weight.detach().reshape(-1, 4)
    nz = (g != 0).to(torch.int8)
    # non-zeros first, then the lowest zero positions; within each, increasing position
    keys = (1 - nz) * 4 + torch.arange(4, device=g.device)
    pos = torch.sort(torch.sort(keys, dim=1).indices[:, :2], dim=1).values
    rows = weight.shape[0]
    return g.gather(1, pos).reshape(rows, -1), pos.to(torch.int8).reshape(rows, -1)


def unpack_2_4(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The dense matrix :func:`pack_2_4` packed."""
    rows = values.shape[0]
    v, p = values.reshape(-1, 2), positions.reshape(-1, 2).long()
    out = torch.zeros(v.shape[0], 4, dtype=values.dtype, device=values.device)
    return out.scatter_(1, p, v).reshape(rows, -1)


def to_semi_structured(weight: torch.Tensor):
    """``torch.sparse.to_sparse_semi_structured`` of a 2:4 weight matrix (fp16/bf16 on a CUDA
    device of compute capability ≥ 8.0, as torch requires); ConfigError naming what is missing."""
    check_2_4(weight)
    if weight.device.type != "cuda":
        raise ConfigError("semi-structured 2:4 tensors need a CUDA device (compute capability >= 8.0); "
                          "check the packing on CPU with pack_2_4")
    if weight.dtype not in (torch.float16, torch.bfloat16):
        raise ConfigError(f"semi-structured 2:4 tensors hold float16 or bfloat16, not {weight.dtype}; convert first")
    return torch.sparse.to_sparse_semi_structured(weight.detach().reshape(weight.shape[0], -1))
