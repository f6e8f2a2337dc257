"""The command line end to end: train on digits and real MNIST, run-directory files, list, help,
idempotent reruns, and one-line exit-2 errors for every kind of bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsetrain.config import load_config, run_hash, to_dict
from sparsetrain.registry import DATASETS, DISTRIBUTIONS, METHODS, MODELS
from helpers import run_cli as cli

from helpers import SHARED_DATA as DATA
FAST = ["--set", "train.steps=30", "--set", "train.eval_every=10"]


def sparsetrain(*args, cwd=None, env=None):
    """``python -m sparsetrain ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "sparsetrain", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=300)


def only_run_dir(out_dir: Path) -> Path:
    (run_dir,) = list(out_dir.iterdir())
    return run_dir


def test_train_on_digits_writes_a_complete_run_directory(tmp_path, capsys):
    code, out, err = cli(["train", "--out-dir", str(tmp_path), *FAST, "--set", "sparsity.options.delta_t=5"], capsys)
    assert code == 0, err
    # stderr is not a terminal here: a plain progress line at the start and at the end, nothing else
    lines = err.splitlines()
    assert len(lines) == 2 and all(ln.startswith("train digits-mlp-rigl-s0.9-") for ln in lines), err
    run_dir = only_run_dir(tmp_path)
    cfg = load_config(overrides=(f"out_dir={tmp_path}", "train.steps=30", "train.eval_every=10",
                                 "sparsity.options.delta_t=5"))
    assert run_dir.name == f"digits-mlp-rigl-s0.9-{run_hash(cfg)}"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl", "summary.json"]

    # one output line with the test accuracy
    assert out.count("\n") == 1 and "test accuracy: " in out and str(run_dir) in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"test accuracy: {summary['final']['test']['accuracy']:.4f}" in out

    # config.json: the resolved config (every key) and its hash
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved.pop("_hash") == run_hash(cfg) and saved == to_dict(cfg)

    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30]
    for r in records:
        assert {"step", "phase", "train_loss", "lr", "test_loss", "test_accuracy", "density", "layer_density",
                "drop_fraction"} <= set(r)
        assert r["density"] == pytest.approx(0.1, abs=1e-3)
        assert set(r["layer_density"]) == {"layers.0.weight", "layers.2.weight", "layers.4.weight"}
        assert 0 <= r["test_accuracy"] <= 1
    assert records[-1]["lr"] == pytest.approx(0.0)  # cosine to zero at the last step
    assert records[0]["drop_fraction"] > records[1]["drop_fraction"] > 0  # cosine-decayed, ΔT = 5
    assert records[0]["last_update"]["step"] == 5

    assert summary["status"] == "finished" and summary["steps"] == 30 and summary["method"] == "rigl"
    assert summary["final"]["test"]["accuracy"] == records[-1]["test_accuracy"]
    assert summary["best"]["test_accuracy"] == max(r["test_accuracy"] for r in records)
    assert summary["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert summary["target_sparsity"] == 0.9 and summary["wall_time_s"] > 0
    assert set(summary["layers"]) == set(records[0]["layer_density"])


def test_rerunning_a_finished_run_is_skipped(tmp_path, capsys):
    argv = ["train", "--out-dir", str(tmp_path), *FAST]
    code, first, _ = cli(argv, capsys)
    assert code == 0
    run_dir = only_run_dir(tmp_path)
    stamps = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()}
    code, again, _ = cli(argv, capsys)
    # the same result line, saying that nothing ran
    skipped = first.replace("  steps:", "  (finished before; not run again)  steps:", 1)
    assert code == 0 and again == skipped
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()} == stamps
    # --resume of a finished run is a no-op too
    code, resumed, _ = cli(["train", "--resume", str(run_dir)], capsys)
    assert code == 0 and resumed == skipped


def test_config_file_and_shortcut_flags(tmp_path, capsys):
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text('[train]\nsteps = 12\n[sparsity]\nmethod = "set"\nsparsity = 0.8\n')
    code, out, err = cli(["train", "--config", str(cfg_file), "--out-dir", str(tmp_path / "o"), "--device", "cpu",
                          "--quiet", "--set", "sparsity.sparsity=0.7"], capsys)
    assert code == 0, err
    run_dir = only_run_dir(tmp_path / "o")
    assert run_dir.name.startswith("digits-mlp-set-s0.7-")
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["train"]["device"] == "cpu" and saved["train"]["progress"] == "off"
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 12


