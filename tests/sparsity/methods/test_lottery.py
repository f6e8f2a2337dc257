"""Lottery-ticket methods: IMP rounds, Gem-Miner, edge-popup, the phase mechanism, time-to-ticket
and the sanity checks (sparsity/methods/{imp,gem_miner,edge_popup,mining}.py, sparsity/run.py, train/phases.py,
experiments/sanity.py)."""
import json

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.sparsity.methods.edge_popup import TopKMask
from sparsetrain.sparsity.methods.gem_miner import GemMask, freeze_rate, freeze_schedule
from sparsetrain.sparsity.methods.imp import level_counts, magnitude_prune
from sparsetrain.sparsity.distributions import layer_densities
from sparsetrain.sparsity.topk import count_active
from sparsetrain.train.trainer import Trainer

# digits: 1437 training examples; at batch 256 an epoch is 5 steps. MLP 64-300-100-10.
BASE = ("model.name=mlp", "data.batch_size=256", "train.progress=off", "optim.lr=0.05")
EPOCH = 5


def cfg_for(tmp_path, method, sparsity, epochs, options="{}", *extra):
    return load_config(overrides=BASE + (f"sparsity.method={method}", f"sparsity.sparsity={sparsity}",
                                         f"train.epochs={epochs}", f"sparsity.options={options}",
                                         f"out_dir={tmp_path}") + extra)


# --- IMP --------------------------------------------------------------------------------------
def test_imp_level_counts_prune_a_fifth_of_the_remaining():
    assert level_counts(1000, 0.2, 0, levels=2) == [1000, 800, 640]  # 0.2, then 1 - 0.8² = 0.36
    assert level_counts(1000, 0.2, 640) == [1000, 800, 640]          # automatic: stop at the target
    assert level_counts(1000, 0.2, 700) == [1000, 800, 700]          # the last level lands exactly
    assert level_counts(10, 0.2, 0, levels=2) == [10, 8, 6]           # ceil(0.2·8) = 2


def test_imp_magnitude_prune_is_nested_and_keeps_the_largest():
    torch.manual_seed(0)
    w = {"a": torch.randn(10, 10), "b": torch.randn(20, 5) * 0.5}
    masks = {n: torch.ones_like(v, dtype=torch.bool) for n, v in w.items()}
    history = [masks]
    for keep in (160, 128):  # levels 1 and 2 of 200 weights
        new = magnitude_prune(w, history[-1], keep, "global")
        assert sum(int(m.sum()) for m in new.values()) == keep
        for n in w:
            assert not bool((new[n] & ~history[-1][n]).any())  # subset of the previous mask
        kept = torch.cat([w[n].abs()[new[n]] for n in w])
        pruned = torch.cat([w[n].abs()[history[-1][n] & ~new[n]] for n in w])
        assert kept.min() >= pruned.max()
        history.append(new)
    per_layer = magnitude_prune(w, masks, {"a": 80, "b": 80}, "layer")
    assert [int(per_layer[n].sum()) for n in ("a", "b")] == [80, 80]


def run_interrupted(cfg, run_dir, phase):
    """Run until the end hook of ``phase`` has run, then fail (a kill at a phase boundary)."""
    tr = Trainer(cfg, run_dir)
    original = tr.phases[phase].end

    def end_then_die(trainer):
        original(trainer)
        raise RuntimeError("killed")

    tr.phases[phase].end = end_then_die
    with pytest.raises(RuntimeError, match="killed"):
        tr.run()


