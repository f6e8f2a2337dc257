"""Shared-cluster behaviour (issue #13): sweep workers die with their parent, run directories are
locked, SIGTERM/SIGINT checkpoint and exit 143/130, leftovers are cleaned, unhashed thread counts
are checked, corrupt summaries are recomputed, and progress is visible in logs.

Subprocess tests are bounded (timeouts) and kill whatever they started in a ``finally``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparsetrain.config import load_config
from sparsetrain.errors import ConfigError, RunLockedError
from sparsetrain.experiments import landscape
from sparsetrain.experiments.run_store import run_dir_for, run_lock
from sparsetrain.experiments.sweep import ProgressView, RunOutcome, SweepResult, run_status
from sparsetrain.train.checkpoint import load_checkpoint
from helpers import run_cli as cli
from helpers import ROOT

SRC = str(ROOT / "src")
TINY = ["--set", "train.steps=20", "--set", "train.eval_every=10"]
LONG = ["--set", "train.steps=2000000", "--set", "train.eval_every=20", "--set", "train.checkpoint_every=1000000000"]


def _env():
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _spawn(*args, cwd):
    """``python -m sparsetrain ARGS`` in the background (stdout/stderr to files in ``cwd``)."""
    out, err = open(Path(cwd) / "out.txt", "w"), open(Path(cwd) / "err.txt", "w")
    return subprocess.Popen([sys.executable, "-m", "sparsetrain", *args], cwd=cwd, env=_env(),
                            stdout=out, stderr=err)


def _children(pid: int):
    """PIDs whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _kill_all(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _training(out_dir: Path, n: int = 1, after: int = 0):
    """At least ``n`` run directories of ``out_dir`` have evaluation records past step ``after``
    (training is under way)."""
    def last_step(d: Path) -> int:
        try:
            return json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])["step"]
        except (OSError, IndexError, ValueError):
            return -1
    dirs = [d for d in out_dir.glob("*") if last_step(d) > after]
    return len(dirs) >= n and dirs


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process checks")


# --- 1. sweep workers never outlive the sweep ---------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_sweep_workers_die_with_their_parent(tmp_path, sig):
    grid = ["--grid", "seed=0,1", *LONG, "--jobs", "2", "--out-dir", str(tmp_path / "sw")]
    proc = _spawn("sweep", *grid, cwd=tmp_path)
    workers = []
    try:
        _wait_for(lambda: _training(tmp_path / "sw", 1), 120, "a worker to train")
        workers = _children(proc.pid)
        assert workers, "the sweep has no worker processes"
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=60)
        assert code == (-9 if sig == signal.SIGKILL else 143)
        _wait_for(lambda: not any(_alive(w) for w in workers), 60, f"workers {workers} to exit")
    finally:
        _kill_all([proc.pid, *workers])
        proc.wait(timeout=10)
    if sig == signal.SIGTERM:
        err = (tmp_path / "err.txt").read_text()
        assert "stopped by SIGTERM" in err and "rerun the same command" in err
        # the training worker checkpointed before it stopped; no lock or temp file is left
        (run,) = _training(tmp_path / "sw", 1)[:1]
        assert (run / "checkpoint.pt").exists() and not list(run.glob(".*"))