def test_dense_method_runs_without_engine(tmp_path, capsys):
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--set", "sparsity.method=dense", *FAST], capsys)
    assert code == 0, err
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["achieved_sparsity"] == 0.0


@pytest.mark.skipif(not (DATA / "MNIST" / "raw").is_dir(), reason="needs ../shared/data/MNIST")
def test_train_on_real_mnist(tmp_path, capsys):
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--data-dir", str(DATA), "--set", "data.name=mnist",
                          "--set", "model.name=lenet300", "--set", "train.steps=40", "--set", "train.eval_every=20",
                          "--set", "data.val_size=5000"], capsys)
    assert code == 0, err
    run_dir = only_run_dir(tmp_path)
    assert run_dir.name.startswith("mnist-lenet300-rigl-s0.9-")
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40]
    assert {"val_accuracy", "val_loss", "test_accuracy", "test_loss"} <= set(records[-1])
    assert records[-1]["test_accuracy"] > 0.3  # 40 SGD steps already beat chance (0.1) by far
    assert set(records[-1]["layer_density"]) == {"layers.0.weight", "layers.2.weight", "layers.4.weight"}
    assert "test accuracy: " in out


def test_list_shows_every_registry(capsys):
    code, out, _ = cli(["list"], capsys)
    assert code == 0
    lines = dict(ln.split(": ", 1) for ln in out.strip().splitlines())
    for title, reg in (("methods", METHODS), ("models", MODELS), ("datasets", DATASETS),
                       ("distributions", DISTRIBUTIONS)):
        assert lines[title].split(", ") == reg.names()
    assert "rigl" in lines["methods"] and "lenet300" in lines["models"] and "mnist" in lines["datasets"]
    assert "erk" in lines["distributions"]


def test_train_help_lists_every_config_key(capsys):
    from sparsetrain.config import describe_keys

    code, out, _ = cli(["train", "--help"], capsys)
    assert code == 0
    for line in describe_keys():
        assert line in out
    assert "--set" in out and "--resume" in out


def test_no_command_prints_help_and_exits_2(capsys):
    code, out, _ = cli([], capsys)
    assert code == 2 and "train" in out


# --- bad input: one line on stderr, exit code 2, no traceback, nothing written -------------------
BAD = [
    (["--bogus"], "unrecognized arguments"),
    (["--set", "sparsity.sparsity"], "key=value"),
    (["--set", "data.nope=1"], "unknown config key"),
    (["--set", "data.batch_size=abc"], "must be an integer"),
    (["--set", "model.name=nope"], "unknown model 'nope'"),
    (["--set", "data.name=nope"], "unknown dataset 'nope'"),
    (["--set", "sparsity.method=nope"], "unknown method 'nope'"),
    (["--set", "sparsity.distribution=nope"], "unknown distribution 'nope'"),
    (["--set", "data.name=mnist", "--data-dir", "/nonexistent/data"], "/nonexistent/data"),
    (["--set", "sparsity.sparsity=1.5"], "sparsity.sparsity must be in [0, 1)"),
    (["--set", "train.amp=true", "--set", "train.device=cpu"], "CUDA"),
    (["--set", 'sparsity.options={"bogus": 1}'], "bogus"),
    (["--set", 'model.options={"bogus": 1}'], "bogus"),
    (["--set", "model.name=lstm_lm"], "task"),
    (["--set", "data.batch_size=5000"], "batch_size"),
    (["--config", "/nonexistent/run.toml"], "not found"),
    (["--resume", "/nonexistent/run"], "not a run directory"),
    (["--resume", "x", "--set", "seed=1"], "--resume"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    out_dir = tmp_path / "runs"
    code, out, err = cli(["train", "--out-dir", str(out_dir), *args], capsys)
    assert code == 2
    assert err.startswith("sparsetrain: error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err and out == ""
    assert not out_dir.exists()  # validated before any file is written


def test_cuda_device_without_cuda_is_a_clean_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = cli(["train", "--out-dir", str(tmp_path / "r"), "--set", "train.device=cuda"], capsys)
    assert code == 2 and "CUDA is not available" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_bad_input_in_a_real_process(tmp_path):
    # the console entry point itself: exit status 2, one stderr line, no traceback, no run dir
    proc = sparsetrain("train", "--out-dir", str(tmp_path / "r"), "--set", "data.name=mnist",
                       "--data-dir", "/nonexistent")
    assert proc.returncode == 2
    assert proc.stderr.startswith("sparsetrain: error:") and proc.stderr.count("\n") == 1, proc.stderr
    assert "/nonexistent" in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "r").exists()
