"""FLOPs accounting of the RigL paper: sparse inference FLOPs per layer and training FLOPs per method.

Reference: Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All Tickets Winners",
ICML 2020, Appendix H, which uses the MicroNet challenge counter (Gale et al., 2019).

Inference convention (:func:`count_flops`), per example (one forward pass on a batch of 1):

* Multiplies and adds are counted separately and summed. A dot product of length ``v`` costs
  ``v`` multiplies and ``v - 1`` adds. A layer of density ``d`` (fraction of non-zero weights)
  uses ``v = d * dense_length``; fractional ``v`` is kept (an expectation over the rows) and
  ``v - 1`` is clipped at 0 so an (almost) empty layer never has negative adds.
* Conv1d/2d/3d: ``v = prod(kernel) * (c_in / groups) * d``; one dot product per output element
  (``c_out * prod(output spatial)``), read from the real output, so padding and stride are exact.
  Depth-wise (``groups == c_in``) gives ``v = prod(kernel) * d``. A bias adds 1 per output element.
* Linear: ``v = in_features * d``, one dot product per output feature per position (all leading
  dims of the input), plus 1 add per output element for a bias.
* LSTM/GRU/RNN, per position (time step x batch row) and per layer and direction: each weight
  matrix ``weight_ih_l{k}``, ``weight_hh_l{k}`` (and LSTM ``weight_hr_l{k}``) is a mat-vec with its
  own density; each bias vector adds 1 per gate row. Elementwise rule (our choice; the paper
  counts no RNN): 1 FLOP per elementwise add, multiply or nonlinearity evaluation (sigmoid, tanh,
  ReLU count 1, as ReLU does). Per hidden unit that is, besides the matrix terms,
  LSTM 13 (4 input+hidden gate sums, 3 sigmoids, 1 tanh, f*c + i*g = 3, tanh(c), o*tanh(c)),
  GRU 11 (3 gate sums, 2 sigmoids, r*(W_hn h), tanh, (1-z)*n + z*h = 4), RNN 2 (sum, nonlinearity).
* ReLU/ReLU6: 1 per output element (the MicroNet counter's rule).
* Free or excluded (documented, as in the paper): Embedding (a table lookup, 0 FLOPs; listed),
  BatchNorm/LayerNorm/GroupNorm (foldable into the previous layer at inference), Dropout, pooling,
  softmax, flatten/identity, and operations that are not modules (residual adds, functional
  activations such as ``F.relu``). A parameterised module of another type is not counted and a
  warning is logged.

The paper's own counter differs slightly: it charges every conv/FC a bias add and a ReLU whether
or not the model has them; we count what the model really computes. For the dense WRN-22-2 both
give 3.15e8 at 32x32 and for ResNet-50 at 224x224 both round to 8.2e9 (see ``tests/test_flops.py``).

Training convention (Appendix H): backward = 2 x forward, so one step costs 3 forward passes;
see :func:`training_flops_static` and friends, and :class:`FlopsTracker` for what a run spends.
"""
from __future__ import annotations

import logging
import math
import numbers
import re
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
#: Module types that are deliberately free (see the module docstring); no warning for their parameters.
_EXCLUDED = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Flatten, nn.Unflatten, nn.Softmax,
    nn.LogSoftmax, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
#: Gate rows per hidden unit and the elementwise FLOPs per hidden unit beyond the gate sums.
_RNN_GATES = {"LSTM": (4, 9), "GRU": (3, 8), "RNN_TANH": (1, 1), "RNN_RELU": (1, 1)}
_RNN_WEIGHT = re.compile(r"^weight_(ih|hh|hr)_l(\d+)(_reverse)?$")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerFlops:
    """FLOPs of one counted layer (or one RNN weight matrix), summed over its calls in the pass.

    ``density`` and ``weight_shape`` are None for rows without a weight (ReLU, RNN elementwise).
    """

    name: str
    kind: str
    weight_shape: Optional[Tuple[int, ...]]
    density: Optional[float]
    dense: int
    sparse: float
    calls: int = 1
    pattern: Optional[str] = None


