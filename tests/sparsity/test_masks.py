"""Which tensors are sparsified, exact-count random masks, applying and reporting (sparsity/masks.py)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsetrain import ConfigError
from sparsetrain.sparsity.masks import (apply_masks, density_report, find_targets, random_mask, random_masks,
                                        unwrap)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.emb = nn.Embedding(10, 4)
        self.rnn = nn.GRU(4, 5)
        self.fc = nn.Linear(5, 10)
        self.ln = nn.LayerNorm(10)
        self.out = nn.Linear(4, 10)
        self.out.weight = self.emb.weight  # tied readout stays dense with its embedding


def names(targets):
    return [t.name for t in targets]


def test_default_targets_are_conv_linear_and_rnn_weights_only():
    targets, kept = find_targets(Net())
    assert names(targets) == ["conv.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "fc.weight"]
    assert kept == []
    assert targets[0].shape == (4, 3, 3, 3) and targets[0].module_name == "conv"


def test_dense_first_and_last_and_single_layer():
    targets, kept = find_targets(Net(), dense_first=True, dense_last=True)
    assert names(targets) == ["rnn.weight_ih_l0", "rnn.weight_hh_l0"]
    assert names(kept) == ["conv.weight", "fc.weight"]
    # a lone layer is never made dense by the first-layer rule
    targets, kept = find_targets(nn.Linear(3, 2), dense_first=True)
    assert names(targets) == ["weight"] and kept == []


def test_include_exclude_patterns_and_ddp_like_wrappers():
    targets, _ = find_targets(Net(), include=["emb.*", "fc.*"])
    # include takes any tensor with ndim >= 2 matching (fc.bias is 1-D, so it is skipped)
    assert names(targets) == ["emb.weight", "fc.weight"]
    targets, _ = find_targets(Net(), exclude=["rnn.*"])
    assert names(targets) == ["conv.weight", "fc.weight"]
    wrapped = nn.DataParallel(Net())
    assert unwrap(wrapped) is wrapped.module
    assert names(find_targets(wrapped)[0])[0] == "conv.weight"


@pytest.mark.parametrize("kwargs,match", [
    ({"include": ["nothing.*"]}, "include pattern 'nothing.*' matches no parameter"),
    ({"exclude": ["fcc.weight"]}, "exclude pattern 'fcc.weight' matches no parameter"),
    ({"exclude": ["*"]}, "no sparsifiable layer"),
])
def test_bad_patterns_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        find_targets(Net(), **kwargs)


def test_model_without_sparsifiable_layer():
    with pytest.raises(ConfigError, match=r"include=\[\.\.\.\]"):
        find_targets(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()))


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=4), frac=st.floats(0, 1), seed=st.integers(0, 9))
def test_random_mask_has_exact_count_and_depends_only_on_the_seed(shape, frac, seed):
    numel = int(torch.Size(shape).numel())
    k = int(frac * numel)
    a = random_mask(shape, k, torch.Generator().manual_seed(seed))
    b = random_mask(shape, k, torch.Generator().manual_seed(seed))
    assert a.dtype == torch.bool and tuple(a.shape) == tuple(shape)
    assert int(a.sum()) == k and torch.equal(a, b)


def test_random_masks_follow_densities_and_apply_masks_zeroes():
    model = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 5))
    targets, _ = find_targets(model)
    masks = random_masks(targets, {"0.weight": 0.25, "1.weight": 0.5}, torch.Generator().manual_seed(0))
    # 200 − floor(0.75·200) = 50; 100 − floor(0.5·100) = 50
    assert [int(m.sum()) for m in masks.values()] == [50, 50]
    apply_masks(targets, masks)
    for t in targets:
        assert bool((t.param[~masks[t.name]] == 0).all())
        assert bool((t.param[masks[t.name]] != 0).all())  # kept weights untouched (init is never exactly 0)
    assert bool((model[0].bias != 0).all())  # biases stay dense


def test_density_report_by_hand():
    model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))  # weights 20 + 10, biases 5 + 2
    targets, kept = find_targets(model, dense_first=True)
    masks = {"1.weight": torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)}
    rep = density_report(targets, masks, kept, model)
    assert rep["layers"]["1.weight"] == {"shape": [2, 5], "numel": 10, "active": 3, "density": 0.3,
                                         "sparsified": True}
    assert rep["layers"]["0.weight"]["sparsified"] is False
    assert rep["sparsified_density"] == pytest.approx(0.3)
    assert rep["weights_density"] == pytest.approx((20 + 3) / 30)
    # all 37 parameters, 7 masked out
    assert (rep["model_params"], rep["model_nonzero_params"]) == (37, 30)
    assert rep["model_density"] == pytest.approx(30 / 37)
