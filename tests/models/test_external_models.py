"""Models by import path (models/external.py): a user factory with keyword arguments through
train, sweep and flops; torchvision and timm models built from their libraries with no weights
downloaded; one-line errors for bad names and options."""
import json

import pytest
import torch

from sparsetrain.config import load_config
from sparsetrain.data import dataset_info
from sparsetrain.errors import ConfigError
from sparsetrain.flops import count_flops
from sparsetrain.models import build_model
from sparsetrain.sparsity.topk import count_active
from sparsetrain.train.checkpoint import load_checkpoint
from helpers import run_cli as cli

FACTORY = '''
import math
from torch import nn

def factory(info, hidden=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(info.input_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, info.num_classes))

def not_a_model(num_classes):
    return num_classes
'''


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_user_factory_trains_sweeps_and_counts_flops(tmp_path, capsys, user_models):
    model = ["--set", "model.name=user_models:factory", "--set", 'model.options={"hidden": 24}']
    code, out, err = cli(["train", "--out-dir", str(tmp_path / "runs"), "--quiet", "--set", "train.steps=10", *model],
                         capsys)
    assert code == 0, err
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert run.name.startswith("digits-user_models_factory-rigl-s0.9-")
    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck["model"]["1.weight"].shape == (24, 64)  # the keyword argument reached the factory
    for name, mask in ck["engine"]["masks"].items():
        assert int(mask.sum()) == count_active(mask.numel(), ck["engine"]["densities"][name])
    spec = tmp_path / "grid.toml"
    spec.write_text('[model]\nname = "user_models:factory"\n[train]\nsteps = 10\n'
                    '[grid]\n"model.options" = [{hidden = 24}, {hidden = 8}]\n')
    code, out, err = cli(["sweep", str(spec), "--out-dir", str(tmp_path / "runs"), "--dry-run"], capsys)
    # validated without building; the point that ran above is found finished in its run directory
    assert code == 0 and out.count("finished") == 1 and out.count(" new ") == 1, out + err
    assert f"finished  {run}" in out
    code, out, err = cli(["flops", *model, "--dataset", "digits", "--sparsity", "0.9", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["inference_flops_dense"] == 2 * (64 * 24 + 24 * 10) + 24  # two matmuls + ReLU


def test_torchvision_and_timm_models_by_name(capsys):
    code, out, err = cli(["flops", "--model", "torchvision:resnet50", "--dataset", "imagenet", "--sparsity", "0.9",
                          "--json"], capsys)
    assert code == 0, err
    import torchvision
    reference = torchvision.models.resnet50(weights=None)
    assert json.loads(out)["inference_flops_dense"] == count_flops(reference, (3, 224, 224)).dense
    timm = pytest.importorskip("timm", reason="the 'timm' extra is not installed (pip install 'sparsetrain[timm]')")
    info = dataset_info("digits")  # one input channel: timm adapts the stem (in_chans)
    model = build_model("timm:test_resnet", info)
    assert isinstance(model, timm.models.ResNet) and model(torch.zeros(2, *info.input_shape)).shape == (2, 10)


def test_timm_model_trains_with_the_cli(tmp_path, capsys):
    pytest.importorskip("timm", reason="the 'timm' extra is not installed (pip install 'sparsetrain[timm]')")
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--quiet", "--set", "train.steps=3",
                          "--set", "model.name=timm:test_resnet", "--set", "data.batch_size=16"], capsys)
    assert code == 0, err
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert summary["achieved_sparsity"] == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize("name, options, message", [
    ("torchvision:no_such_net", {}, "unknown torchvision model 'no_such_net'"),
    ("timm:no_such_net", {}, "unknown timm model 'no_such_net'"),
    ("no_such_package_xyz:factory", {}, "cannot import 'no_such_package_xyz'"),
    ("user_models:missing", {}, "'user_models' has no 'missing'"),
    ("user_models:not_a_model", {}, "returned int, not a torch.nn.Module"),
    ("user_models:factory", {"depth": 3}, "could not be built with model.options"),
    ("torchvision:resnet18", {"weights": "DEFAULT"}, "would load pretrained weights"),
])
def test_bad_names_and_options_are_one_line_errors(tmp_path, capsys, user_models, name, options, message):
    if name.startswith("timm:"):
        pytest.importorskip("timm", reason="the 'timm' extra is not installed (pip install 'sparsetrain[timm]')")
    code, out, err = cli(["train", "--out-dir", str(tmp_path / "runs"), "--set", f"model.name={name}",
                          "--set", f"model.options={json.dumps(options)}"], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_width_is_refused_for_models_without_a_multiplier(user_models):
    with pytest.raises(ConfigError, match="has no width multiplier"):
        build_model("user_models:factory", dataset_info("digits"), width=0.5)
    with pytest.raises(ConfigError, match="has no width multiplier"):
        from sparsetrain.train.trainer import Trainer
        Trainer(load_config(overrides=("model.name=user_models:factory", "sparsity.method=small_dense")), "unused")
