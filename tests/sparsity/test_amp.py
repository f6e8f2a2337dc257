"""Mixed precision: the engine reads unscaled gradients, skips overflow steps (no gradient average,
no topology update), and top-k never lets +inf win (sparsity/engine.py, sparsity/topk.py)."""
import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsetrain import SparsityEngine
from sparsetrain.sparsity.topk import topk_mask

INF = float("inf")


# --- top-k: non-finite scores rank lowest -----------------------------------------------------------
def test_plus_inf_ranks_lowest_like_nan():
    scores = torch.tensor([INF, 1.0, float("nan"), 3.0, -INF])
    assert topk_mask(scores, 2).tolist() == [False, True, False, True, False]
    # +inf and NaN rank below everything, -inf included; ties between them go to the lower index
    assert topk_mask(scores, 3).tolist() == [False, True, False, True, True]
    assert topk_mask(scores, 4).tolist() == [True, True, False, True, True]


@settings(max_examples=40, deadline=None)
@given(scores=st.lists(st.sampled_from([-1.0, 0.0, 2.0, INF, -INF, float("nan")]), min_size=1, max_size=30),
       frac=st.floats(0, 1))
def test_topk_with_infinities_matches_brute_force(scores, frac):
    k = int(frac * len(scores))
    # rank value: finite as is, -inf below every finite value, +inf and NaN lowest
    finite = [s if math.isfinite(s) else -1e300 if s == -INF else -INF for s in scores]
    chosen = sorted(range(len(scores)), key=lambda i: (-finite[i], i))[:k]
    assert topk_mask(torch.tensor(scores), k).tolist() == [i in chosen for i in range(len(scores))]


# --- the engine on overflow steps -------------------------------------------------------------------
def setup(method, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    eng = SparsityEngine(model, opt, method, sparsity=0.75, total_steps=40, delta_t=2, end_fraction=1.0,
                         **options)
    return model, opt, eng


def backward(model, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 4, generator=g)
    model.zero_grad(set_to_none=True)
    return nn.functional.mse_loss(model(x), y)


def snapshot(eng, model):
    return ({n: m.clone() for n, m in eng.masks.items()}, copy.deepcopy(model.state_dict()),
            {k: v.clone() for k, v in getattr(eng.method, "ema", {}).items()})


@pytest.mark.parametrize("method", ["rigl", "snfs", "set"])
def test_injected_overflow_on_an_update_step_changes_nothing(method):
    model, opt, eng = setup(method)
    for i in range(2):  # steps 0, 1; step 2 is an update step
        backward(model, i).backward()
        eng.step_optimizer()
    assert eng.method.is_update_step(eng.step)
    masks, weights, ema = snapshot(eng, model)
    backward(model, 2).backward()
    model[0].weight.grad[0, 0] = INF  # what an fp16 overflow leaves after unscaling
    assert eng.after_backward() is False  # no optimizer step either
    eng.after_step()
    assert eng.step == 3 and eng.overflow_steps == 1 and eng.last_update is None
    after = snapshot(eng, model)
    assert all(torch.equal(masks[n], after[0][n]) for n in masks)
    assert all(torch.equal(weights[k], after[1][k]) for k in weights)
    assert ema.keys() == after[2].keys() and all(torch.equal(ema[k], after[2][k]) for k in ema)
    if method == "snfs":
        assert ema  # the average exists and was left alone
    # the next update step runs as usual
    for i in range(3, 5):
        backward(model, i).backward()
        eng.step_optimizer()
    assert eng.last_update["step"] == 4 and eng.overflow_steps == 1
    assert all(math.isfinite(float(v.abs().max())) for v in getattr(eng.method, "ema", {}).values())


def test_nan_gradient_in_an_unsparsified_tensor_also_skips_the_average():
    model, opt, eng = setup("snfs")
    backward(model, 0).backward()
    eng.step_optimizer()
    ema = {k: v.clone() for k, v in eng.method.ema.items()}
    backward(model, 1).backward()
    model[2].bias.grad[0] = float("nan")  # GradScaler checks every parameter; so does the engine
    assert eng.after_backward() is False
    eng.after_step()
    assert all(torch.equal(ema[k], eng.method.ema[k]) for k in ema)


def test_explicit_answer_overrides_the_check():
    model, opt, eng = setup("snfs")
    backward(model, 0).backward()
    assert eng.after_backward(grads_finite=False) is False and eng.method.ema == {}
    eng.after_step()
    backward(model, 1).backward()
    assert eng.after_backward(grads_finite=True) is True and set(eng.method.ema) == set(eng.masks)


def test_grad_scaler_helper_reads_unscaled_gradients_and_skips_overflow():
    """step_optimizer(scaler=...) unscales first: SNFS's average equals the fp32 run's exactly
    (power-of-two scales); an overflow step halves the scale and leaves masks and averages alone."""
    runs = {}
    for scaled in (False, True):
        model, opt, eng = setup("snfs")
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12) if scaled else None
        for i in range(5):
            loss = backward(model, i)
            if scaled:
                scaler.scale(loss).backward()
                eng.step_optimizer(scaler=scaler)
            else:
                loss.backward()
                eng.step_optimizer()
        runs[scaled] = (model, eng, scaler)
    (m0, e0, _), (m1, e1, scaler) = runs[False], runs[True]
    assert all(torch.equal(e0.method.ema[k], e1.method.ema[k]) for k in e0.method.ema)
    assert all(torch.equal(e0.masks[k], e1.masks[k]) for k in e0.masks)
    assert all(torch.equal(a, b) for a, b in zip(m0.state_dict().values(), m1.state_dict().values()))
    masks, weights, ema = snapshot(e1, m1)
    scaler.scale(backward(m1, 5) * 1e38).backward()  # overflows in fp32 once scaled
    assert e1.step_optimizer(scaler=scaler) is False
    assert scaler.get_scale() == 2.0 ** 11 and e1.overflow_steps == 1
    after = snapshot(e1, m1)
    assert all(torch.equal(masks[n], after[0][n]) for n in masks)
    assert all(torch.equal(weights[k], after[1][k]) for k in weights)
    assert all(torch.equal(ema[k], after[2][k]) for k in ema)