@dataclass(frozen=True)
class FlopsReport:
    """Per-layer inference FLOPs of one example and their totals (see the module docstring)."""

    input_shape: Tuple[int, ...]
    rows: Tuple[LayerFlops, ...]

    @property
    def dense(self) -> int:
        """Forward FLOPs per example with every weight dense (f_D)."""
        return sum(r.dense for r in self.rows)

    @property
    def sparse(self) -> float:
        """Forward FLOPs per example at the given densities (f_S)."""
        return float(sum(r.sparse for r in self.rows))

    @property
    def ratio(self) -> float:
        """f_S / f_D (1.0 for an empty model)."""
        return self.sparse / self.dense if self.dense else 1.0

    def to_dict(self) -> dict:
        """JSON-ready dict: input shape, totals and rows (shapes as lists)."""
        rows = [dict(asdict(r), weight_shape=None if r.weight_shape is None else list(r.weight_shape))
                for r in self.rows]
        return {"input_shape": list(self.input_shape), "dense": self.dense, "sparse": self.sparse,
                "ratio": self.ratio, "layers": rows}

    def table(self) -> str:
        """A plain-text table, one line per row plus a total line."""
        head = ("layer", "type", "weight shape", "density", "dense FLOPs", "sparse FLOPs")
        lines = [head] + [_table_cells(r) for r in self.rows]
        lines.append(("total", "", "", f"{self.ratio:.4f}", f"{self.dense:.4e}", f"{self.sparse:.4e}"))
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
               for line in lines]
        out.insert(1, "-" * len(out[0]))
        return "\n".join(out)


def _table_cells(r: LayerFlops) -> Tuple[str, ...]:
    shape = "-" if r.weight_shape is None else "x".join(map(str, r.weight_shape))
    density = "-" if r.density is None else f"{r.density:.4f}"
    if r.pattern not in (None, "unstructured"):
        density += f" ({r.pattern})"
    return (r.name, r.kind, shape, density, f"{r.dense:.4e}", f"{r.sparse:.4e}")


# --------------------------------------------------------------------------------------------
# Per-layer counting rules: each returns [(row suffix, weight shape, density, dense, sparse)]
# --------------------------------------------------------------------------------------------
Row = Tuple[str, Optional[Tuple[int, ...]], Optional[float], int, float]


def dot_flops(length: float, n_outputs: int, bias: bool) -> float:
    """``n_outputs`` dot products of length ``length``: v mults + max(v-1, 0) adds (+1 add if bias)."""
    return n_outputs * (length + max(length - 1.0, 0.0) + (1.0 if bias else 0.0))


def weighted_row(suffix: str, shape: Sequence[int], density: float, fan_in: int, n_out: int, bias: bool) -> Row:
    """The row of ``n_out`` dot products of a weight of ``shape`` (fan-in ``fan_in``) at ``density``."""
    dense = int(round(dot_flops(fan_in, n_out, bias)))
    return (suffix, tuple(shape), density, dense, dot_flops(fan_in * density, n_out, bias))


