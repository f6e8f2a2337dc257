"""SparseLSTM / SparseGRU: nn.LSTM / nn.GRU whose weight matrices are CSR :class:`SparseLinear`.

Each weight matrix ``weight_ih_l{k}`` / ``weight_hh_l{k}`` is a bias-free SparseLinear submodule
of that name, so ``model.get_submodule("rnn.weight_hh_l0")`` is a compressed layer like any
other (values, pattern, capture, mask_view); the biases ``bias_ih_l{k}``, ``bias_hh_l{k}`` stay
dense Parameters with torch's names. Per layer and direction-free sequence of length T:

* the input projection of all T steps is one sparse product with T·B columns,
  Xp = X W_ihᵀ + b_ih (LSTM: + b_hh as well, since it is added to every gate anyway);
* then, step by step, the recurrent product h W_hhᵀ (one sparse product with B columns), through
  :class:`.functional.SequenceWeight`: W_hh and W_hhᵀ are built once per sequence and ∂L/∂W_hh is
  one sampled product over all T·B rows at the end of the backward pass (per-step sampled
  products made a 1500-wide LSTM layer step 1.2–2.2× slower at densities 0.01–0.1).

Gates follow torch (and its gate order in the stacked matrices):

* LSTM (i, f, g, o): c' = σ(f)·c + σ(i)·tanh(g),  h' = σ(o)·tanh(c');
* GRU (r, z, n): r, z = σ(x_r + h_r), σ(x_z + h_z);  n = tanh(x_n + b_in + r·(W_hn h + b_hn));
  h' = (1 − z)·n + z·h — the recurrent bias of n sits inside r·(...), so the GRU adds b_hh in
  the recurrent product rather than in Xp.

Each matrix appends its (x, ∂L/∂y) factors — all T steps in one pair — to the layer's ``capture``
list when the engine arms it, so the dense gradient formed from them is the sum over time steps,
as for nn.LSTM. Bidirectional RNNs and LSTM projections (``proj_size``) are not supported.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ....errors import ConfigError
from ....flops import register_counter, rnn_elementwise_row, rnn_positions, weighted_row
from ...topk import count_active
from .indices import flat_from_mask, random_flat
from .functional import SequenceWeight, sparse_linear
from .linear import SparseLinear

#: the dense modules with a sparse counterpart, and their number of gates
DENSE_RNNS = {nn.LSTM: 4, nn.GRU: 3}


def matrix_names(num_layers: int) -> List[str]:
    """``weight_ih_l0, weight_hh_l0, weight_ih_l1, ...`` (torch's parameter names)."""
    return [f"weight_{kind}_l{k}" for k in range(num_layers) for kind in ("ih", "hh")]


def unsupported_reason(rnn: nn.Module) -> Optional[str]:
    """Why ``rnn`` cannot be compressed, or None if it can."""
    if type(rnn) not in DENSE_RNNS:
        return f"{type(rnn).__name__} has no sparse counterpart (nn.LSTM and nn.GRU do)"
    if rnn.bidirectional:
        return "bidirectional RNNs are not supported by the sparse backend; it stays dense"
    if getattr(rnn, "proj_size", 0):
        return "LSTM projections (proj_size > 0) are not supported by the sparse backend; it stays dense"
    return None


class SparseRNNBase(nn.Module):
    """Shared by SparseLSTM and SparseGRU: storage, conversion, the layer loop."""

    dense_type: type = nn.Module
    gates: int = 1

    def __init__(self, input_size: int, hidden_size: int, matrices: Sequence[SparseLinear],
                 biases: Optional[Sequence[torch.Tensor]] = None, batch_first: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        if len(matrices) % 2 or not matrices:
            raise ConfigError(f"{type(self).__name__} needs (weight_ih, weight_hh) pairs, got {len(matrices)} matrices")
        if not 0.0 <= dropout <= 1.0:
            raise ConfigError(f"dropout must be in [0, 1], got {dropout}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.batch_first, self.dropout = len(matrices) // 2, bool(batch_first), float(dropout)
        self.bias = biases is not None
        for k, (name, layer) in enumerate(zip(matrix_names(self.num_layers), matrices)):
            rows, cols = self.gates * self.hidden_size, (self.input_size if k == 0 else self.hidden_size)
            if layer.shape != (rows, cols) or layer.bias is not None:
                raise ConfigError(f"{type(self).__name__}.{name} must be a bias-free {rows}x{cols} SparseLinear, "
                                  f"got {layer.shape} (bias={layer.bias is not None})")
            setattr(self, name, layer)
        for name, b in zip(self.bias_names(), biases or ()):
            setattr(self, name, b if isinstance(b, nn.Parameter) else nn.Parameter(b.detach().clone()))

    @property
    def mode(self) -> str:
        """``"LSTM"`` or ``"GRU"``, as torch's ``RNNBase.mode``."""
        return self.dense_type.__name__

    def bias_names(self) -> List[str]:
        return [n.replace("weight", "bias") for n in matrix_names(self.num_layers)] if self.bias else []

    def matrices(self) -> Dict[str, SparseLinear]:
        """{``weight_ih_l0``: layer, ...} in torch's parameter order."""
        return {n: getattr(self, n) for n in matrix_names(self.num_layers)}

    # --- conversion ---------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, rnn: nn.Module, masks: Optional[Mapping[str, torch.Tensor]] = None,
                   **options) -> "SparseRNNBase":
        """The masked weights of ``rnn`` (an ``nn.LSTM`` / ``nn.GRU`` matching this class);
        ``masks`` maps its weight names (``weight_ih_l0``...) to bool masks, default nonzeros.
        The bias Parameters are reused (same objects: their optimizer state stays valid)."""
        reason = unsupported_reason(rnn)
        if reason is None and type(rnn) is not cls.dense_type:
            reason = f"{cls.__name__} converts {cls.dense_type.__name__}, not {type(rnn).__name__}"
        if reason is not None:
            raise ConfigError(reason)
        masks = masks or {}
        matrices = []
        for name in matrix_names(rnn.num_layers):
            w = getattr(rnn, name).detach()
            mask = masks.get(name)
            flat = flat_from_mask(w != 0 if mask is None else mask.to(device=w.device, dtype=torch.bool))
            matrices.append(SparseLinear(w.shape[1], w.shape[0], flat, w.reshape(-1)[flat], None, **options))
        biases = [getattr(rnn, n.replace("weight", "bias")) for n in matrix_names(rnn.num_layers)] if rnn.bias else None
        new = cls(rnn.input_size, rnn.hidden_size, matrices, biases, rnn.batch_first, rnn.dropout)
        return new.train(rnn.training)

    @classmethod
    def random(cls, input_size: int, hidden_size: int, density: float, num_layers: int = 1, *,
               bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
               generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               **options) -> "SparseRNNBase":
        """Exact-count uniformly random connectivity in every weight matrix with torch's RNN
        initialisation (weights and biases ~ U(−1/√hidden, 1/√hidden)), never allocating a
        dense matrix; train it with ``SparsityEngine.from_sparse_model``."""
        generator = generator or torch.Generator().manual_seed(0)
        bound = hidden_size ** -0.5
        rows, matrices = cls.gates * hidden_size, []
        for k in range(2 * num_layers):
            cols = input_size if k == 0 else hidden_size
            n = count_active(rows * cols, density)
            flat = random_flat((rows, cols), n, generator)
            values = (torch.rand(n, generator=generator, dtype=dtype) * 2 - 1) * bound
            matrices.append(SparseLinear(cols, rows, flat, values, None, **options))
        biases = [(torch.rand(rows, generator=generator, dtype=dtype) * 2 - 1) * bound
                  for _ in range(2 * num_layers)] if bias else None
        return cls(input_size, hidden_size, matrices, biases, batch_first, dropout)

    def to_dense(self) -> nn.Module:
        """The equivalent ``nn.LSTM`` / ``nn.GRU`` (a copy of the weights; biases are shared)."""
        some = next(iter(self.matrices().values())).values
        out = self.dense_type(self.input_size, self.hidden_size, self.num_layers, bias=self.bias,
                              batch_first=self.batch_first, dropout=self.dropout,
                              device=some.device, dtype=some.dtype)
        with torch.no_grad():
            for name, layer in self.matrices().items():
                getattr(out, name).copy_(layer.dense_weight())
        for name in self.bias_names():
            setattr(out, name, getattr(self, name))
        return out.train(self.training)

    # --- forward ------------------------------------------------------------------------------
    def forward(self, input: torch.Tensor, hx=None):
        """As ``nn.LSTM`` / ``nn.GRU``: input (T, B, in), (B, T, in) if ``batch_first``, or
        unbatched (T, in); returns (output, h_n) for the GRU, (output, (h_n, c_n)) for the LSTM."""
        batched = input.dim() == 3
        if input.dim() not in (2, 3):
            raise ValueError(f"{type(self).__name__} expects a 2-D or 3-D input, got shape {tuple(input.shape)}")
        x = input.unsqueeze(1) if not batched else (input.transpose(0, 1) if self.batch_first else input)
        states = self._initial_states(hx, x, batched)
        finals = []
        for k in range(self.num_layers):
            if k > 0 and self.dropout > 0 and self.training:
                x = F.dropout(x, self.dropout, training=True)
            x, last = self._layer(k, x, tuple(s[k] for s in states))
            finals.append(last)
        out_states = tuple(torch.stack(s) for s in zip(*finals))
        if not batched:
            return x.squeeze(1), self._pack(tuple(s.squeeze(1) for s in out_states))
        return (x.transpose(0, 1) if self.batch_first else x), self._pack(out_states)

    def _initial_states(self, hx, x: torch.Tensor, batched: bool) -> Tuple[torch.Tensor, ...]:
        n_states = 2 if self.dense_type is nn.LSTM else 1
        shape = (self.num_layers, x.shape[1], self.hidden_size)
        if hx is None:
            return tuple(x.new_zeros(shape) for _ in range(n_states))
        states = tuple(hx) if n_states == 2 else (hx,)
        if len(states) != n_states:
            raise ValueError(f"{type(self).__name__} expects {n_states} initial state tensor(s), got {len(states)}")
        if not batched:
            states = tuple(s.unsqueeze(1) for s in states)
        for s in states:
            if tuple(s.shape) != shape:
                raise ValueError(f"{type(self).__name__}: expected initial state of shape {shape}, "
                                 f"got {tuple(s.shape)}")
        return states

    def _pack(self, states: Tuple[torch.Tensor, ...]):
        return states if self.dense_type is nn.LSTM else states[0]

    def _bias(self, kind: str, k: int) -> Optional[torch.Tensor]:
        return getattr(self, f"bias_{kind}_l{k}") if self.bias else None

    def _projections(self, k: int, x: torch.Tensor, in_bias: Optional[torch.Tensor]):
        """(Xp for all steps as (T, B, gates·H), a function h ↦ h W_hhᵀ [+ hh_bias])."""
        ih, hh = getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}")
        steps, batch = x.shape[:2]
        xp = sparse_linear(x.reshape(steps * batch, -1), ih.values, in_bias, ih.pattern(), ih.capture)
        return xp.view(steps, batch, -1), SequenceWeight(hh.values, hh.pattern(), hh.capture).step

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
                f"batch_first={self.batch_first}, dropout={self.dropout}")


