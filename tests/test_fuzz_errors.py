"""Fuzzing the user's side (issue #13): bad config values, corrupted run files and corrupted
dataset files must end in exit code 2 with exactly one line on stderr, no traceback, nothing on
stdout, and no change to any run directory."""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from helpers import run_cli  # noqa: E402

FLOAT_KEYS = ["train.epochs", "train.multiplier", "optim.lr", "optim.momentum", "optim.weight_decay",
              "optim.label_smoothing", "optim.grad_clip", "optim.warmup_epochs", "sparsity.sparsity"]
INT_KEYS = ["seed", "train.steps", "train.eval_every", "train.checkpoint_every", "train.threads",
            "data.batch_size", "data.eval_batch_size", "data.val_size"]

NON_FINITE = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "nan", "inf", "-inf"])
WRONG_TYPE = st.one_of(st.sampled_from(["true", "false", "[1, 2]", '{"a": 1}', '""', "null"]),
                       st.from_regex(r"\A[a-df-z][a-z]{0,7}\Z"))  # letters: never a number
NEGATIVE = st.one_of(st.integers(max_value=-1).map(str),
                     st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False).map(repr))
HUGE_INT = st.integers(min_value=2**63, max_value=2**200).map(str)
FRACTION = st.floats(min_value=0.01, max_value=1e6).filter(lambda v: not v.is_integer()).map(repr)

BAD_FLOAT = st.tuples(st.sampled_from(FLOAT_KEYS), st.one_of(NON_FINITE, WRONG_TYPE, NEGATIVE))
BAD_INT = st.tuples(st.sampled_from(INT_KEYS), st.one_of(NON_FINITE, WRONG_TYPE, NEGATIVE, HUGE_INT, FRACTION))

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
#: each example of these builds a Trainer (data, model): fewer
FUZZ_RUNS = settings(FUZZ, max_examples=12)


def _snapshot(root: Path) -> dict:
    """{relative path: sha256} of every file under ``root`` (hidden ones included)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_error(code, out, err):
    assert code == 2, (code, out, err)
    assert out == "" and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("sparsetrain: error: "), err


@FUZZ
@given(st.one_of(BAD_FLOAT, BAD_INT))
def test_bad_config_values_are_one_line_errors(capsys, assignment):
    key, text = assignment
    with tempfile.TemporaryDirectory() as tmp:
        code, out, err = run_cli(["train", "--out-dir", tmp, "--quiet", "--set", f"{key}={text}"], capsys)
        assert_one_line_error(code, out, err)
        assert not list(Path(tmp).iterdir())  # no run directory was created


# --- corrupted run directories -------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A run directory as a kill leaves it: config.json, metrics.jsonl, checkpoint.pt, no summary."""
    from sparsetrain.config import load_config
    from sparsetrain.experiments.run_store import run_dir_for, train_run

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(overrides=(f"out_dir={out}", "train.steps=10", "train.eval_every=5", "train.progress=off"))
    train_run(cfg)
    (run_dir_for(cfg) / "summary.json").unlink()
    return run_dir_for(cfg)


def _corrupt(data: bytes, how: str, n: int, junk: bytes) -> bytes:
    """Damage that no reader may accept: a strict prefix, nothing, or other bytes."""
    if how == "truncate":
        return data[: n % len(data)]
    if how == "empty":
        return b""
    return junk


CORRUPTION = st.tuples(st.sampled_from(["checkpoint.pt", "config.json"]),
                       st.sampled_from(["truncate", "empty", "junk"]),
                       st.integers(min_value=0, max_value=10**9),
                       st.binary(min_size=1, max_size=64).filter(lambda b: not b.strip(b" \t\r\n{}[]").isdigit()))


@FUZZ_RUNS
@given(CORRUPTION, st.booleans())
def test_corrupted_run_files_are_one_line_errors_and_change_nothing(capsys, interrupted_run, damage, resume):
    name, how, n, junk = damage
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        run_dir = out_dir / interrupted_run.name
        shutil.copytree(interrupted_run, run_dir)
        (run_dir / name).write_bytes(_corrupt((run_dir / name).read_bytes(), how, n, junk))
        before = _snapshot(out_dir)
        argv = (["train", "--resume", str(run_dir), "--quiet"] if resume else
                ["train", "--out-dir", tmp, "--quiet", "--set", "train.steps=10", "--set", "train.eval_every=5"])
        code, out, err = run_cli(argv, capsys)
        assert_one_line_error(code, out, err)
        assert _snapshot(out_dir) == before


# --- corrupted dataset files ----------------------------------------------------------------------
def _idx(magic: int, dims, payload) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + bytes(payload)


def _tiny_mnist(root: Path) -> dict:
    """Valid MNIST IDX files with 4 images per split; {file name: header size}."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(_idx(0x803, (4, 28, 28), [9] * (4 * 784)))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(_idx(0x801, (4,), [0, 1, 2, 3]))
    return {p.name: (16 if "images" in p.name else 8) for p in raw.iterdir()}


DATA_DAMAGE = st.tuples(st.sampled_from(["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
                        st.sampled_from(["truncate", "extend", "header", "label"]),
                        st.integers(min_value=0, max_value=10**9),
                        st.integers(min_value=1, max_value=255))


@FUZZ_RUNS
@given(DATA_DAMAGE)
def test_corrupted_mnist_files_are_one_line_errors(capsys, damage):
    name, how, n, byte = damage
    with tempfile.TemporaryDirectory() as tmp:
        headers = _tiny_mnist(Path(tmp) / "data")
        path = Path(tmp) / "data" / "MNIST" / "raw" / name
        data = bytearray(path.read_bytes())
        if how == "truncate":
            data = data[: n % len(data)]
        elif how == "extend":
            data += bytes([byte]) * (1 + n % 100)
        elif how == "header":  # any other value in the magic number or a dimension
            i = n % headers[name]
            data[i] = (data[i] + byte) % 256
        elif "labels" in name:  # a label outside 0..9
            data[headers[name] + n % 4] = 10 + byte % 246
        else:
            data = data[:-1]
        path.write_bytes(bytes(data))
        out_dir = Path(tmp) / "runs"
        code, out, err = run_cli(["train", "--out-dir", str(out_dir), "--quiet", "--set", "data.name=mnist",
                                  "--set", f"data.root={tmp}/data", "--set", "model.name=lenet300"], capsys)
        assert_one_line_error(code, out, err)
        assert not out_dir.exists()
