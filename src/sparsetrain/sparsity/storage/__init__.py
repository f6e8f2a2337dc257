"""Layer storages of the engine: masked-dense (every layer starts there) and compressed ones.

:mod:`.base` holds the :class:`LayerStore` interface, the :data:`STORAGES` registry and the
:class:`BackendPolicy` choosing which layers a compressed storage takes; :mod:`.dense` the
masked-dense store; :mod:`.build` builds a model with its compressed layers created compressed;
:mod:`.csr` the truly sparse CPU storage of Linear and RNN layers, :mod:`.conv` that of
convolutions. A new storage is one more module
(or folder) here that registers itself.
"""
from . import conv, csr  # noqa: F401  (register the conv and CSR storages and their layers' FLOPs counters)
from .base import STORAGES, BackendPolicy, GrowScores, LayerStore, Storage
from .build import build_sparse
from .dense import MaskedDenseStore

__all__ = ["STORAGES", "BackendPolicy", "GrowScores", "LayerStore", "MaskedDenseStore", "Storage", "build_sparse"]
