"""Conv storage: truly sparse CPU execution of nn.Conv2d layers (groups = 1).

* :class:`SparseConv2d` — CSR weights over the (out × in·kh·kw) matrix, values the trainable
  parameter; sparseprop's direct kernels or unfold + MKL CSR (:mod:`.functional`).
* :class:`ConvStorage` — moves convolutions in and out (registered as ``"conv"``); their stores
  are the CSR storage's :class:`CSRStore`.
"""
from .layer import SparseConv2d
from .store import ConvStorage, compress_conv, decompress_conv, sparse_convs

__all__ = ["ConvStorage", "SparseConv2d", "compress_conv", "decompress_conv", "sparse_convs"]