def test_imp_rounds_rewind_record_and_resume(tmp_path):
    # sparsity 0.36 under ERK: two levels (0.8, then the exact target count ~0.64)
    cfg = cfg_for(tmp_path, "imp", 0.36, 1)
    full = Trainer(cfg, tmp_path / "full").run()
    rounds = [json.loads(ln) for ln in (tmp_path / "full" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [round(r["density"], 4) for r in rounds] == [1.0, 0.8, 0.64]
    masks = [torch.load(tmp_path / "full" / "masks" / f"round_{r}.pt") for r in range(3)]
    for older, newer in zip(masks, masks[1:]):
        assert all(not bool((newer[n] & ~older[n]).any()) for n in newer)
    steps = EPOCH
    assert full["steps"] == 3 * steps and full["time_to_ticket"]["steps"] == 2 * steps
    assert [p["name"] for p in full["phases"]] == ["round0", "round1", "round2"]
    metrics = [json.loads(ln) for ln in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in metrics] == ["round0", "round1", "round2"]
    # rewinding: the final round starts from the init weights (ticket.pt) under the last mask
    ticket = torch.load(tmp_path / "full" / "ticket.pt")
    torch.manual_seed(cfg.seed)
    from sparsetrain.models import build_model
    from sparsetrain.data.base import DataInfo
    init = build_model("mlp", DataInfo("digits", (64,), 10)).state_dict()
    for n, m in ticket["masks"].items():
        assert torch.equal(ticket["weights"][n], init[n] * m)
    # killed right after round 1's end hook: the resumed run redoes nothing and matches exactly
    run_interrupted(cfg, tmp_path / "resumed", 1)
    resumed = Trainer(cfg, tmp_path / "resumed").run()
    assert resumed["final"] == full["final"]
    again = [json.loads(ln) for ln in (tmp_path / "resumed" / "rounds.jsonl").read_text().splitlines()]
    assert [(r["round"], r["test_accuracy"]) for r in again] == [(r["round"], r["test_accuracy"]) for r in rounds]


# --- Gem-Miner --------------------------------------------------------------------------------
def test_gem_miner_freeze_schedule_and_rate():
    # E = 10 epochs, T = 3: freezes after epoch indices 3, 6, 9 -> n = floor(9/3) = 3
    assert freeze_schedule(10, 3, 5) == [20, 35, 50]
    assert freeze_schedule(3, 5, 7) == []
    assert freeze_rate(0.125, 3) == pytest.approx(0.5)  # 0.5³ = 0.125
    assert freeze_rate(0.3, 0) == 0.0


def test_gem_miner_ste_reaches_scores_of_masked_weights():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, -3.0]]))
    mod = GemMask(torch.tensor([[0.7, 0.2]]))
    parametrize.register_parametrization(lin, "weight", mod)
    out = lin(torch.tensor([[1.0, 1.0]]))
    assert out.item() == 2.0  # the second weight is masked (p = 0.2 < 0.5)
    out.sum().backward()
    # straight through: dL/dp = dL/d(w ⊙ q ⊙ r(p)) ⊙ w ⊙ q = x ⊙ w
    assert mod.scores.grad.tolist() == [[2.0, -3.0]]
    mod.flag[0, 1] = False  # a frozen-out weight gets no gradient
    mod.scores.grad = None
    lin(torch.tensor([[1.0, 1.0]])).sum().backward()
    assert mod.scores.grad.tolist() == [[2.0, 0.0]]


def test_edge_popup_keeps_exactly_k_and_passes_gradients_through():
    lin = nn.Linear(4, 2, bias=False)
    mod = TopKMask(torch.tensor([[0.1, -0.9, 0.3, 0.05], [0.8, -0.2, 0.0, 0.4]]), 3)
    assert mod.mask().reshape(-1).nonzero().squeeze(1).tolist() == [1, 4, 7]  # |s| .9, .8, .4
    parametrize.register_parametrization(lin, "weight", mod)
    lin(torch.ones(1, 4)).sum().backward()
    w = lin.parametrizations.weight.original.detach()
    # every score, selected or not, gets sign(s)·x ⊙ w (straight through the top-k, then |·|)
    assert torch.allclose(mod.scores.grad, mod.scores.detach().sign() * w)


def test_gem_miner_end_to_end_reaches_the_density_exactly(tmp_path):
    # 3 epochs of mining with T = 1: freezes after epochs 1 and 2 (the last lands on the target)
    # final_mask=top_k: exactly the target count (the default, rounded, is pinned in test_fidelity)
    cfg = cfg_for(tmp_path, "gem_miner", 0.8, 3,
                  '{"freeze_period":1,"finetune":0.134,"reg_lambda":1e-5,"final_mask":"top_k"}')
    run_dir = tmp_path / "gm"
    summary = Trainer(cfg, run_dir).run()
    info = summary["gem_miner"]
    masks = torch.load(run_dir / "ticket.pt")["masks"]
    densities = layer_densities("erk", {n: tuple(m.shape) for n, m in masks.items()}, 0.8)
    want = sum(count_active(m.numel(), densities[n]) for n, m in masks.items())
    assert info["target_count"] == want
    assert sum(int(m.sum()) for m in masks.values()) == want  # exactly, after mining
    assert summary["achieved_density"] == want / sum(m.numel() for m in masks.values())
    assert [f["freeze"] for f in info["freezes"]] == [1, 2] and info["freezes"][-1]["flagged"] == want
    assert 0 <= info["ticket"]["test_accuracy"] <= 1  # the ticket before any weight training
    assert summary["time_to_ticket"]["steps"] == 3 * EPOCH and summary["steps"] == 3 * EPOCH + 2
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["mine"] * 3 + ["finetune"]
    assert records[-1]["density"] == pytest.approx(want / sum(m.numel() for m in masks.values()))


