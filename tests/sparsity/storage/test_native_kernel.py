"""The native C kernels of the sparse backend (kernel="native", the default "auto" where built):
the two products against dense references (both the AVX2 and the portable build, any thread
count, ragged rows, widths that are not multiples of the vector chunk), a layer's forward and
gradients against the MKL path, and training through the engine against MKL."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from helpers import assert_same_training, compare_layers, rigl_on_kernel

from sparsetrain.errors import ConfigError
from sparsetrain.sparsity.storage import BackendPolicy
from sparsetrain.sparsity.storage.csr import SparseLinear, native
from sparsetrain.sparsity.storage.csr.functional import resolve_kernel

needs_native = pytest.mark.skipif(not native.available(), reason="the native kernels were not built")


def random_csr(m, k, density, seed, empty_rows=()):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g) * (torch.rand(m, k, generator=g) < density)
    for r in empty_rows:
        w[r % m] = 0
    c = w.to_sparse_csr()
    return w, c.crow_indices().to(torch.int32), c.col_indices().to(torch.int32), c.values().contiguous()


@pytest.fixture(params=[True, False], ids=["avx2", "portable"])
def build(request):
    """Run a test with the AVX2 build (where the CPU has it) and with the portable one."""
    used = native.module().set_avx2(request.param)
    if request.param and not used:
        pytest.skip("this CPU has no AVX2 + FMA")
    yield
    native.module().set_avx2(True)


@needs_native
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 70), k=st.integers(1, 70), n=st.integers(1, 150), density=st.floats(0.0, 1.0),
       threads=st.integers(1, 4), bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_spmm_and_sddmm_match_dense_products(m, k, n, density, threads, bias, seed):
    for avx2 in (True, False):
        native.module().set_avx2(avx2)
        w, crow, col, vals = random_csr(m, k, density, seed, empty_rows=(seed, seed + 3))
        x = torch.randn(k, n)
        b = torch.randn(m) if bias else None
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            y = native.spmm(crow, col, vals, x, b)
            yt = native.spmm(crow, col, vals, x, b, transposed=True)
            g = torch.randn(m, n)
            v = native.sddmm(crow, col, g, x)
        finally:
            torch.set_num_threads(old)
        ref = w @ x + (b.unsqueeze(1) if bias else 0)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(yt, ref.T, rtol=1e-4, atol=1e-4)
        full = g @ x.T  # (m × k): the sampled product at the pattern, in CSR (row-major) order
        torch.testing.assert_close(v, full[w != 0], rtol=1e-4, atol=1e-4)
    native.module().set_avx2(True)


@needs_native
def test_hand_computed_case(build):
    # W = [[1, 0, 2], [0, 0, 0], [0, 3, 0]]: a middle row without nonzeros
    crow = torch.tensor([0, 2, 2, 3], dtype=torch.int32)
    col = torch.tensor([0, 2, 1], dtype=torch.int32)
    vals = torch.tensor([1.0, 2.0, 3.0])
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    y = native.spmm(crow, col, vals, x, torch.tensor([0.5, -1.0, 0.0]))
    assert torch.equal(y, torch.tensor([[11.5, 14.5], [-1.0, -1.0], [9.0, 12.0]]))
    assert torch.equal(native.spmm(crow, col, vals, x, torch.tensor([0.5, -1.0, 0.0]), transposed=True), y.T)
    g = torch.tensor([[1.0, 1.0], [7.0, 7.0], [0.0, 2.0]])
    # nonzeros (0,0), (0,2), (2,1): g0·x0 = 3, g0·x2 = 11, g2·x1 = 8
    assert torch.equal(native.sddmm(crow, col, g, x), torch.tensor([3.0, 11.0, 8.0]))


def layer_pair(kernel, n_in=96, n_out=80, density=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = SparseLinear.random(n_in, n_out, density, generator=g)
    b = SparseLinear(n_in, n_out, a.flat_indices(), a.values.detach(), a.bias.detach())
    a.kernel, b.kernel = "mkl", kernel
    return a, b


@needs_native
@pytest.mark.parametrize("batch", [1, 7, 64, 130])
@pytest.mark.parametrize("column_major_input", [False, True])
def test_layer_forward_and_gradients_match_mkl(batch, column_major_input, build):
    a, b = layer_pair("native")
    x = torch.randn(batch, 96)
    if column_major_input:  # what a previous sparse layer hands on
        x = x.T.contiguous().T
    y, _ = compare_layers(a, b, x, 80)
    assert y.is_contiguous()  # row-major, as PyTorch's own layers: element-wise work around it stays fast


@needs_native
def test_in_place_activation_after_the_layer_is_allowed():
    _, b = layer_pair("native")
    x = torch.randn(8, 96, requires_grad=True)
    y = torch.relu_(b(x))
    y.sum().backward()
    assert x.grad is not None and b.values.grad is not None


@needs_native
def test_rigl_training_through_the_engine_matches_mkl():
    assert_same_training(rigl_on_kernel("mkl"), rigl_on_kernel("native"))


def test_auto_resolves_by_dtype_and_build():
    v32, v64 = torch.zeros(3), torch.zeros(3, dtype=torch.float64)
    assert resolve_kernel("auto", v32) == ("native" if native.available() else "mkl")
    assert resolve_kernel("auto", v64) == "mkl"
    assert resolve_kernel("mkl", v32) == "mkl"
    assert BackendPolicy().kernel == "auto"


@needs_native
def test_float64_layer_with_auto_runs_on_mkl():
    a, _ = layer_pair("native")
    a.kernel = "auto"
    a.double()
    y = a(torch.randn(4, 96, dtype=torch.float64))
    assert y.dtype == torch.float64


@needs_native
def test_bad_arguments_are_refused():
    _, crow, col, vals = random_csr(5, 4, 0.5, 0)
    with pytest.raises(TypeError, match="contiguous"):
        native.spmm(crow, col, vals, torch.randn(3, 4).T)  # a (4 × 3) view that is not contiguous
    with pytest.raises(TypeError, match="float32"):
        native.spmm(crow, col, vals.double(), torch.randn(4, 3))


def test_native_kernel_missing_is_a_config_error(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    with pytest.raises(ConfigError, match="kernel 'native' was not built"):
        BackendPolicy(kernel="native")


@needs_native
@pytest.mark.parametrize("threads", [2, 3])
def test_threads_split_by_nonzeros_give_the_same_products(threads, build):
    # big enough for several threads (2¹⁸ multiply-adds each); rows of very uneven length: the
    # first 16 rows hold most nonzeros, so a split by rows would differ from one by nonzeros
    w, crow, col, vals = random_csr(300, 400, 0.05, 7)
    w[:16] = torch.randn(16, 400)
    c = w.to_sparse_csr()
    crow, col, vals = c.crow_indices().to(torch.int32), c.col_indices().to(torch.int32), c.values().contiguous()
    x, g = torch.randn(400, 96), torch.randn(300, 96)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y, v = native.spmm(crow, col, vals, x), native.sddmm(crow, col, g, x)
        yt = native.spmm(crow, col, vals, x, transposed=True)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(y, w @ x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(yt, (w @ x).T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v, (g @ x.T)[w != 0], rtol=1e-4, atol=1e-4)


@needs_native
def test_transposed_structure_read_through_the_permutation(build):
    # Wᵀ's CSR structure with W's own values vector and the permutation = Wᵀ with gathered values
    from sparsetrain.sparsity.storage.csr.indices import transpose
    w, crow, col, vals = random_csr(37, 53, 0.2, 11, empty_rows=(4,))
    t = transpose(crow, col, (37, 53))
    g = torch.randn(37, 70)
    through_perm = native.spmm(t.crow, t.row, vals, g, perm=t.perm, transposed=True)
    gathered = native.spmm(t.crow, t.row, vals.index_select(0, t.perm), g, transposed=True)
    assert torch.equal(through_perm, gathered)
    torch.testing.assert_close(through_perm, (w.T @ g).T, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="perm"):
        native.spmm(t.crow, t.row, vals, g, perm=t.perm[:-1])
