"""Typed run configuration: files, --set overrides, validation, run hash, step-anchored scaling."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from sparsetrain.config import RunConfig, describe_keys, load_config, run_hash, to_dict
from sparsetrain.errors import ConfigError
from sparsetrain.train.runner import build_engine, build_scheduler, total_steps
from helpers import ROOT

TOML = """
seed = 3
[data]
batch_size = 32
[optim]
lr = 0.05
milestones = [1.0, 2.5]
[sparsity]
method = "set"
sparsity = 0.8
[sparsity.options]
delta_t = 50
"""

JSON = {"seed": 3, "data": {"batch_size": 32}, "optim": {"lr": 0.05, "milestones": [1.0, 2.5]},
        "sparsity": {"method": "set", "sparsity": 0.8, "options": {"delta_t": 50}}}

YAML = """
seed: 3
data: {batch_size: 32}
optim: {lr: 0.05, milestones: [1.0, 2.5]}
sparsity:
  method: set
  sparsity: 0.8
  options: {delta_t: 50}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_are_the_main_job():
    cfg = load_config()
    assert cfg == RunConfig()
    assert (cfg.data.name, cfg.model.name, cfg.sparsity.method, cfg.sparsity.sparsity) == ("digits", "mlp", "rigl", 0.9)
    assert (cfg.optim.name, cfg.optim.momentum, cfg.sparsity.distribution) == ("sgd", 0.9, "erk")


@pytest.mark.parametrize("name,text", [("c.toml", TOML), ("c.json", json.dumps(JSON)), ("c.yaml", YAML)])
def test_config_files_in_three_formats_give_the_same_config(tmp_path, name, text):
    cfg = load_config(write(tmp_path, name, text))
    assert cfg.seed == 3 and cfg.data.batch_size == 32 and cfg.optim.lr == 0.05
    assert cfg.optim.milestones == (1.0, 2.5)  # lists become tuples: the config stays hashable data
    assert cfg.sparsity.method == "set" and cfg.sparsity.sparsity == 0.8
    assert cfg.sparsity.options == {"delta_t": 50}
    assert cfg.data.name == "digits"  # untouched keys keep their defaults


def test_set_overrides_win_over_the_file_and_parse_as_json(tmp_path):
    path = write(tmp_path, "c.toml", TOML)
    cfg = load_config(path, ("optim.lr=0.2", "sparsity.options.alpha=0.5", "optim.nesterov=false",
                             "data.name=mnist", "sparsity.include=[\"layers.*\"]", "sparsity.dense_first=null"))
    assert cfg.optim.lr == 0.2 and cfg.optim.nesterov is False and cfg.data.name == "mnist"
    assert cfg.sparsity.options == {"delta_t": 50, "alpha": 0.5}  # merged into the file's table
    assert cfg.sparsity.include == ("layers.*",) and cfg.sparsity.dense_first is None
    # a whole table as JSON replaces it
    cfg = load_config(path, ('sparsity.options={"alpha": 0.1}',))
    assert cfg.sparsity.options == {"alpha": 0.1}


def test_set_values_are_coerced_to_the_field_type():
    cfg = load_config(overrides=("optim.lr=1", "train.steps=7.0", "optim.betas=[0.8, 0.9]", "seed=5",
                                 "optim.milestones=30,60", "sparsity.custom={\"a.weight\": 1}"))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.optim.betas == (0.8, 0.9) and cfg.seed == 5
    assert cfg.optim.milestones == (30.0, 60.0)
    assert cfg.sparsity.custom == {"a.weight": 1.0} and isinstance(cfg.sparsity.custom["a.weight"], float)


@pytest.mark.parametrize("overrides,words", [
    (("data.nope=1",), ["data.nope", "batch_size"]),         # unknown key names the valid ones
    (("nope=1",), ["nope", "seed"]),
    (("optim.lr.x=1",), ["optim.lr"]),                       # a value is not a section
    (("data.batch_size=abc",), ["data.batch_size", "integer"]),
    (("train.steps=2.5",), ["train.steps", "integer"]),
    (("optim.nesterov=maybe",), ["optim.nesterov", "true or false"]),
    (("optim.lr=true",), ["optim.lr", "number"]),
    (("optim.betas=[0.9]",), ["optim.betas", "2 entries"]),
    (("data=3",), ["data", "table"]),
    (("sparsity.custom={\"a\": \"x\"}",), ["sparsity.custom.a", "number"]),
    (("model.name=[1]",), ["model.name", "string"]),
    (("foo",), ["key=value"]),                                # bad --set syntax
    (("=3",), ["empty key"]),
    (("sparsity.sparsity=1.5",), ["sparsity.sparsity", "[0, 1)"]),
    (("optim.lr=0",), ["optim.lr"]),
    (("optim.schedule=linear",), ["optim.schedule"]),
    (("optim.name=rmsprop",), ["optim.name"]),
    (("train.progress=maybe",), ["train.progress"]),
    (("optim.label_smoothing=1",), ["label_smoothing"]),
    (("train.eval_every=-1",), ["eval_every"]),
    (("optim.weight_decay=-1",), ["weight_decay"]),
])
def test_bad_keys_and_values_are_config_errors(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    for w in words:
        assert w in str(e.value)


def test_bad_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="must end in"):
        load_config(write(tmp_path, "c.ini", "[data]"))
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(write(tmp_path, "c.toml", "[data\nname ="))
    with pytest.raises(ConfigError, match="data.bogus"):
        load_config(write(tmp_path, "c.json", '{"data": {"bogus": 1}}'))