# --- 2. one process per run directory --------------------------------------------------------------
def test_second_train_on_a_locked_run_directory_is_refused(tmp_path, capsys):
    cfg = load_config(overrides=(f"out_dir={tmp_path}", "train.steps=20", "train.eval_every=10"))
    with run_lock(run_dir_for(cfg)):  # another open file description: flock conflicts even in one process
        code, out, err = cli(["train", "--out-dir", str(tmp_path), *TINY], capsys)
        with pytest.raises(RunLockedError):
            with run_lock(run_dir_for(cfg)):
                pass
    assert code == 2 and err.count("\n") == 1 and f"in use by process {os.getpid()}" in err
    assert not (run_dir_for(cfg) / "metrics.jsonl").exists()
    code, out, err = cli(["train", "--out-dir", str(tmp_path), *TINY], capsys)  # released: runs
    assert code == 0 and not (run_dir_for(cfg) / ".lock").exists()


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    hold = (f"import time, sys; sys.path.insert(0, {SRC!r}); from sparsetrain.experiments.run_store import run_lock\n"
            f"with run_lock({str(tmp_path)!r}):\n    print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"process {proc.pid}"):
            with run_lock(tmp_path):
                pass
        proc.kill()
        proc.wait(timeout=10)
        with run_lock(tmp_path):  # the kernel let go of the dead holder's lock
            pass
    finally:
        proc.kill()
        proc.wait(timeout=10)


# --- 3. preemption: SIGTERM / SIGINT ------------------------------------------------------------
def _stop_once(tmp_path, sig, *args, after: int = 0):
    """Start ``train ARGS``, wait for training past step ``after``, send ``sig``; return (exit
    code, stderr)."""
    proc = _spawn("train", *args, cwd=tmp_path)
    try:
        _wait_for(lambda: _training(tmp_path / "o", 1, after), 120, "training to start")
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    return code, (tmp_path / "err.txt").read_text()


def test_sigterm_and_sigint_checkpoint_the_step_and_say_how_to_resume(tmp_path):
    code, err = _stop_once(tmp_path, signal.SIGTERM, "--out-dir", "o", "--quiet", *LONG)
    assert code == 143, err
    line = err.strip().splitlines()[-1]
    m = re.search(r"stopped by SIGTERM at step (\d+) .*resume with `sparsetrain train --resume (\S+)`", line)
    assert m, err
    run_dir = tmp_path / m.group(2)
    step = int(m.group(1))
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == step > 0  # no epoch checkpoint: the stop wrote it
    code, err = _stop_once(tmp_path, signal.SIGINT, "--resume", m.group(2), "--quiet", after=step)
    assert code == 130, err
    assert "stopped by SIGINT" in err and load_checkpoint(run_dir / "checkpoint.pt")["step"] > step
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})  # no duplicated evaluations


def test_stop_request_inside_the_library(tmp_path):
    from sparsetrain.experiments.run_store import train_run
    from sparsetrain.train.stop import StopRequested

    cfg = load_config(overrides=(f"out_dir={tmp_path}", "train.steps=50", "train.checkpoint_every=1000"))
    with pytest.raises(StopRequested) as e:
        train_run(cfg, stop=lambda: signal.SIGTERM)
    assert e.value.step == 1 and load_checkpoint(run_dir_for(cfg) / "checkpoint.pt")["step"] == 1
    assert train_run(cfg)["steps"] == 50  # resumes from the stop's checkpoint


# --- 5-8. silent acceptance, thread counts, leftovers, visibility --------------------------------
def _finished_run(tmp_path, capsys, *extra):
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--quiet", *TINY, *extra], capsys)
    assert code == 0, err
    return Path(out.split("run: ")[1].split()[0])


def test_resume_refuses_another_thread_count(tmp_path, capsys):
    run_dir = _finished_run(tmp_path, capsys)
    (run_dir / "summary.json").unlink()  # interrupted at its last checkpoint
    code, out, err = cli(["train", "--resume", str(run_dir), "--set", "train.threads=2"], capsys)
    assert code == 2 and "written with 1 CPU threads, this process uses 2" in err
    assert "--set train.threads=1" in err and err.count("\n") == 1
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--quiet", *TINY, "--set", "train.threads=2"], capsys)
    assert code == 2 and "CPU threads" in err  # a plain rerun is checked the same way
    code, out, err = cli(["train", "--resume", str(run_dir), "--set", "train.threads=1"], capsys)
    assert code == 0 and json.loads((run_dir / "summary.json").read_text())["threads"] == 1