def _count_conv(m: nn.Module, inputs, output: Tensor, density: Callable[[Tensor], float]) -> List[Row]:
    # One dot product per output element over a (c_in / groups) x kernel window.
    fan_in = (m.in_channels // m.groups) * math.prod(m.kernel_size)
    return [weighted_row("", m.weight.shape, density(m.weight), fan_in, output.numel(), m.bias is not None)]


def _count_linear(m: nn.Module, inputs, output: Tensor, density: Callable[[Tensor], float]) -> List[Row]:
    # Every leading position of the input gets its own mat-vec.
    n_out = output.numel()
    return [weighted_row("", m.weight.shape, density(m.weight), m.in_features, n_out, m.bias is not None)]


def _count_relu(m: nn.Module, inputs, output: Tensor, density) -> List[Row]:
    n = output.numel()
    return [("", None, None, n, float(n))]


def _count_embedding(m: nn.Module, inputs, output, density: Callable[[Tensor], float]) -> List[Row]:
    return [("", tuple(m.weight.shape), density(m.weight), 0, 0.0)]


def rnn_positions(x) -> int:
    """Time steps x batch rows fed to an RNN (batched, unbatched or packed input)."""
    if isinstance(x, PackedSequence):
        return int(x.data.shape[0])
    return int(x.shape[0] * x.shape[1]) if x.dim() == 3 else int(x.shape[0])


def _count_rnn(m: nn.RNNBase, inputs, output, density: Callable[[Tensor], float]) -> List[Row]:
    positions = rnn_positions(inputs[0])
    params = dict(m.named_parameters(recurse=False))
    rows: List[Row] = []
    for pname, weight in params.items():
        match = _RNN_WEIGHT.match(pname)
        if match:
            kind, layer, rev = match.groups()
            has_bias = kind != "hr" and f"bias_{kind}_l{layer}{rev or ''}" in params
            n_out = positions * weight.shape[0]
            rows.append(weighted_row("." + pname, weight.shape, density(weight), weight.shape[1], n_out, has_bias))
    rows.append(rnn_elementwise_row(m, positions, 2 if m.bidirectional else 1))
    return rows


def rnn_elementwise_row(m: nn.Module, positions: int, directions: int) -> Row:
    """The elementwise gate arithmetic of a recurrent module (``m.mode``: LSTM, GRU, RNN_*)."""
    gates, extra = _RNN_GATES[m.mode]
    per_unit = gates + extra  # the gate sums W_ih x + W_hh h, then the elementwise rule
    n = positions * m.hidden_size * m.num_layers * directions * per_unit
    return (" (elementwise)", None, None, n, float(n))


#: (module types, counting rule) pairs; the last registered match wins (see :func:`register_counter`)
_COUNTERS: List[Tuple[Tuple[type, ...], Callable]] = []


def register_counter(module_types, fn: Callable) -> Callable:
    """Count modules of ``module_types`` (a type or tuple of types) with ``fn(module, inputs, output,
    density) -> [Row]``, where ``density(tensor)`` is the density given for a parameter. A layer type
    defined elsewhere registers its own rule when its module is imported (a compressed layer reads
    its density from itself). Lookup is by ``isinstance``, the most recently registered match first,
    so a subclass registered after its base overrides it. Returns ``fn``."""
    types = module_types if isinstance(module_types, tuple) else (module_types,)
    _COUNTERS.append((types, fn))
    return fn


register_counter(_CONVS, _count_conv)
register_counter(nn.Linear, _count_linear)
register_counter(nn.RNNBase, _count_rnn)
register_counter(nn.Embedding, _count_embedding)
register_counter(_ACTIVATIONS, _count_relu)


def _counter_for(module: nn.Module):
    return next((fn for types, fn in reversed(_COUNTERS) if isinstance(module, types)), None)


# --------------------------------------------------------------------------------------------
# The counting pass
# --------------------------------------------------------------------------------------------
def _check_densities(model: nn.Module, densities: Optional[Mapping[str, float]]) -> Dict[int, float]:
    """Map id(parameter) -> density; unknown names or values outside [0, 1] raise ConfigError.

    Every alias of a tied parameter is accepted as its name.
    """
    named = dict(model.named_parameters(remove_duplicate=False))
    out: Dict[int, float] = {}
    for name, d in (densities or {}).items():
        if name not in named:
            hint = ", ".join(list(named)[:8])
            raise ConfigError(f"density given for unknown parameter '{name}'; use names from "
                              f"model.named_parameters(), e.g. {hint}")
        out[id(named[name])] = _density_value(name, d)
    return out


def _density_value(name: str, d) -> float:
    try:
        value = float(d)  # accepts Python/NumPy numbers and 0-dim tensors
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"density of '{name}' must be a number in [0, 1], got {d!r}")
    return value


def _check_shape(input_shape: Sequence[int]) -> Tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input_shape must be a sequence of positive ints, got {input_shape!r}") from None
    if not shape or min(shape) < 1:
        raise ConfigError(f"input_shape must be a non-empty sequence of positive ints, got {input_shape!r}")
    return shape


def _device_and_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Where the model lives and its floating dtype (CPU / default dtype for a parameterless model)."""
    tensors = list(model.parameters()) + list(model.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    floats = [t.dtype for t in tensors if t.is_floating_point()]
    return device, (floats[0] if floats else torch.get_default_dtype())


def _warn_uncounted(model: nn.Module) -> None:
    for name, m in model.named_modules():
        has_params = any(True for _ in m.parameters(recurse=False))
        if has_params and _counter_for(m) is None and not isinstance(m, _EXCLUDED):
            log.warning("flops: module '%s' (%s) has parameters but no FLOPs rule; it is not counted",
                        name or "<model>", type(m).__name__)


def _make_hook(name: str, fn, density, acc: Dict[str, list]):
    """A forward hook adding this call's rows to ``acc`` (name -> [kind, shape, density, dense, sparse, calls])."""

    def hook(module, inputs, output):
        for suffix, shape, d, dense, sparse in fn(module, inputs, output, density):
            row = acc.setdefault(name + suffix, [type(module).__name__, shape, d, 0, 0.0, 0])
            row[3] += dense
            row[4] += sparse
            row[5] += 1

    return hook


