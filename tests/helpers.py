"""Helpers shared by the test modules (tests/ is on sys.path: pyproject sets pytest's pythonpath)."""
import pickle
from pathlib import Path

import numpy as np

from sparsetrain.cli import main

#: the project's root (tests/ is laid out like the package, so test files sit at varying depths)
ROOT = Path(__file__).resolve().parents[1]
#: the real datasets, beside the checkout (../shared/data), as in CI
SHARED_DATA = ROOT.parent / "shared" / "data"


def run_cli(argv, capsys):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def write_pickle(path: Path, obj) -> None:
    """A protocol-2 pickle, as the CIFAR archives ship them."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar10_tree(root: Path, per_batch: int = 4) -> np.ndarray:
    """cifar-10-batches-py with bytes keys, as the Python-2 pickles read with encoding='bytes'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    all_data = rng.integers(0, 256, size=(6 * per_batch, 3072), dtype=np.uint8)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        rows = slice(k * per_batch, (k + 1) * per_batch)
        write_pickle(folder / name, {b"batch_label": name.encode(), b"data": all_data[rows],
                                      b"labels": [(k + j) % 10 for j in range(per_batch)],
                                      b"filenames": [b"x.png"] * per_batch})
    labels = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
              b"ship", b"truck"]
    write_pickle(folder / "batches.meta", {b"label_names": [s.decode() for s in labels],
                                            b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return all_data


def rigl_on_kernel(kernel: str):
    """A small MLP trained 12 steps with RigL (ΔT = 5) on the sparse backend with ``kernel``: the
    engine, to compare kernels step for step (the same data and seeds for every kernel)."""
    import torch
    from torch import nn

    from sparsetrain.sparsity.backend import SparseEngine

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


def assert_same_training(a, b) -> None:
    """Two engines of :func:`rigl_on_kernel`: the same patterns, values equal within float error."""
    import torch

    assert a.last_update is not None and a.last_update["grown"] > 0
    for name in a.layers:
        assert torch.equal(a.layers[name].flat_indices(), b.layers[name].flat_indices()), name
        torch.testing.assert_close(b.layers[name].values, a.layers[name].values, rtol=1e-4, atol=1e-5)


def compare_layers(a, b, x, out_features: int):
    """Forward and backward of two SparseLinear layers of the same weights (``a`` on MKL, ``b`` on
    another kernel) on ``x``: outputs, input, value and bias gradients and the captured factors
    agree. Returns (b's output, the output gradient used)."""
    import torch

    a.capture, b.capture = [], []
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(x.shape[0], out_features)
    ya, yb = a(xa), b(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.values.grad, a.values.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.bias.grad, a.bias.grad)
    (xa_c, ga), (xb_c, gb) = a.capture[0], b.capture[0]
    assert torch.equal(xa_c, xb_c) and torch.equal(ga, gb)
    return yb, g