def test_partial_writes_are_removed_and_a_skipped_rerun_says_so(tmp_path, capsys):
    run_dir = _finished_run(tmp_path, capsys)
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--quiet", *TINY], capsys)
    assert code == 0 and "(finished before; not run again)" in out
    (run_dir / "summary.json").unlink()
    (run_dir / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--quiet", *TINY], capsys)
    assert code == 0 and "finished before" not in out and not list(run_dir.glob(".*"))


def test_corrupt_summary_is_recomputed_by_train_and_sweep(tmp_path, capsys, caplog):
    run_dir = _finished_run(tmp_path, capsys)
    good = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text('{"status": "fini')
    cfg = load_config(overrides=(f"out_dir={tmp_path}", "train.steps=20", "train.eval_every=10"))
    assert run_status(cfg) == "partial"  # a sweep resumes it instead of skipping it forever
    code, out, err = cli(["report", str(tmp_path), "--no-plots"], capsys)
    assert code == 2  # nothing finished is left to report
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--quiet", *TINY], capsys)
    assert code == 0 and "summary.json is corrupt; the run will be finished again" in caplog.text
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["final"] == good["final"] and again["steps"] == good["steps"]


def test_report_notes_a_corrupt_summary(tmp_path, capsys):
    _finished_run(tmp_path, capsys)
    other = _finished_run(tmp_path, capsys, "--set", "seed=1")
    (other / "summary.json").write_bytes(b"\xff\xfe")
    code, out, err = cli(["report", str(tmp_path), "--no-plots"], capsys)
    assert code == 0 and "1 run(s) with a corrupt summary.json left out (rerun" in out


def test_resume_without_a_checkpoint_says_it_starts_over(tmp_path, capsys):
    run_dir = _finished_run(tmp_path, capsys)
    for name in ("summary.json", "checkpoint.pt"):
        (run_dir / name).unlink()
    code, out, err = cli(["train", "--resume", str(run_dir), "--quiet"], capsys)
    assert code == 0 and "has no checkpoint yet; training starts at step 0" in err


def test_custom_distribution_needs_a_table(tmp_path, capsys):
    for argv in (["train", "--out-dir", str(tmp_path)], ["flops", "--model", "mlp", "--dataset", "digits"]):
        code, out, err = cli([*argv, "--set", "sparsity.distribution=custom"], capsys)
        assert code == 2 and "needs the table sparsity.custom" in err and out == ""
    assert not list(tmp_path.iterdir())


def test_sweep_log_has_plain_lines_without_bar_redraws(capsys):
    view = ProgressView(2, enabled=True)  # pytest's stderr is not a terminal
    result = SweepResult()
    for name in ("a", "b"):
        outcome = RunOutcome(f"runs/{name}", "done", 1.5, test_metric="test acc 0.9")
        result.outcomes.append(outcome)
        view.update(outcome, result)
    view.close()
    err = capsys.readouterr().err
    assert err.splitlines() == ["sweep [1/2; 1 done, 0 skipped, 0 failed] done     1.5s  a  test acc 0.9",
                                "sweep [2/2; 2 done, 0 skipped, 0 failed] done     1.5s  b  test acc 0.9"]


def test_landscape_saves_the_curve_before_plotting(tmp_path, monkeypatch):
    curve = {"t": [0.0, 1.0], "train_loss": [1.0, 2.0], "test_loss": [1.5, 2.5], "run_a": "a", "run_b": "b"}
    monkeypatch.setattr(landscape, "interpolate", lambda *a, **k: curve)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(ConfigError, match=r"plots need matplotlib.*the curve is saved in .*land\.json"):
        landscape.write_landscape("a", "b", tmp_path / "land.png")
    assert json.loads((tmp_path / "land.json").read_text()) == curve


# --- 9. docs -----------------------------------------------------------------------------------------
def test_train_help_gives_every_key_its_meaning_and_unit(capsys):
    from sparsetrain.config import describe_keys

    from sparsetrain.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for line in describe_keys(meanings=True):
        assert ": " in line.split(" = ", 1)[1], f"no meaning for {line}"
        assert " ".join(line.split()) in text
    assert "train.checkpoint_every (int) = 0: write checkpoint.pt every N steps (0: once per epoch)" in text


def test_example_grid_and_its_documentation():
    from sparsetrain.experiments.sweep import build_spec, expand

    root = ROOT
    configs = expand(build_spec(str(root / "configs" / "sweeps" / "digits_methods.toml")))
    assert len(configs) == 18 and {c.sparsity.method for c in configs} == {"static", "set", "rigl"}
    doc = (root / "docs" / "cluster.md").read_text()
    assert "configs/sweeps/digits_methods.toml" in doc and "`variants`" in doc and "`grid`" in doc