class SparseLSTM(SparseRNNBase):
    """``nn.LSTM`` (unidirectional, no projection) with CSR weight matrices; see :mod:`.rnn`.

    Reference: Hochreiter & Schmidhuber 1997; torch's gate order (i, f, g, o). Build it with
    :meth:`from_dense` or :meth:`random`; :meth:`to_dense` goes back.
    """

    dense_type = nn.LSTM
    gates = 4

    def _layer(self, k: int, x: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]):
        # both biases are added to every gate pre-activation: fold them into the input projection
        bias = self._bias("ih", k) + self._bias("hh", k) if self.bias else None
        xp, recur = self._projections(k, x, bias)
        h, c = state
        outs = []
        for xp_t in xp.unbind(0):  # not xp[t]: each index's backward would zero-fill all of xp
            i, f, g, o = (xp_t + recur(h)).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs), (h, c)


class SparseGRU(SparseRNNBase):
    """``nn.GRU`` (unidirectional) with CSR weight matrices; see :mod:`.rnn`.

    Reference: Cho et al. 2014; torch's gate order (r, z, n) with the recurrent bias of n inside
    the reset gate's product. Build it with :meth:`from_dense` or :meth:`random`; :meth:`to_dense`
    goes back.
    """

    dense_type = nn.GRU
    gates = 3

    def _layer(self, k: int, x: torch.Tensor, state: Tuple[torch.Tensor]):
        xp, recur = self._projections(k, x, self._bias("ih", k))
        b_hh = self._bias("hh", k)
        (h,) = state
        outs = []
        for xp_t in xp.unbind(0):  # not xp[t]: each index's backward would zero-fill all of xp
            xr, xz, xn = xp_t.chunk(3, 1)
            hr, hz, hn = recur(h, b_hh).chunk(3, 1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            outs.append(h)
        return torch.stack(outs), (h,)


SPARSE_RNNS = {nn.LSTM: SparseLSTM, nn.GRU: SparseGRU}


def _count_flops(m: SparseRNNBase, inputs, output, density) -> list:
    """FLOPs rows of a SparseLSTM / SparseGRU (``sparsetrain.flops``): as nn.LSTM / nn.GRU's, each
    matrix's density being its own nnz share."""
    positions = rnn_positions(inputs[0])
    rows = [weighted_row(f".{name}", layer.shape, layer.density, layer.in_features, positions * layer.out_features,
                         m.bias) for name, layer in m.matrices().items()]
    return rows + [rnn_elementwise_row(m, positions, 1)]


register_counter(SparseRNNBase, _count_flops)
