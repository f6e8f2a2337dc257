"""Truly sparse CPU execution: compressed Linear layers, a sparse engine backend, sparse export.

* :class:`SparseLinear` — CSR weights (values are the trainable parameter), MKL kernels.
* :class:`SparseLSTM` / :class:`SparseGRU` — nn.LSTM / nn.GRU with SparseLinear weight matrices.
* :class:`SparseEngine` / :func:`use_sparse_backend` (and back: :func:`use_dense_backend`) — the
  SparsityEngine with eligible layers compressed; Static, SET, RigL, SNFS (and redistribution)
  and GMP run on it unchanged, GMP's layers being compressed once they are sparse enough.
* :func:`sparsify_model` / :func:`densify_model` — convert layers (and optimizer state) both ways.
* :func:`export_sparse` / :func:`load_sparse` — CSR + masks in a safetensors file.

See docs/performance.md for speed and memory measurements.
"""
from .convert import BackendPolicy, densify_model, sparsify_model
from .engine import SparseEngine, use_dense_backend, use_sparse_backend
from .export import SparseCheckpoint, export_sparse, load_sparse
from .linear import SparseLinear
from .rnn import SparseGRU, SparseLSTM

__all__ = ["BackendPolicy", "SparseCheckpoint", "SparseEngine", "SparseGRU", "SparseLinear", "SparseLSTM",
           "densify_model", "export_sparse", "load_sparse", "sparsify_model", "use_dense_backend", "use_sparse_backend"]
