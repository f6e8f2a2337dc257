"""Loss-landscape interpolation (RigL paper §5) and starting a run from another run
(train.init_from): interpolation by hand, endpoints equal the runs' own evaluation, PNG/JSON
written, the paper's Static -> RigL experiment end to end."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sparsetrain.cli import main
from sparsetrain.config import load_config, run_hash
from sparsetrain.errors import CheckpointError, ConfigError
from sparsetrain.train.init_from import init_from_run
from sparsetrain.experiments.landscape import interpolate, interpolate_state, write_landscape
from sparsetrain.train.checkpoint import load_checkpoint
from sparsetrain.experiments.run_store import run_dir_for, train_run
from sparsetrain.train.trainer import Trainer

BASE = ("train.steps=20", "train.eval_every=10", "train.progress=off", "data.batch_size=64",
        'sparsity.options={"delta_t": 5}')


def _cfg(tmp_path, *extra):
    return load_config(overrides=BASE + (f"out_dir={tmp_path}",) + extra)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished runs of the same model: RigL seeds 0 and 1."""
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for seed in (0, 1):
        cfg = _cfg(root, f"seed={seed}")
        train_run(cfg)
        dirs.append(run_dir_for(cfg))
    return dirs


def test_interpolate_state_by_hand():
    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([4.0, 6.0]), "n": torch.tensor(9)}
    out = interpolate_state(a, b, 0.25)
    assert torch.equal(out["w"], torch.tensor([1.0, 3.0]))  # 0.75·a + 0.25·b
    assert int(out["n"]) == 3                               # integer buffers are A's
    with pytest.raises(CheckpointError):
        interpolate_state(a, {"w": b["w"]}, 0.5)
    with pytest.raises(CheckpointError):
        interpolate_state(a, {"w": torch.zeros(3), "n": b["n"]}, 0.5)


def test_endpoints_equal_the_runs_own_evaluation(two_runs, tmp_path):
    a, b = two_runs
    png = tmp_path / "land.png"
    curve = write_landscape(a, b, png, points=5)
    assert png.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(png.with_suffix(".json").read_text())
    assert saved["t"] == [0.0, 0.25, 0.5, 0.75, 1.0] and len(saved["train_loss"]) == 5
    assert saved == json.loads(json.dumps(curve))
    for end, run in ((0, a), (-1, b)):
        final = json.loads((run / "summary.json").read_text())["final"]["test"]
        assert curve["test_loss"][end] == pytest.approx(final["loss"], rel=1e-6)
        assert curve["test_accuracy"][end] == pytest.approx(final["accuracy"])
    assert all(v > 0 for v in curve["train_loss"])


def test_interpolation_refuses_different_models(two_runs, tmp_path):
    other = _cfg(tmp_path, "model.width=0.5")
    train_run(other)
    with pytest.raises(ConfigError, match="model.width"):
        interpolate(two_runs[0], run_dir_for(other), points=3)
    with pytest.raises(ConfigError, match="points"):
        interpolate(two_runs[0], two_runs[1], points=1)


def test_init_from_copies_weights_and_masks(two_runs, tmp_path):
    source = two_runs[0]
    cfg = _cfg(tmp_path, "seed=5", f"train.init_from={source}")
    assert run_hash(cfg) != run_hash(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=None)))
    t = Trainer(cfg, run_dir_for(cfg))
    ck = load_checkpoint(source / "checkpoint.pt")
    assert any(not torch.equal(t.engine.masks[n], m) for n, m in ck["engine"]["masks"].items())  # seed 5 differs
    init_from_run(t.model, t.engine, source)
    for n, m in ck["engine"]["masks"].items():
        assert torch.equal(t.engine.masks[n], m)
    for n, w in ck["model"].items():
        assert torch.equal(t.model.state_dict()[n], w)
    # a run of another width cannot start from it
    narrow_cfg = _cfg(tmp_path, "model.width=0.5")
    narrow = Trainer(narrow_cfg, run_dir_for(narrow_cfg))
    with pytest.raises(CheckpointError, match="does not fit"):
        init_from_run(narrow.model, narrow.engine, source)
    with pytest.raises(CheckpointError, match="not a directory"):
        init_from_run(t.model, t.engine, tmp_path / "missing")


def test_unset_init_from_keeps_older_run_hashes(tmp_path):
    """Run directories made before the key existed keep their hash: the hash of a config with
    init_from unset is the hash over all other keys."""
    import hashlib

    from sparsetrain.config import _HASHED_UNLESS, _UNHASHED, RunConfig, flat_items, to_dict

    cfg = _cfg(tmp_path)
    older = {("train.amp", "off"): False}  # train.amp was a boolean then
    items = sorted((k, older.get((k, v), v) if isinstance(v, str) else v) for k, v in flat_items(to_dict(cfg))
                   if k not in _UNHASHED and k not in _HASHED_UNLESS)
    old = hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:10]
    assert cfg.train.init_from is None and run_hash(cfg) == old
    # the default config's hash as computed by sparsetrain before sparsity.backend existed
    assert run_hash(RunConfig()) == "8dd939927c"


def test_paper_experiment_static_then_rigl_from_it(tmp_path, capsys):
    out = tmp_path / "paper.png"
    code = main(["landscape", "--paper", "--set", f"out_dir={tmp_path / 'runs'}", *sum((["--set", o] for o in BASE), []),
                 "--points", "3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert out.exists() and out.with_suffix(".json").exists()
    static, rigl = (next((tmp_path / "runs").glob(f"*-{m}-*")) for m in ("static", "rigl"))
    rigl_cfg = json.loads((rigl / "config.json").read_text())
    assert rigl_cfg["train"]["init_from"] == str(static)
    assert rigl_cfg["sparsity"]["options"] == {"delta_t": 5}  # the --set options reach RigL
    curve = json.loads(out.with_suffix(".json").read_text())
    assert curve["method_a"] == "static" and curve["method_b"] == "rigl"
    for end, run in ((0, static), (-1, rigl)):
        final = json.loads((run / "summary.json").read_text())["final"]["test"]
        assert curve["test_loss"][end] == pytest.approx(final["loss"], rel=1e-6)
    # RigL started from Static's masks: its first evaluation already has Static's density
    first = json.loads((rigl / "metrics.jsonl").read_text().splitlines()[0])
    assert first["density"] == pytest.approx(json.loads((static / "summary.json").read_text())["achieved_density"])


def test_landscape_cli_argument_errors(two_runs, capsys):
    assert main(["landscape", str(two_runs[0])]) == 2
    assert "exactly two run directories" in capsys.readouterr().err
    assert main(["landscape", "--paper", str(two_runs[0]), str(two_runs[1])]) == 2
