"""Pruning methods: SNIP, GraSP, SynFlow (at init), GMP (gradual) and Small-Dense, on hand-made
cases (sparsity/methods/{snip,grasp,synflow,gmp,small_dense,pruning}.py)."""
import pytest
import torch
from torch import nn

from sparsetrain import SparsityEngine
from sparsetrain.data.base import DataInfo
from sparsetrain.errors import ConfigError
from sparsetrain.models import build_model, count_parameters
from sparsetrain.sparsity.methods.grasp import grasp_scores
from sparsetrain.sparsity.methods.pruning import select
from sparsetrain.sparsity.methods.small_dense import SmallDense, sparse_nonzeros
from sparsetrain.sparsity.methods.snip import snip_scores
from sparsetrain.sparsity.methods.synflow import synflow_scores
from sparsetrain.sparsity.schedules import gmp_sparsity

# Linear(4, 2) without bias, flat indices 0..7 row by row
W = torch.tensor([[0.5, -0.1, 0.9, 0.3],
                  [-0.8, 0.2, 0.05, 0.7]])


def flat(mask):
    return torch.nonzero(mask.reshape(-1)).squeeze(1).tolist()


def tiny(method, sparsity=0.5, **options):
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(W)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    return lin, opt, SparsityEngine(lin, opt, method, sparsity=sparsity, total_steps=10, **options)


# --- SNIP -------------------------------------------------------------------------------------
def test_snip_keeps_top_abs_grad_times_weight_through_the_hooks():
    lin, opt, eng = tiny("snip")
    assert flat(eng.masks["weight"]) == list(range(8))  # dense until the first gradient
    lin.weight.grad = torch.tensor([[1.0, 10.0, 0.1, 2.0], [0.5, -3.0, 4.0, 0.2]])
    # |g·w| = [.5, 1, .09, .6 | .4, .6, .2, .14]: keep 4 of 8 -> 1 (1.0), 3 and 5 (0.6 tie: lower
    # index first, both fit), 0 (0.5). |g| alone would keep 1, 6, 5, 3 and |w| alone 2, 4, 7, 0.
    assert eng.after_backward() is False  # the SNIP step takes no SGD step (official code)
    eng.after_step()
    assert flat(eng.masks["weight"]) == [0, 1, 3, 5]
    assert lin.weight.detach().reshape(-1).tolist() == pytest.approx([0.5, -0.1, 0, 0.3, 0, 0.2, 0, 0])
    assert eng.method.found == {"weight": 0.5}
    # later steps train normally and never prune again
    lin.weight.grad = torch.ones(2, 4)
    assert eng.after_backward() is True


def test_snip_on_a_batch_by_hand():
    # loss = sum of outputs: dL/dW[i, j] = sum_b x[b, j] = (1, 2, 3, 4) in both rows
    lin, _, eng = tiny("snip")
    scores = snip_scores(lin, {"weight": lin.weight}, (torch.tensor([[1.0, 2.0, 3.0, 4.0]]), None),
                         lambda out, y: out.sum())
    expect = (torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 2) * W).abs()
    assert torch.allclose(scores["weight"], expect)
    assert lin.weight.grad is None  # autograd.grad leaves .grad alone
    found = eng.method.prune_at_init(eng, (torch.tensor([[1.0, 2.0, 3.0, 4.0]]), None), lambda out, y: out.sum())
    # |g·w| = [.5, .2, 2.7, 1.2 | .8, .4, .15, 2.8] -> keep 7, 2, 3, 4
    assert flat(eng.masks["weight"]) == [2, 3, 4, 7]
    assert found == {"weight": 0.5}


def test_snip_layer_counts_follow_the_distribution_and_global_the_total():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    batch = (torch.randn(8, 10), torch.randint(0, 5, (8,)))
    loss = nn.functional.cross_entropy
    layer = SparsityEngine(model, None, "snip", sparsity=0.8, distribution="erk", total_steps=5)
    layer.method.prune_at_init(layer, batch, loss)
    from sparsetrain.sparsity.topk import count_active
    want = {t.name: count_active(t.param.numel(), layer.densities[t.name]) for t in layer.targets}
    assert {n: int(m.sum()) for n, m in layer.masks.items()} == want
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    glob = SparsityEngine(model, None, "snip", sparsity=0.8, distribution="erk", total_steps=5, scope="global")
    scores = glob.method.scores(glob, batch, loss, None, None)
    glob.method.prune_at_init(glob, batch, loss)
    assert sum(int(m.sum()) for m in glob.masks.values()) == sum(want.values())
    # global = one threshold: every kept score >= every pruned score
    kept = torch.cat([scores[n][m] for n, m in glob.masks.items()])
    pruned = torch.cat([scores[n][~m] for n, m in glob.masks.items()])
    assert kept.min() >= pruned.max()


