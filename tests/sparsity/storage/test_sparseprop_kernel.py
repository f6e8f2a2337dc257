"""The optional sparseprop kernels of the sparse backend give the MKL path's results: forward,
input and weight gradients, RigL's captured factors, and whole training runs through the engine."""
import pytest
import torch
from torch import nn

from sparsetrain.errors import ConfigError
from sparsetrain.sparsity.backend import SparseEngine
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
    a.capture, b.capture = [], []
    x = torch.randn(batch, 96)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(batch, 80)
    ya, yb = a(xa), b(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.values.grad, a.values.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.bias.grad, a.bias.grad)
    (xa_c, ga), (xb_c, gb) = a.capture[0], b.capture[0]
    assert torch.equal(xa_c, xb_c) and torch.equal(ga, gb)
    # the weight gradient is exactly the dense gradient gᵀx at the pattern
    dense = (g.T @ x).reshape(-1)[b.flat_indices()]
    torch.testing.assert_close(b.values.grad, dense, rtol=1e-5, atol=1e-5)


@needs_sparseprop
def test_rigl_training_through_the_engine_matches_mkl():
    def run(kernel):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        eng = SparseEngine(model, opt, "rigl", sparsity=0.9, distribution="uniform", dense_first=False,
                           total_steps=30, delta_t=5, max_density=1.0, min_size=0, kernel=kernel)
        assert all(l.kernel == kernel for l in eng.layers.values()) and len(eng.layers) == 3
        data = torch.Generator().manual_seed(1)
        for _ in range(12):
            x, y = torch.randn(16, 64, generator=data), torch.randint(0, 10, (16,), generator=data)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if eng.after_backward():
                opt.step()
            eng.after_step()
        return eng
    a, b = run("mkl"), run("sparseprop")
    assert a.last_update is not None and a.last_update["grown"] > 0
    for name in a.layers:
        assert torch.equal(a.layers[name].flat_indices(), b.layers[name].flat_indices()), name
        torch.testing.assert_close(b.layers[name].values, a.layers[name].values, rtol=1e-4, atol=1e-5)


@needs_sparseprop
def test_other_dtypes_are_refused_with_a_clear_error():
    _, b = layer_pair()
    b.double()
    with pytest.raises(TypeError, match="float32"):
        b(torch.randn(4, 96, dtype=torch.float64))


def test_unknown_kernel_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown sparse kernel"):
        BackendPolicy(kernel="cusparse")
