"""Exact resume: a run killed with SIGKILL mid-way and resumed ends bitwise equal to an
uninterrupted run (weights, masks, optimizer, LR schedule, metrics). Broken checkpoints and run
directories give one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparsetrain.cli import main
from sparsetrain.train.callbacks import MetricsLog
from sparsetrain.train.checkpoint import load_checkpoint
from helpers import run_cli as cli

STEPS = 200
# eval and checkpoint steps interleave, so a kill leaves metrics lines past the checkpoint and a
# partly accumulated train loss; ΔT = 7 puts mask updates between checkpoints
RUN = ["train", "--quiet", "--set", f"train.steps={STEPS}", "--set", "train.eval_every=15",
       "--set", "train.checkpoint_every=20", "--set", 'sparsity.options={"delta_t": 7}',
       "--set", "data.batch_size=32"]
# one intra-op thread in every process of this file, so floating-point reductions are identical
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in this process, one thread)."""
    out_dir = tmp_path_factory.mktemp("reference")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*RUN, "--out-dir", str(out_dir)]) == 0
    finally:
        torch.set_num_threads(before)
    (run_dir,) = out_dir.iterdir()
    return run_dir


def past_first_checkpoint(out_dir: Path) -> bool:
    """A checkpoint (step 20) exists and the evaluation after it (step 30) is logged."""
    for ck in out_dir.glob("*/checkpoint.pt"):
        metrics = ck.parent / "metrics.jsonl"
        return metrics.exists() and metrics.read_text().count("\n") >= 2
    return False


def start_and_kill(out_dir: Path) -> Path:
    """Start the run in a subprocess; SIGKILL it just after its first checkpoint, when metrics.jsonl
    holds a record newer than the checkpoint (which the resume must drop and redo)."""
    proc = subprocess.Popen([sys.executable, "-m", "sparsetrain", *RUN, "--out-dir", str(out_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    deadline = time.time() + 240
    try:
        while not past_first_checkpoint(out_dir):
            assert proc.poll() is None, f"run ended before its first checkpoint: {proc.stderr.read()}"
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (run_dir,) = out_dir.iterdir()
    assert not (run_dir / "summary.json").exists()
    step = load_checkpoint(run_dir / "checkpoint.pt")["step"]
    assert 20 <= step < STEPS, "the kill must land mid-way"
    return run_dir


def assert_same_state(a: dict, b: dict, path: str = "") -> None:
    """Recursive bitwise equality of checkpoint contents (tensors with torch.equal)."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    else:
        assert a == b, path


def without_wall_time(obj):
    if isinstance(obj, dict):
        return {k: without_wall_time(v) for k, v in obj.items() if "wall" not in k and k != "run_dir"}
    return obj


def assert_same_run(resumed: Path, reference: Path) -> None:
    a, b = load_checkpoint(resumed / "checkpoint.pt"), load_checkpoint(reference / "checkpoint.pt")
    assert a["step"] == b["step"] == STEPS
    for key in ("model", "optimizer", "engine", "scheduler", "evaluator", "rng"):
        assert_same_state(a[key], b[key], key)
    for name, w in b["model"].items():
        assert torch.equal(a["model"][name], w), name
    for name, m in b["engine"]["masks"].items():
        assert torch.equal(a["engine"]["masks"][name], m), name
    assert b["engine"]["last_update"] is not None  # masks really changed during the run
    ref_lines = (reference / "metrics.jsonl").read_text().splitlines()
    got_lines = (resumed / "metrics.jsonl").read_text().splitlines()
    assert len(ref_lines) == -(-STEPS // 15)  # every 15 steps and at the end
    assert [without_wall_time(json.loads(x)) for x in got_lines] == [without_wall_time(json.loads(x)) for x in ref_lines]
    summary_a = json.loads((resumed / "summary.json").read_text())
    summary_b = json.loads((reference / "summary.json").read_text())
    assert without_wall_time(summary_a) == without_wall_time(summary_b)


def test_sigkill_then_resume_flag_is_bitwise_equal_to_uninterrupted(tmp_path, capsys, reference):
    run_dir = start_and_kill(tmp_path)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 99999, "phase": "tr')  # as if the kill hit in the middle of a write
    code, out, err = cli(["train", "--resume", str(run_dir)], capsys)
    assert code == 0, err
    assert f"steps: {STEPS}" in out
    assert_same_run(run_dir, reference)


def test_sigkill_then_same_command_resumes(tmp_path, capsys, reference):
    run_dir = start_and_kill(tmp_path)
    code, out, err = cli([*RUN, "--out-dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert list(tmp_path.iterdir()) == [run_dir]
    assert_same_run(run_dir, reference)


def test_metrics_log_drops_records_after_the_checkpoint_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 5}\n{"step": 10}\n{"step": 15}\n{"step": 2')
    MetricsLog(path).truncate_after(10)
    assert path.read_text() == '{"step": 5}\n{"step": 10}\n'
    MetricsLog(path).truncate_after(-1)
    assert path.read_text() == ""


def test_rng_state_round_trips_every_generator():
    import random

    import numpy as np

    from sparsetrain.train.checkpoint import rng_state, set_rng_state

    state = rng_state()
    first = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(state)
    second = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


# --- broken checkpoints and run directories ------------------------------------------------------
@pytest.fixture
def unfinished(tmp_path, reference):
    """A copy of the reference run without summary.json: it would resume from its checkpoint."""
    run_dir = tmp_path / reference.name
    shutil.copytree(reference, run_dir)
    (run_dir / "summary.json").unlink()
    return run_dir


def resume_fails(run_dir, capsys, *words):
    code, out, err = cli(["train", "--resume", str(run_dir)], capsys)
    assert code == 2 and out == ""
    assert err.startswith("sparsetrain: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err
    assert not (run_dir / "summary.json").exists()


def test_truncated_checkpoint_is_a_clean_error_and_is_left_alone(unfinished, capsys):
    ck = unfinished / "checkpoint.pt"
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])
    resume_fails(unfinished, capsys, "unreadable", "checkpoint.pt")
    assert ck.read_bytes() == data[: len(data) // 2]


def test_foreign_files_as_checkpoint_are_clean_errors(unfinished, capsys):
    ck = unfinished / "checkpoint.pt"
    ck.write_bytes(os.urandom(4096))
    resume_fails(unfinished, capsys, "unreadable")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, ck)  # some other program's torch file
    resume_fails(unfinished, capsys, "not a sparsetrain checkpoint")


def test_checkpoint_of_another_configuration_is_refused(unfinished, tmp_path, capsys):
    other_dir = tmp_path / "other"
    assert main(["train", "--quiet", "--out-dir", str(other_dir), "--set", "train.steps=5"]) == 0
    (other,) = other_dir.iterdir()
    shutil.copy(other / "checkpoint.pt", unfinished / "checkpoint.pt")
    capsys.readouterr()
    resume_fails(unfinished, capsys, "another configuration")


def test_resume_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    resume_fails(tmp_path, capsys, "not a run directory")
    (tmp_path / "config.json").write_text('{"data": {"name": "digits"')  # torn/corrupt config
    resume_fails(tmp_path, capsys, "corrupt")