def test_select_global_splits_one_topk_back_into_layers():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0]), "b": torch.tensor([[4.0, 0.5], [2.0, 6.0]])}
    out = select(scores, {"a": 1, "b": 2}, "global")  # top 3 of all: 6, 5, 4
    assert out["a"].tolist() == [True, False, False]
    assert out["b"].tolist() == [[True, False], [False, True]]
    with pytest.raises(ConfigError):
        select(scores, {"a": 1, "b": 2}, "per-layer")


# --- GraSP ------------------------------------------------------------------------------------
def test_grasp_scores_equal_w_times_hessian_gradient_product():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2, bias=False)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    T = 2.0

    def loss_of(wflat):
        return nn.functional.cross_entropy(x @ wflat.view(2, 3).t() / T, y)

    w = lin.weight.detach().reshape(-1)
    g = torch.autograd.functional.jacobian(loss_of, w)
    h = torch.autograd.functional.hessian(loss_of, w)
    expect = (w * (h @ g)).view(2, 3)
    got = grasp_scores(lin, {"weight": lin.weight}, (x, y), nn.functional.cross_entropy, temperature=T)
    assert torch.allclose(got["weight"], expect, atol=1e-6)


def test_grasp_prunes_to_the_exact_global_count():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    eng = SparsityEngine(model, None, "grasp", sparsity=0.75, distribution="uniform", dense_first=False, total_steps=3)
    eng.method.prune_at_init(eng, (torch.randn(5, 6), torch.randint(0, 3, (5,))), nn.functional.cross_entropy)
    assert sum(int(m.sum()) for m in eng.masks.values()) == 12 + 6  # 48 - 36, 24 - 18
    with pytest.raises(ConfigError):
        eng.method.prune_at_init(eng, None)  # GraSP needs a batch


# --- SynFlow ----------------------------------------------------------------------------------
class Poison:
    """A 'batch' that fails on any use: SynFlow must not touch data."""

    def __getattr__(self, name):
        raise AssertionError("SynFlow read the data")

    def __iter__(self):
        raise AssertionError("SynFlow read the data")


def test_synflow_scores_by_hand_on_two_linear_layers():
    # R = 1ᵀ|W2||W1|1, so dR/dW1[i, j] = Σ_k |W2[k, i]| and score1 = |W1[i, j]|·Σ_k |W2[k, i]|
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
        model[1].weight.copy_(torch.tensor([[-4.0, 1.0]]))
    s = synflow_scores(model, ["0.weight", "1.weight"], (2,))
    assert s["0.weight"].tolist() == [[4.0, 8.0], [0.5, 3.0]]
    # dR/dW2[0, i] = Σ_j |W1[i, j]|: (3, 3.5) -> scores (12, 3.5)
    assert s["1.weight"].tolist() == [[12.0, 3.5]]
    assert model[0].weight[0, 1].item() == -2.0  # the model itself is untouched


def test_synflow_is_data_free_positive_and_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eng = SparsityEngine(model, None, "synflow", sparsity=0.9, distribution="erk", total_steps=3, rounds=20)
    names = [t.name for t in eng.targets]
    assert all(bool((v > 0).all()) for v in synflow_scores(model, names, (3, 4)).values())
    found = eng.method.prune_at_init(eng, Poison(), input_shape=(3, 4))
    from sparsetrain.sparsity.topk import count_active
    want = sum(count_active(t.param.numel(), eng.densities[t.name]) for t in eng.targets)
    assert sum(int(m.sum()) for m in eng.masks.values()) == want
    assert set(found) == set(names)
    for t in eng.targets:  # signs and values of kept weights are restored
        m = eng.masks[t.name]
        assert torch.equal(t.param[m], before[t.name][m])
    with pytest.raises(ConfigError):
        eng.method.prune_at_init(eng)  # no input shape


# --- GMP --------------------------------------------------------------------------------------
def test_gmp_schedule_values():
    assert gmp_sparsity(0, 0.9, 0, 10) == 0.0
    assert gmp_sparsity(5, 0.9, 0, 10) == pytest.approx(0.9 * (1 - 0.5 ** 3))  # 0.7875
    assert gmp_sparsity(10, 0.9, 0, 10) == pytest.approx(0.9)
    assert gmp_sparsity(20, 0.9, 0, 10) == 0.9
    assert gmp_sparsity(3, 0.9, 4, 10, initial=0.2) == 0.2


