"""CSR storage: truly sparse CPU execution of Linear and LSTM/GRU layers.

* :class:`SparseLinear` — CSR weights (values are the trainable parameter); native C or MKL kernels.
* :class:`SparseLSTM` / :class:`SparseGRU` — nn.LSTM / nn.GRU with SparseLinear weight matrices.
* :class:`CSRStore` — one such layer as the engine's layer store; :class:`CSRStorage` moves layers
  in and out of it (registered as ``"csr"``).
* :func:`sparsify_model` / :func:`densify_model` — convert layers (and optimizer state) both ways.
* :func:`export_sparse` / :func:`load_sparse` — CSR + masks in a safetensors file.

See docs/performance.md for speed and memory measurements.
"""
from .convert import densify_model, sparsify_model
from .export import SparseCheckpoint, export_sparse, load_sparse
from .linear import SparseLinear
from .rnn import SparseGRU, SparseLSTM
from .store import CSRStorage, CSRStore

__all__ = ["CSRStorage", "CSRStore", "SparseCheckpoint", "SparseGRU", "SparseLinear", "SparseLSTM", "densify_model",
           "export_sparse", "load_sparse", "sparsify_model"]
