"""Compatibility names for the truly sparse CPU backend, which lives in :mod:`sparsetrain.sparsity.storage`
(layer storages; CSR in ``storage/csr``) and :mod:`sparsetrain.sparsity.backend` (switching an
engine's storage). Library code imports from there; this module only re-exports the public names.
"""
from .sparsity.backend import SparseEngine, use_dense_backend, use_sparse_backend
from .sparsity.storage import BackendPolicy
from .sparsity.storage.csr import (SparseCheckpoint, SparseGRU, SparseLinear, SparseLSTM, densify_model,
                                   export_sparse, load_sparse, sparsify_model)

__all__ = ["BackendPolicy", "SparseCheckpoint", "SparseEngine", "SparseGRU", "SparseLinear", "SparseLSTM",
           "densify_model", "export_sparse", "load_sparse", "sparsify_model", "use_dense_backend", "use_sparse_backend"]
