"""Method options are typed: ``sparsity.options`` is coerced against the method's ``Options``
dataclass by the config's own coercion (``sparsetrain.config.coerce_fields``), from ``--set``,
files and the Python API alike; bad values are one-line ConfigErrors (exit 2 on the CLI)."""
from __future__ import annotations

import dataclasses

import pytest
from torch import nn

import sparsetrain
from sparsetrain.config import coerce_fields, load_config
from sparsetrain.errors import ConfigError
from sparsetrain.registry import METHODS
from sparsetrain.sparsity.methods.base import build_options
from helpers import run_cli as cli


def method(name: str, **options):
    return METHODS.get(name)(**options)


def test_values_take_their_field_types():
    o = method("rigl", delta_t="20", alpha=1, end=300.0, skip_optimizer_step="no", decay="cosine").options
    assert o.delta_t == 20 and type(o.delta_t) is int
    assert o.alpha == 1.0 and type(o.alpha) is float
    assert o.end == 300 and type(o.end) is int
    assert o.skip_optimizer_step is False
    assert method("set", start="null").options.start is None
    assert method("gem_miner", finetune_lr="0.01").options.finetune_lr == 0.01


def test_valid_values_are_kept_as_they_are():
    # ints stay ints, floats floats, defaults untouched: the same objects as before typing
    o = method("rigl", delta_t=50, alpha=0.5, end_fraction=0.5).options
    assert (o.delta_t, o.alpha, o.end_fraction) == (50, 0.5, 0.5)
    assert o == dataclasses.replace(METHODS.get("rigl").Options(), delta_t=50, alpha=0.5, end_fraction=0.5)


@pytest.mark.parametrize("options,words", [
    ({"delta_t": "abc"}, ["sparsity.options.delta_t must be an integer, got 'abc'"]),
    ({"delta_t": 1.5}, ["sparsity.options.delta_t must be an integer, got 1.5"]),
    ({"delta_t": True}, ["sparsity.options.delta_t", "number"]),
    ({"alpha": "lots"}, ["sparsity.options.alpha must be a number"]),
    ({"skip_optimizer_step": "maybe"}, ["sparsity.options.skip_optimizer_step must be true or false"]),
    ({"decay": [1]}, ["sparsity.options.decay must be a string"]),
    ({"bogus": 1}, ["unknown option(s) ['bogus'] for method 'rigl'", "delta_t"]),
])
def test_bad_values_are_config_errors_naming_the_key(options, words):
    with pytest.raises(ConfigError) as e:
        method("rigl", **options)
    for w in words:
        assert w in str(e.value)


def test_python_api_coerces_and_rejects():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match="delta_t must be an integer"):
        sparsetrain.RigL(model, None, sparsity=0.9, total_steps=10, delta_t="abc")
    engine = sparsetrain.RigL(model, None, sparsity=0.5, total_steps=10, delta_t="5")
    assert engine.method.options.delta_t == 5


def test_every_registered_method_has_coercible_options():
    # the type hints of every Options dataclass resolve, and its defaults coerce to themselves
    for name in METHODS.names():
        cls = METHODS.get(name).Options
        defaults = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
        assert build_options(cls, name, defaults) == cls(), name


def test_coerce_fields_is_the_config_coercion():
    from sparsetrain.config import DataConfig

    assert coerce_fields(DataConfig, {"batch_size": "32", "augment": "off"}) == {"batch_size": 32, "augment": False}
    with pytest.raises(ConfigError, match="data.batch_size must be an integer"):
        coerce_fields(DataConfig, {"batch_size": 2.5}, "data.")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['data.nope'\]"):
        coerce_fields(DataConfig, {"nope": 1}, "data.")


def test_file_values_follow_the_config_rules(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[sparsity.options]\ndelta_t = 10.0\nskip_optimizer_step = \"yes\"\n")
    cfg = load_config(str(path))
    o = method(cfg.sparsity.method, **cfg.sparsity.options).options
    assert o.delta_t == 10 and type(o.delta_t) is int and o.skip_optimizer_step is True
    # the config keeps the file's values (the run hash of an existing config does not change)
    assert cfg.sparsity.options == {"delta_t": 10.0, "skip_optimizer_step": "yes"}


# --- the command line ------------------------------------------------------------------------------
BAD = [
    ("sparsity.options.delta_t=abc", "sparsity.options.delta_t must be an integer, got 'abc'"),
    ("sparsity.options.delta_t=1.5", "sparsity.options.delta_t must be an integer, got 1.5"),
    ("sparsity.options.skip_optimizer_step=maybe", "must be true or false"),
    ("sparsity.options.bogus=1", "unknown option(s) ['bogus']"),
]


@pytest.mark.parametrize("command", ["train", "flops"])
@pytest.mark.parametrize("assignment,message", BAD, ids=[a for a, _ in BAD])
def test_bad_options_are_one_line_exit_2(tmp_path, capsys, command, assignment, message):
    where = ["--out-dir", str(tmp_path / "runs")] if command == "train" else ["--model", "mlp", "--dataset", "digits"]
    code, out, err = cli([command, *where, "--set", assignment], capsys)
    assert code == 2 and out == ""
    assert err.startswith("sparsetrain: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    assert not (tmp_path / "runs").exists()


def test_good_options_from_the_command_line(capsys):
    import json

    code, out, err = cli(["flops", "--model", "mlp", "--dataset", "digits", "--json", "--set", "sparsity.options.alpha=0.5",
                          "--set", "sparsity.options.skip_optimizer_step=yes", "--set", "sparsity.options.delta_t=4.0"],
                         capsys)
    assert code == 0, err
    assert json.loads(out)["delta_t"] == 4