def test_run_hash_is_stable_and_ignores_where_and_how_a_run_executes():
    base = load_config()
    assert run_hash(base) == run_hash(load_config())
    assert len(run_hash(base)) == 10
    same = load_config(overrides=("out_dir=/elsewhere", "train.device=cpu", "train.progress=off",
                                  "data.root=/data", "data.workers=4", "train.tensorboard=true",
                                  "train.checkpoint_every=7"))
    assert run_hash(same) == run_hash(base)
    for change in ("sparsity.sparsity=0.8", "seed=1", "optim.lr=0.2", "sparsity.options.delta_t=10",
                   "model.width=0.5", "train.multiplier=2"):
        assert run_hash(load_config(overrides=(change,))) != run_hash(base), change


def test_run_hash_does_not_depend_on_key_order(tmp_path):
    a = load_config(write(tmp_path, "a.json", json.dumps({"seed": 1, "optim": {"lr": 0.3, "gamma": 0.5}})))
    b = load_config(overrides=("optim.gamma=0.5", "optim.lr=0.3", "seed=1"))
    assert run_hash(a) == run_hash(b)


def test_to_dict_round_trips_through_load_config():
    cfg = load_config(overrides=("optim.milestones=[1,2]", "sparsity.options.delta_t=5"))
    assert load_config(base=json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_describe_keys_lists_every_key_with_type_and_default():
    lines = describe_keys()
    sections = [f.name for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(getattr(RunConfig(), f.name))]
    n_keys = sum(len(dataclasses.fields(getattr(RunConfig(), s))) for s in sections) + 2  # + seed, out_dir
    assert len(lines) == n_keys
    assert "sparsity.sparsity (float) = 0.9" in lines
    assert "data.root (str or null) = None" in lines
    assert "optim.milestones (list of float) = ()" in lines


# --- step-anchored values scale with the extended-training multiplier (RigL paper, 2x/5x) --------
def lr_at(scheduler, optimizer, step):
    while scheduler.last_epoch < step:
        optimizer.step()
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


def test_total_steps_warmup_and_milestones_scale_with_multiplier():
    cfg = load_config(overrides=("train.epochs=3", "train.multiplier=2", "optim.schedule=step",
                                 "optim.warmup_epochs=1", "optim.milestones=[2]", "optim.lr=1", "optim.gamma=0.1"))
    spe = 10  # steps per epoch
    total = total_steps(cfg, spe)
    assert total == 60
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, cfg, total, spe)
    # warm-up covers 1 epoch x 2 = 20 steps: factor (step + 1) / 20
    assert lr_at(sched, opt, 0) == pytest.approx(1 / 20)
    assert lr_at(sched, opt, 19) == pytest.approx(20 / 20)
    # milestone at epoch 2 x 2 = step 40
    assert lr_at(sched, opt, 39) == pytest.approx(1.0)
    assert lr_at(sched, opt, 40) == pytest.approx(0.1)
    assert total_steps(load_config(overrides=("train.steps=25", "train.multiplier=2")), spe) == 50


def test_method_start_and_end_scale_with_multiplier_but_delta_t_does_not():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opts = 'sparsity.options={"start": 10, "end": 50, "delta_t": 5}'
    for m, (start, end) in ((1, (10, 50)), (2, (20, 100))):
        cfg = load_config(overrides=(opts, f"train.multiplier={m}"))
        engine = build_engine(model, opt, cfg, total=200)
        sched = engine.method.schedule
        assert (sched.start, sched.end, sched.delta_t) == (start, end, 5)


# --- run hashes of the shipped configs are pinned: run directories keep their names ----------------
PINNED = {
    "char_gru_rigl.toml": "7acfd3a9ea", "cifar100_resnet50_rigl.toml": "f1ae982326",
    "cifar10_wrn22_2_rigl.toml": "25d3277f56", "fashion_lenet5.toml": "c0a222bd8c",
    "imagenet_mobilenet_v1_rigl.toml": "fd9f4e414c", "imagenet_resnet50_rigl_s80_erk.toml": "93ba5aa89d",
    "imagenet_resnet50_rigl_s80_uniform.toml": "fb088f3165", "imagenet_resnet50_rigl_s90_erk.toml": "f1cbabe59c",
    "imagenet_resnet50_rigl_s90_uniform.toml": "9624c656de", "mnist_lenet300.toml": "8dad815b5e",
    "ptb_lstm.toml": "61e30334d4",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_run_hashes_of_the_shipped_configs_are_pinned(name):
    from pathlib import Path

    path = ROOT / "configs" / name
    assert run_hash(load_config(str(path))) == PINNED[name]


@pytest.mark.parametrize("overrides,pinned", [
    ((), "8dd939927c"),
    (("sparsity.options.delta_t=5",), "95e9a1c8c3"),
    (("sparsity.options.alpha=1",), "5893431367"),
    (('sparsity.options={"delta_t": 50.0, "end_fraction": 1}',), "00bebc99b8"),
    (("sparsity.options.skip_optimizer_step=yes",), "a933d083f6"),
])
def test_method_options_are_hashed_as_written(overrides, pinned):
    # typing the options happens when the method is built; the config (and its hash) keeps the values
    assert run_hash(load_config(overrides=overrides)) == pinned


def test_key_type_walks_the_dataclasses():
    from typing import Optional

    from sparsetrain.config import key_type

    assert key_type("sparsity.sparsity") is float and key_type("seed") is int
    assert key_type("sparsity.dense_first") == Optional[bool]
    assert key_type("sparsity.options.delta_t") is None  # a method option: typed by the method
    with pytest.raises(ConfigError, match="unknown config key 'data.nope'"):
        key_type("data.nope")