def test_gmp_prunes_the_exact_scheduled_count_at_each_pruning_step():
    torch.manual_seed(0)
    lin = nn.Linear(10, 10, bias=False)
    opt = torch.optim.SGD(lin.parameters(), lr=0.01)
    eng = SparsityEngine(lin, opt, "gmp", sparsity=0.9, distribution="uniform", total_steps=12,
                         start=0, end=10, frequency=2)
    # s_t = 0.9(1 - (1 - t/10)^3): t=2: .4392 -> 43 zeros; 4: .7056 -> 70; 6: .8424 -> 84;
    # 8: .8928 -> 89; 10: .9 -> 90
    expect = {0: 100, 1: 100, 2: 57, 3: 57, 4: 30, 5: 30, 6: 16, 7: 16, 8: 11, 9: 11, 10: 10, 11: 10}
    prev = eng.masks["weight"].clone()
    for t in range(12):
        g = torch.randn(10, 10)
        lin.weight.grad = g.clone()
        # pruning runs after the SGD step (masked gradient), on the updated magnitudes
        updated = (lin.weight.detach() - 0.01 * g * prev).abs()
        eng.step_optimizer()
        m = eng.masks["weight"]
        assert int(m.sum()) == expect[t], t
        assert not bool((m & ~prev).any())  # nested: pruning never regrows
        if (prev & ~m).any():
            assert updated[m].min() >= updated[prev & ~m].max()
        prev = m.clone()
    assert eng.method.ticket_step(eng) == 11
    assert [h["step"] for h in eng.method.history] == [0, 2, 4, 6, 8, 10]


def test_gmp_keeps_larger_magnitudes_per_layer_and_globally():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    with torch.no_grad():
        model[0].weight.mul_(10)  # layer 0 is much larger: global pruning takes from layer 1
    for scope in ("layer", "global"):
        net = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
        net.load_state_dict(model.state_dict())
        eng = SparsityEngine(net, None, "gmp", sparsity=0.9, distribution="uniform", dense_first=False,
                             total_steps=4, start=0, end=1, frequency=1, scope=scope)
        eng.after_backward(), eng.after_step()
        eng.after_backward(), eng.after_step()  # step 1 = end: final counts
        counts = [int(eng.masks[n].sum()) for n in ("0.weight", "1.weight")]
        assert sum(counts) == 14  # 64 - floor(0.9·64) = 7 per layer
        if scope == "layer":
            assert counts == [7, 7]
        else:  # one threshold: the 10x larger layer keeps more, and kept >= pruned everywhere
            assert counts[0] > counts[1]
            w = {n: model.state_dict()[n].abs() for n in eng.masks}
            kept = torch.cat([w[n][eng.masks[n]] for n in w])
            pruned = torch.cat([w[n][~eng.masks[n]] for n in w])
            assert kept.min() >= pruned.max()


def test_gmp_options_are_checked():
    lin = nn.Linear(4, 4)
    with pytest.raises(ConfigError):
        SparsityEngine(lin, None, "gmp", sparsity=0.5, total_steps=10, start=5, end=3)
    with pytest.raises(ConfigError):
        SparsityEngine(lin, None, "gmp", sparsity=0.5, total_steps=10, end=10)  # last step is 9
    with pytest.raises(ConfigError):
        SparsityEngine(lin, None, "gmp", sparsity=0.5, total_steps=10, scope="both")


# --- Small-Dense ------------------------------------------------------------------------------
def test_small_dense_matches_the_sparse_nonzero_count():
    from sparsetrain.config import load_config

    info = DataInfo("digits", (64,), 10)
    cfg = load_config(overrides=("model.name=lenet300", "sparsity.method=small_dense", "sparsity.sparsity=0.9",
                                 "sparsity.distribution=uniform", "sparsity.options.match=params"))
    target = sparse_nonzeros(cfg, info)
    # uniform keeps the first layer dense: 64·300 + 300 + 100 + 300·100·0.1 + 10 + 100·10·0.1
    assert target == 19200 + 300 + 100 + 10 + 3000 + 100
    adjusted = SmallDense.adjust_config(cfg, info)
    n = count_parameters(build_model("lenet300", info, width=adjusted.model.width))
    assert abs(n - target) / target < 0.02
    assert adjusted.sparsity == cfg.sparsity and adjusted.model.name == "lenet300"


def test_small_dense_flops_are_relative_to_the_full_dense_model(tmp_path):
    """The narrowed model's cost is reported against the configured (full-width) dense model."""
    from sparsetrain.config import load_config
    from sparsetrain.flops import count_flops
    from sparsetrain.experiments.run_store import run_dir_for
    from sparsetrain.train.trainer import Trainer

    cfg = load_config(overrides=("model.name=lenet300", "sparsity.method=small_dense", "sparsity.sparsity=0.9",
                                 "train.steps=3", "train.progress=off", f"out_dir={tmp_path}"))
    trainer = Trainer(cfg, run_dir_for(cfg))
    summary = trainer.run()
    full = count_flops(build_model("lenet300", trainer.info), (1, 8, 8)).dense
    narrow = count_flops(trainer.model, (1, 8, 8)).dense
    assert narrow < 0.5 * full
    assert summary["inference_flops_dense"] == full
    assert summary["inference_flops"] == narrow
    assert summary["train_flops_ratio"] == pytest.approx(narrow / full)
