"""The optional sparseprop kernels of the sparse backend give the MKL path's results: forward,
input and weight gradients, RigL's captured factors, and whole training runs through the engine."""
import pytest
import torch

from helpers import assert_same_training, compare_layers, rigl_on_kernel

from sparsetrain.errors import ConfigError
from sparsetrain.sparsity.storage import BackendPolicy
from sparsetrain.sparsity.storage.csr import SparseLinear
from sparsetrain.sparsity.storage.csr.functional import sparseprop_backend

needs_sparseprop = pytest.mark.skipif(sparseprop_backend() is None, reason="sparseprop is not installed")


def layer_pair(n_in=96, n_out=80, density=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = SparseLinear.random(n_in, n_out, density, generator=g)
    b = SparseLinear(n_in, n_out, a.flat_indices(), a.values.detach(), a.bias.detach())
    b.kernel = "sparseprop"
    return a, b


@needs_sparseprop
@pytest.mark.parametrize("batch", [1, 7, 32])
def test_forward_and_both_gradients_match_mkl(batch):
    a, b = layer_pair()
    x = torch.randn(batch, 96)
    _, g = compare_layers(a, b, x, 80)
    # the weight gradient is exactly the dense gradient gᵀx at the pattern
    dense = (g.T @ x).reshape(-1)[b.flat_indices()]
    torch.testing.assert_close(b.values.grad, dense, rtol=1e-5, atol=1e-5)


@needs_sparseprop
def test_rigl_training_through_the_engine_matches_mkl():
    assert_same_training(rigl_on_kernel("mkl"), rigl_on_kernel("sparseprop"))


@needs_sparseprop
def test_other_dtypes_are_refused_with_a_clear_error():
    _, b = layer_pair()
    b.double()
    with pytest.raises(TypeError, match="float32"):
        b(torch.randn(4, 96, dtype=torch.float64))


def test_unknown_kernel_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown sparse kernel"):
        BackendPolicy(kernel="cusparse")
