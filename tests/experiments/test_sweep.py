"""Sweeps: grid files and flags, validation before anything runs, idempotence (a second invocation
runs nothing), resume of an interrupted run, failures reported without stopping the sweep, and
every ready-made config in configs/ loading."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsetrain.config import load_config
from sparsetrain.errors import ConfigError
from sparsetrain.experiments.sweep import (SweepSpec, build_spec, check_runnable, expand, grid_points,
                                           parse_grid_flag, read_sweep_file, run_status, run_sweep)
from sparsetrain.experiments.run_store import run_dir_for
from sparsetrain.train import trainer
from sparsetrain.train.callbacks import Callback
from helpers import run_cli as cli
from helpers import ROOT

CONFIGS = ROOT / "configs"
TINY = {"train": {"steps": 20, "eval_every": 10, "progress": "off"}, "data": {"batch_size": 64},
        "sparsity": {"sparsity": 0.8, "options": {}}}


# --- specification ---------------------------------------------------------------------------------
def test_grid_file_quoted_and_nested_keys_and_variants(tmp_path):
    f = tmp_path / "grid.toml"
    f.write_text('seed = 7\n[train]\nsteps = 5\n'
                 '[grid]\n"sparsity.method" = ["static", "rigl"]\nseed = [0, 1, 2]\n'
                 '[grid.sparsity]\nsparsity = [0.8, 0.9]\n'
                 '[[variants]]\n"data.batch_size" = 32\n[[variants]]\n"data.batch_size" = 64\n')
    spec = read_sweep_file(f)
    assert spec.base == {"seed": 7, "train": {"steps": 5}}
    assert spec.grid == {"sparsity.method": ["static", "rigl"], "seed": [0, 1, 2], "sparsity.sparsity": [0.8, 0.9]}
    assert spec.size == 2 * 2 * 3 * 2
    points = grid_points(spec)
    assert len(points) == 24
    # last axis fastest, variants outermost
    assert points[0] == {"sparsity.method": "static", "seed": 0, "sparsity.sparsity": 0.8, "data.batch_size": 32}
    assert points[1]["sparsity.sparsity"] == 0.9 and points[2]["seed"] == 1
    assert points[12]["data.batch_size"] == 64


def test_grid_flags_parse_values_like_set():
    assert parse_grid_flag("seed=0,1,2") == ("seed", [0, 1, 2])
    assert parse_grid_flag("sparsity.method=static, rigl") == ("sparsity.method", ["static", "rigl"])
    assert parse_grid_flag('sparsity.options=[{"delta_t": 50}, {"delta_t": 100}]') == (
        "sparsity.options", [{"delta_t": 50}, {"delta_t": 100}])
    for bad in ("seed", "seed=", "=1,2", "seed=[1"):
        with pytest.raises(ConfigError):
            parse_grid_flag(bad)


def test_set_and_grid_on_the_same_key_is_an_error():
    with pytest.raises(ConfigError, match="both --set and a grid axis"):
        build_spec(None, ["seed=0,1"], ["seed=3"])


def test_expand_validates_every_point_before_running(tmp_path):
    spec = build_spec(None, ["sparsity.method=static,nosuchmethod"], [f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"sparsity.method=nosuchmethod.*unknown method"):
        expand(spec)
    spec = build_spec(None, ["sparsity.sparsity=0.5,1.5"], [f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"sparsity.sparsity=1.5"):
        expand(spec)
    spec = build_spec(None, ["sparsity.options.delta_t=10,20"], ["sparsity.method=static", f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="unknown option"):  # static has no ΔT: caught before any run
        expand(spec)
    assert list(tmp_path.iterdir()) == []


def test_expand_merges_duplicate_points_and_variants_override_grid(tmp_path):
    spec = SweepSpec(base={"out_dir": str(tmp_path)}, grid={"sparsity.sparsity": [0.8, 0.9]},
                     variants=[{"sparsity.method": "dense", "sparsity.sparsity": 0.0}, {"sparsity.method": "static"}])
    configs = expand(spec)
    assert [(c.sparsity.method, c.sparsity.sparsity) for c in configs] == [("dense", 0.0), ("static", 0.8), ("static", 0.9)]


# --- running -----------------------------------------------------------------------------------------
def _mtimes(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")}


def test_sweep_runs_skips_on_rerun_and_reports_failures(tmp_path, capsys):
    spec = tmp_path / "sweep.toml"
    spec.write_text('[train]\nsteps = 20\neval_every = 10\n[sparsity]\nsparsity = 0.8\n'
                    '[grid]\n"sparsity.method" = ["static", "rigl"]\n'
                    # a point that passes validation but fails when it runs: batch > training set
                    '[[variants]]\n"data.batch_size" = 64\n[[variants]]\n"data.batch_size" = 100000\n')
    out = tmp_path / "runs"
    code, stdout, err = cli(["sweep", str(spec), "--out-dir", str(out)], capsys)
    assert code == 1, err  # a failed run makes the exit code 1 ...
    assert "4 runs: 2 done, 0 skipped (finished before), 2 failed" in stdout
    assert "batch_size" in err  # ... and is reported with its error at the end
    assert sorted(p.parent.name.split("-")[2] for p in out.rglob("summary.json")) == ["rigl", "static"]
    code, stdout, _ = cli(["sweep", str(spec), "--out-dir", str(out), "--dry-run"], capsys)
    assert code == 0 and stdout.count("finished") == 2 and stdout.count(" new ") == 2
    # the same two good runs given by flags instead of the file: nothing is run again
    before = _mtimes(out)
    code, stdout, _ = cli(["sweep", "--grid", "sparsity.method=static,rigl", "--set", "train.steps=20",
                           "--set", "train.eval_every=10", "--set", "sparsity.sparsity=0.8",
                           "--set", "data.batch_size=64", "--out-dir", str(out), "--quiet"], capsys)
    assert code == 0 and "2 runs: 0 done, 2 skipped" in stdout
    assert _mtimes(out) == before


class _Interrupt(Callback):
    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, s) -> None:
        if s.step == self.at:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    base = {**TINY, "train": {**TINY["train"], "checkpoint_every": 5}}
    part = load_config(base={**base, "out_dir": str(tmp_path / "a")})
    whole = load_config(base={**base, "out_dir": str(tmp_path / "b")})
    real_loop = trainer.train_loop

    def interrupted(state):
        state.callbacks.append(_Interrupt(12))
        return real_loop(state)

    monkeypatch.setattr(trainer, "train_loop", interrupted)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers below also get one thread: identical reductions
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.Trainer(part, run_dir_for(part)).run()
    finally:
        torch.set_num_threads(threads)
    monkeypatch.undo()
    assert run_status(part) == "partial" and run_status(whole) == "new"
    result = run_sweep([part, whole], jobs=2, threads=1)  # two worker processes at once
    assert result.counts == {"done": 2, "skipped": 0, "failed": 0}
    by_dir = {Path(o.run_dir).parent.name: o for o in result.outcomes}
    assert by_dir["a"].resumed and not by_dir["b"].resumed
    a, b = (run_dir_for(c) for c in (part, whole))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["steps"] == sb["steps"] == 20
    assert sa["final"] == sb["final"]
    steps = [json.loads(line)["step"] for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20]  # the record after the checkpoint was redone once, not duplicated
    assert run_sweep([part, whole], jobs=1).counts == {"done": 0, "skipped": 2, "failed": 0}


def test_jobs_must_be_positive():
    with pytest.raises(ConfigError):
        run_sweep([], jobs=0)


# --- ready-made configs ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_config_loads_and_names_registered_parts(path):
    cfg = load_config(str(path))
    check_runnable(cfg)  # method and its options, model and its options, dataset name


def test_the_paper_configs_are_there():
    names = {p.name for p in CONFIGS.glob("*.toml")}
    for want in ("imagenet_resnet50_rigl_s80_uniform.toml", "imagenet_resnet50_rigl_s90_erk.toml",
                 "imagenet_mobilenet_v1_rigl.toml", "cifar10_wrn22_2_rigl.toml", "cifar100_resnet50_rigl.toml",
                 "char_gru_rigl.toml", "mnist_lenet300.toml", "fashion_lenet5.toml", "ptb_lstm.toml"):
        assert want in names
    wrn = load_config(str(CONFIGS / "cifar10_wrn22_2_rigl.toml"))
    assert wrn.train.epochs == 250 and wrn.optim.gamma == 0.2
    # ×0.2 every 30k steps at 50000 / 128 = 390 steps per epoch
    assert [round(m * 50000 / 128) for m in wrn.optim.milestones] == [30000, 60000, 90000]