class _Kill:
    """A loop callback that stops the run after step ``at`` (like a SIGKILL between steps)."""

    def __init__(self, at):
        self.at = at

    def on_start(self, s): ...

    def on_step_end(self, s):
        if s.step == self.at:
            raise RuntimeError("killed")

    def on_end(self, s): ...


def test_gem_miner_resumes_mid_mining_exactly(tmp_path):
    # checkpoints every 4 steps; killed at step 7 of mining (parametrized model in the checkpoint)
    cfg = cfg_for(tmp_path, "gem_miner", 0.8, 3, '{"freeze_period":1,"finetune":0.2}', "train.checkpoint_every=4")
    full = Trainer(cfg, tmp_path / "full").run()
    tr = Trainer(cfg, tmp_path / "cut")
    tr.phases[0].callbacks = [*tr.phases[0].callbacks, _Kill(7)]
    with pytest.raises(RuntimeError, match="killed"):
        tr.run()
    resumed = Trainer(cfg, tmp_path / "cut").run()
    assert resumed["final"] == full["final"]
    assert resumed["gem_miner"]["ticket"] == full["gem_miner"]["ticket"]
    a, b = (torch.load(tmp_path / d / "ticket.pt") for d in ("full", "cut"))
    assert all(torch.equal(a["masks"][n], b["masks"][n]) for n in a["masks"])


def test_imp_rewinds_to_step_k(tmp_path):
    cfg = cfg_for(tmp_path, "imp", 0.2, 1, '{"rewind_step":2,"scope":"layer"}')
    tr = Trainer(cfg, tmp_path / "k")
    summary = tr.run()
    # per layer: the ERK layer below 0.8 density needs a second level, the others stop at theirs
    assert summary["imp"]["rewind_step"] == 2 and len(summary["imp"]["rounds"]) == tr.method.levels + 1 == 3
    ticket = torch.load(tmp_path / "k" / "ticket.pt")
    rewind = tr.method.rewind  # weights after 2 SGD steps of round 0, not the init
    for n, m in ticket["masks"].items():
        assert torch.equal(ticket["weights"][n], rewind[n].cpu() * m)
    from sparsetrain.data.base import DataInfo
    from sparsetrain.models import build_model
    torch.manual_seed(cfg.seed)
    init = build_model("mlp", DataInfo("digits", (64,), 10)).state_dict()
    assert not torch.equal(rewind["layers.0.weight"].cpu(), init["layers.0.weight"])
    # per-layer scope: every layer is at its own ERK count
    densities = layer_densities("erk", {n: tuple(m.shape) for n, m in ticket["masks"].items()}, 0.2)
    assert {n: int(m.sum()) for n, m in ticket["masks"].items()} == \
        {n: count_active(m.numel(), densities[n]) for n, m in ticket["masks"].items()}


def test_cli_trains_imp_and_gem_miner_and_runs_the_sanity_checks(tmp_path, capsys):
    common = ["--out-dir", str(tmp_path), "--quiet", "--set", "model.name=mlp", "--set", "train.steps=6",
              "--set", "sparsity.sparsity=0.36"]
    assert main(["train", "--set", "sparsity.method=imp", *common]) == 0
    assert main(["train", "--set", "sparsity.method=gem_miner", "--set", "sparsity.options={\"finetune\":0.5}",
                 *common]) == 0
    capsys.readouterr()
    gm = next(tmp_path.glob("digits-mlp-gem_miner-*"))
    assert main(["sanity", str(gm), "--checks", "shuffle,invert", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| shuffle |" in table and "| invert |" in table
    result = json.loads((gm / "sanity.json").read_text())
    assert set(result["checks"]) == {"shuffle", "invert"}
    assert all(0 <= r["test_accuracy"] <= 1 for r in result["checks"].values())
    imp = next(tmp_path.glob("digits-mlp-imp-*"))
    assert main(["sanity", str(imp), "--checks", "invert,reinit", "--quiet"]) == 0
    assert "skipped" in json.loads((imp / "sanity.json").read_text())["checks"]["invert"]
