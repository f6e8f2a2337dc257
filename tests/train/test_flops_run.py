"""Training FLOPs owned by the methods, tracked during real runs, and the ``sparsetrain flops`` command.

Hand values use the App. H convention of ``sparsetrain.flops`` (Evci et al., ICML 2020). The MLP on
digits is 64-300-100-10 with biases and ReLUs: dense forward FLOPs per example
f_D = 300·(64+63+1) + 300 + 100·(300+299+1) + 100 + 10·(100+99+1) = 38400 + 300 + 60000 + 100 + 2000
= 100800.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.experiments.run_store import run_dir_for
from sparsetrain.flops import count_flops, training_flops_rigl
from sparsetrain.registry import METHODS
from sparsetrain.sparsity.engine import SparsityEngine
from sparsetrain.train.trainer import Trainer

F_D_MLP = 100800


# --- the method hooks --------------------------------------------------------------------------
def method(name: str, **options):
    return METHODS.get(name)(**options)


def test_training_flops_hooks_by_hand():
    f_s, f_d = 1.0, 10.0
    assert method("static").training_flops(f_s, f_d) == 3.0
    assert method("set").training_flops(f_s, f_d) == 3.0
    # RigL (3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1): ΔT = 100 -> 312 / 101; ΔT = 4 -> (12 + 2 + 10) / 5 = 4.8
    assert method("rigl").training_flops(f_s, f_d) == pytest.approx(312 / 101)
    assert method("rigl", delta_t=4).training_flops(f_s, f_d) == pytest.approx(4.8)
    assert method("snfs").training_flops(f_s, f_d) == 12.0  # 2 f_S + f_D
    assert method("dense").training_flops(f_s, f_d) == 30.0  # 3 f_D
    # a momentum of dense gradients (redistribution "momentum") costs a dense gradient every step
    assert method("rigl", redistribution="momentum").training_flops(f_s, f_d) == 12.0
    assert method("set", redistribution="momentum").training_flops(f_s, f_d) == 12.0


def test_base_method_defaults_to_sparse_training():
    from sparsetrain.sparsity.methods.base import Method

    m = Method()
    assert m.training_flops(2.0, 10.0) == 6.0 and m.uses_dense_grad(0) is False


def test_uses_dense_grad_follows_the_update_schedule():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

    def engine(name, **options):
        return SparsityEngine(model, None, name, sparsity=0.5, total_steps=40, **options)

    rigl = engine("rigl", delta_t=10).method  # updates at 10, 20, 30 (T_end = 0.75 * 40 = 30 excluded)
    assert [s for s in range(40) if rigl.uses_dense_grad(s)] == [10, 20]
    assert all(engine("snfs", delta_t=10).method.uses_dense_grad(s) for s in range(40))
    assert not any(engine("set", delta_t=10).method.uses_dense_grad(s) for s in range(40))
    assert not any(engine("static").method.uses_dense_grad(s) for s in range(40))


# --- tracked during real runs ---------------------------------------------------------------------
def _trainer(cfg):
    return Trainer(cfg, run_dir_for(cfg))


def run_config(tmp: Path, method_name: str, steps: int, **options):
    sets = ["data.name=digits", "model.name=mlp", f"sparsity.method={method_name}", "sparsity.sparsity=0.8",
            f"train.steps={steps}", "train.device=cpu", "train.progress=off", "data.batch_size=32",
            "train.eval_every=100", f"sparsity.options={json.dumps(options)}", f"out_dir={tmp}"]
    return load_config(overrides=tuple(sets))


def check_summary_consistent(summary: dict, steps: int, batch: int = 32) -> None:
    assert summary["inference_flops_dense"] == F_D_MLP
    assert summary["train_flops"] == pytest.approx(summary["train_flops_per_example"] * steps * batch, rel=1e-12)
    assert summary["train_flops_ratio"] == pytest.approx(summary["train_flops_per_example"] / (3 * F_D_MLP))
    # the final f_S is the count of the real final masks
    dens = {n: v["density"] for n, v in summary["layers"].items()}
    from sparsetrain.models import build_model
    from sparsetrain.data import dataset_info
    model = build_model("mlp", dataset_info("digits"))
    assert summary["inference_flops"] == pytest.approx(count_flops(model, (1, 8, 8), dens).sparse)
    assert summary["inference_flops_ratio"] == pytest.approx(summary["inference_flops"] / F_D_MLP)


def test_static_run_tracks_its_formula(tmp_path):
    summary = _trainer(run_config(tmp_path, "static", 60)).run()
    check_summary_consistent(summary, 60)
    f_s = summary["inference_flops"]
    assert f_s < 0.5 * F_D_MLP
    assert summary["train_flops_per_example"] == pytest.approx(3 * f_s, rel=1e-12)
    assert summary["train_flops_formula"] == pytest.approx(3 * f_s, rel=1e-12)
    assert summary["train_flops_dense_grad_steps"] == 0


@pytest.fixture(scope="module")
def rigl_run(tmp_path_factory):
    # ΔT = 10, updates at steps 10, 20, ..., 300 (end = 301): 30 dense-gradient steps in 330 = 30·(ΔT + 1),
    # exactly the paper's "one dense gradient per ΔT + 1 steps"
    tmp = tmp_path_factory.mktemp("rigl")
    cfg = run_config(tmp, "rigl", 330, delta_t=10, end=301)
    return cfg, _trainer(cfg).run()


def test_rigl_run_tracks_its_formula(rigl_run):
    cfg, summary = rigl_run
    check_summary_consistent(summary, 330)
    assert summary["train_flops_dense_grad_steps"] == 30
    metrics = [json.loads(ln) for ln in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [m["last_update"]["step"] for m in metrics] == [90, 190, 290, 300]  # 0-based update steps
    assert metrics[0]["last_update"]["grown"] > 0  # the topology really changed
    f_s = summary["inference_flops"]  # constant: RigL keeps every layer's count
    expected = training_flops_rigl(f_s, F_D_MLP, 10)
    assert summary["train_flops_per_example"] == pytest.approx(expected, rel=1e-12)
    assert summary["train_flops_formula"] == pytest.approx(expected, rel=1e-12)
    assert summary["train_flops_formula_ratio"] == pytest.approx(expected / (3 * F_D_MLP))


def test_resumed_run_reports_the_same_flops(rigl_run, tmp_path):
    cfg, full = rigl_run
    cfg = run_config(tmp_path, "rigl", 330, delta_t=10, end=301)
    first = _trainer(cfg)
    first.total = 155  # stop early, as an interruption would, with a checkpoint at step 155
    first.run()  # the Trainer leaves summary.json to the run store: the directory stays unfinished
    assert not (first.run_dir / "summary.json").exists()
    resumed = _trainer(cfg).run()
    for key in ("train_flops", "train_flops_per_example", "train_flops_dense_grad_steps", "inference_flops"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-12), key


def test_dense_run_costs_three_dense_forwards(tmp_path):
    cfg = load_config(overrides=("data.name=digits", "model.name=mlp", "sparsity.method=dense",
                                 "train.steps=5", "train.device=cpu", "train.progress=off",
                                 "train.multiplier=2", f"out_dir={tmp_path}"))
    summary = _trainer(cfg).run()
    assert summary["inference_flops"] == F_D_MLP and summary["inference_flops_ratio"] == 1.0
    assert summary["train_flops_per_example"] == 3 * F_D_MLP
    # 2x extended training: twice the FLOPs of the 1x dense run
    assert summary["train_flops_multiplier"] == 2.0 and summary["train_flops_ratio"] == pytest.approx(2.0)


# --- the command ---------------------------------------------------------------------------------
def flops_json(capsys, *args) -> dict:
    assert main(["flops", "--model", "mlp", "--dataset", "digits", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_flops_command_json_by_hand(capsys):
    # uniform 50 %, first layer dense: layers.2 v = 150: 100·(150+149+1) = 30000, layers.4 v = 50:
    # 10·(50+49+1) = 1000; f_S = 38400 + 300 + 30000 + 100 + 1000 = 69800
    out = flops_json(capsys, "--sparsity", "0.5", "--distribution", "uniform", "--method", "rigl",
                     "--delta-t", "10", "--multiplier", "2")
    assert out["inference_flops_dense"] == F_D_MLP and out["inference_flops"] == 69800
    assert out["inference_flops_ratio"] == pytest.approx(69800 / F_D_MLP)
    train = (3 * 69800 * 10 + 2 * 69800 + F_D_MLP) / 11  # 212218.18...
    assert out["train_flops_per_example"] == pytest.approx(train)
    assert out["train_flops_ratio"] == pytest.approx(train / (3 * F_D_MLP))
    assert out["train_flops_ratio_extended"] == pytest.approx(2 * train / (3 * F_D_MLP))
    layers = {r["name"]: r for r in out["layers"]}
    assert layers["layers.0"]["density"] == 1.0 and layers["layers.2"]["density"] == 0.5
    assert layers["layers.2"]["weight_shape"] == [100, 300] and layers["layers.2"]["sparse"] == 30000
    assert out["input_shape"] == [1, 8, 8] and out["method"] == "rigl" and out["delta_t"] == 10


def test_flops_command_dense_first_switch_and_methods(capsys):
    # every layer at 50 %: layers.0 v = 32: 300·(32+31+1) = 19200; f_S = 19200 + 300 + 30000 + 100 + 1000
    out = flops_json(capsys, "--sparsity", "0.5", "--distribution", "uniform", "--no-dense-first",
                     "--method", "snfs")
    assert out["inference_flops"] == 50600
    assert out["train_flops_per_example"] == pytest.approx(2 * 50600 + F_D_MLP)
    dense = flops_json(capsys, "--method", "dense")
    assert dense["inference_flops_ratio"] == 1.0 and dense["train_flops_ratio"] == 1.0


def test_flops_command_table(capsys):
    assert main(["flops", "--model", "mlp", "--dataset", "digits", "--sparsity", "0.5",
                 "--distribution", "uniform", "--method", "static", "--multiplier", "5"]) == 0
    text = capsys.readouterr().out
    assert "layers.2" in text and "1.0080e+05" in text and "6.9800e+04" in text
    assert "0.6925x dense" in text  # 69800 / 100800 for both inference and 3 f_S / 3 f_D
    assert "extended training x5: 3.4623x" in text


@pytest.mark.parametrize("args", [
    ["--model", "no_such_model", "--dataset", "digits"],
    ["--model", "mlp", "--dataset", "no_such_data"],
    ["--model", "mlp", "--dataset", "digits", "--method", "no_such_method"],
    ["--model", "mlp", "--dataset", "digits", "--sparsity", "1.0"],
    ["--model", "mlp", "--dataset", "digits", "--multiplier", "0"],
    ["--model", "mlp", "--dataset", "digits", "--distribution", "nope"],
    ["--model", "mlp", "--dataset", "digits", "--delta-t", "0"],
    ["--dataset", "digits"],
])
def test_flops_command_errors_are_one_line(capsys, args):
    try:
        code = main(["flops", *args])
    except SystemExit as e:  # argparse errors exit from the parser
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsetrain: error:") and err.count("\n") == 1