def count_flops(model: nn.Module, input_shape: Sequence[int], densities: Optional[Mapping[str, float]] = None,
                *, input_dtype: Optional[torch.dtype] = None,
                patterns: Optional[Mapping[str, str]] = None) -> FlopsReport:
    """Inference FLOPs of one example: one real forward pass of a zero input of shape (1, *input_shape).

    Args:
        model: any ``nn.Module``; its forward may return a tensor or a tuple. It runs under
            ``torch.no_grad`` in eval mode on its own device; every module's train/eval mode is
            restored and all hooks are removed afterwards.
        input_shape: one example without the batch dim, e.g. (3, 32, 32), or (seq_len,) token ids.
        densities: parameter name (as in ``model.named_parameters()``, e.g. "fc1.weight") ->
            fraction of non-zero weights in [0, 1]; missing names are dense (1.0).
        input_dtype: dtype of the input; default the model's floating dtype. Pass ``torch.long``
            for token ids (task "lm").
        patterns: parameter name -> sparsity pattern (``"2:4"``, ``"block:4x4"``, ``"channel"``),
            noted on the layer's row. N:M and block layers count their non-zeros as any sparse
            layer; a ``channel`` / ``channel:in`` layer counts as the smaller dense layer it exports
            to (density·c_out full-length, or c_out dot products of density·fan-in: ``density · dense``).

    Returns:
        A :class:`FlopsReport`: rows per counted layer, totals ``dense`` (f_D) and ``sparse`` (f_S).
        The counting rules are in the module docstring (Evci et al. 2020, App. H).
    """
    shape = _check_shape(input_shape)
    by_id = _check_densities(model, densities)
    device, dtype = _device_and_dtype(model)

    def density(weight: Tensor) -> float:
        return by_id.get(id(weight), 1.0)

    _warn_uncounted(model)
    acc: Dict[str, list] = {}
    handles = [m.register_forward_hook(_make_hook(name or "<model>", fn, density, acc))
               for name, m in model.named_modules() if (fn := _counter_for(m)) is not None]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *shape), dtype=input_dtype or dtype, device=device))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    rows = tuple(_with_pattern(LayerFlops(n, *vals), patterns or {}) for n, vals in acc.items())
    log.debug("flops of %s at %s: dense %d, sparse %.4g over %d rows", type(model).__name__, shape,
              sum(r.dense for r in rows), sum(r.sparse for r in rows), len(rows))
    return FlopsReport(shape, rows)


#: the patterns (as written by ``sparsity.patterns``) of whole output or input channels
CHANNEL_PATTERNS = ("channel", "channel:out", "channel:in")


def _with_pattern(row: LayerFlops, patterns: Mapping[str, str]) -> LayerFlops:
    """The row with its weight's pattern noted; a channel-sparse layer as the smaller dense layer."""
    pattern = patterns.get(f"{row.name}.weight" if row.name != "<model>" else "weight")
    if pattern is None:
        return row
    channelwise = str(pattern) in CHANNEL_PATTERNS
    sparse = row.dense * row.density if channelwise and row.density is not None else row.sparse
    return replace(row, pattern=str(pattern), sparse=sparse)


# --------------------------------------------------------------------------------------------
# Training FLOPs per example (Evci et al. 2020, App. H): backward = 2 x forward
# --------------------------------------------------------------------------------------------
def _nonneg(**values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0):
            raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")


def training_flops_static(f_s: float) -> float:
    """Static / SET / SNIP / Small-Dense: forward + input-grad + weight-grad, all sparse = 3 f_S."""
    _nonneg(f_s=f_s)
    return 3.0 * f_s


def training_flops_dense(f_d: float) -> float:
    """Dense training: 3 f_D per example."""
    _nonneg(f_d=f_d)
    return 3.0 * f_d


def training_flops_rigl(f_s: float, f_d: float, delta_t: float) -> float:
    """RigL: (3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1): a dense weight gradient once every ΔT steps."""
    _nonneg(f_s=f_s, f_d=f_d)
    if not (isinstance(delta_t, numbers.Real) and delta_t >= 1):
        raise ConfigError(f"delta_t (steps between mask updates) must be >= 1, got {delta_t!r}")
    return (3.0 * f_s * delta_t + 2.0 * f_s + f_d) / (delta_t + 1.0)


def training_flops_snfs(f_s: float, f_d: float) -> float:
    """SNFS (Dettmers & Zettlemoyer 2019): a dense gradient every step, 2 f_S + f_D.

    When redistribution changes f_S over training, pass its average along the run.
    """
    _nonneg(f_s=f_s, f_d=f_d)
    return 2.0 * f_s + f_d


