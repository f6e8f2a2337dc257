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