def training_flops_pruning(f_d: float, sparsities: Iterable[float]) -> float:
    """Gradual pruning: mean over training steps of 3 f_D (1 - s_t).

    ``sparsities`` holds one FLOPs sparsity s_t = 1 - f_S,t / f_D per training step (for uniform
    pruning of every counted layer this is the weight sparsity). When the per-step forward FLOPs
    are known, :func:`training_flops_from_forward` is exact for any distribution.
    """
    _nonneg(f_d=f_d)
    values = [float(s) for s in sparsities]
    if not values or not all(0.0 <= s <= 1.0 for s in values):
        raise ConfigError("sparsities must be a non-empty sequence of values in [0, 1], one per step")
    return 3.0 * f_d * (1.0 - math.fsum(values) / len(values))


def training_flops_from_forward(forward_flops: Iterable[float]) -> float:
    """Mean over steps of 3 f_S,t, from the sparse forward FLOPs of every step (pruning schedules)."""
    values = [float(f) for f in forward_flops]
    if not values or not all(math.isfinite(f) and f >= 0 for f in values):
        raise ConfigError("forward_flops must be a non-empty sequence of finite numbers >= 0, one per step")
    return 3.0 * math.fsum(values) / len(values)


def extended(train_flops: float, multiplier: float) -> float:
    """Training M times longer (the paper's RigL_{M×}) costs M times the FLOPs."""
    _nonneg(train_flops=train_flops, multiplier=multiplier)
    return train_flops * multiplier


def relative_to_dense(train_flops: float, f_d: float) -> float:
    """Training FLOPs as a multiple of dense training, ``train_flops / (3 f_D)`` (the paper's tables)."""
    _nonneg(train_flops=train_flops)
    if not (isinstance(f_d, numbers.Real) and f_d > 0):
        raise ConfigError(f"f_d (dense forward FLOPs) must be > 0, got {f_d!r}")
    return train_flops / (3.0 * f_d)


class FlopsTracker:
    """Training FLOPs really spent by a run (Evci et al. 2020, App. H convention).

    Every step costs, per example: a sparse forward (f_S), the input-gradient backward (f_S,
    sparse because masked weights are zero) and the weight-gradient backward, f_S when only
    active weights need a gradient, f_D when the dense gradient is computed (RigL's update steps,
    SNFS every step). Hence 3 f_S per example on a normal step and 2 f_S + f_D on a dense-gradient
    step; averaged over a run with one dense step every ΔT this reproduces
    :func:`training_flops_rigl`. f_S and f_D are forward FLOPs per example (see :func:`count_flops`)
    and may change between steps (pruning, redistribution). Plain Python; no torch state.
    """

    def __init__(self) -> None:
        self._total = 0.0
        self._examples = 0
        self._steps = 0
        self._dense_grad_steps = 0

    def add_step(self, forward_flops_sparse: float, forward_flops_dense: float,
                 dense_grad: bool, n_examples: int) -> float:
        """Record one step over ``n_examples`` examples; returns the FLOPs it cost."""
        _nonneg(forward_flops_sparse=forward_flops_sparse, forward_flops_dense=forward_flops_dense)
        if isinstance(n_examples, bool) or not isinstance(n_examples, numbers.Integral) or n_examples < 0:
            raise ConfigError(f"n_examples must be an int >= 0, got {n_examples!r}")
        weight_grad = forward_flops_dense if dense_grad else forward_flops_sparse
        cost = n_examples * (2.0 * forward_flops_sparse + weight_grad)
        self._total += cost
        self._examples += int(n_examples)
        self._steps += 1
        self._dense_grad_steps += int(bool(dense_grad))
        return cost

    @property
    def total(self) -> float:
        """Training FLOPs spent so far."""
        return self._total

    @property
    def per_example(self) -> float:
        """Average training FLOPs per example seen (0.0 before any example)."""
        return self._total / self._examples if self._examples else 0.0

    @property
    def steps(self) -> int:
        """Steps recorded so far."""
        return self._steps

    @property
    def dense_grad_steps(self) -> int:
        """Steps recorded with a dense weight gradient."""
        return self._dense_grad_steps

    @property
    def examples(self) -> int:
        """Examples seen so far."""
        return self._examples

    def state_dict(self) -> Dict[str, float]:
        """Plain numbers, for checkpoints."""
        return {"total": self._total, "examples": self._examples, "steps": self._steps,
                "dense_grad_steps": self._dense_grad_steps}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Restore from :meth:`state_dict`; a missing or malformed entry raises CheckpointError."""
        try:
            values = (float(state["total"]), int(state["examples"]), int(state["steps"]),
                      int(state["dense_grad_steps"]))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"bad FlopsTracker state ({err!r}); pass a dict from FlopsTracker.state_dict()") from None
        self._total, self._examples, self._steps, self._dense_grad_steps = values
