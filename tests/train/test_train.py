"""Training recipe and loop: LR schedule, optimizer groups, clipping, label smoothing, the model
contract with a RigL engine attached, NaN handling, AMP/TensorBoard/progress options, LM runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.config import load_config
from sparsetrain.data.base import DataInfo
from sparsetrain.errors import ConfigError, TrainingError
from sparsetrain.models import MODELS, build_model
from sparsetrain.sparsity.engine import SparsityEngine
from sparsetrain.sparsity.topk import count_active
from sparsetrain.train.callbacks import Progress
from sparsetrain.train.checkpoint import load_checkpoint
from sparsetrain.train.evaluate import evaluate, task_loss
from sparsetrain.train.loop import LoopState, _optimizer_step
from sparsetrain.train.lr import lr_factor
from sparsetrain.train.runner import build_optimizer
from sparsetrain.train.trainer import Trainer
from helpers import run_cli as cli


# --- learning-rate schedule (pure function of the step) -------------------------------------------
def test_lr_warmup_then_cosine_by_hand():
    # warm-up 4 steps: (s+1)/4; then cosine over the remaining 8 steps: 0.5 (1 + cos(pi (s-4)/8))
    assert [lr_factor(s, 12, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 12, 4) == 1.0
    assert lr_factor(8, 12, 4) == pytest.approx(0.5)                            # half-way: cos(pi/2) = 0
    assert lr_factor(6, 12, 4) == pytest.approx(0.5 * (1 + math.sqrt(0.5)))     # cos(pi/4)
    assert lr_factor(12, 12, 4) == pytest.approx(0.0)
    assert lr_factor(0, 10) == 1.0 and lr_factor(5, 10) == pytest.approx(0.5)  # no warm-up


def test_lr_warmup_then_step_by_hand():
    kw = dict(total=100, warmup=5, schedule="step", milestones=(30, 60, 80), gamma=0.1)
    assert lr_factor(0, **kw) == pytest.approx(0.2)
    assert lr_factor(4, **kw) == pytest.approx(1.0)
    assert lr_factor(29, **kw) == 1.0
    assert lr_factor(30, **kw) == pytest.approx(0.1)
    assert lr_factor(60, **kw) == pytest.approx(0.01)
    assert lr_factor(99, **kw) == pytest.approx(0.001)
    assert lr_factor(50, 100, schedule="constant") == 1.0


# --- optimizer ------------------------------------------------------------------------------------
class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_weight_decay_skips_biases_and_norms_by_default():
    model = TinyNet()
    opt = build_optimizer(model, load_config(overrides=("optim.weight_decay=0.5",)))
    assert isinstance(opt, torch.optim.SGD)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.5 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model.conv.weight), id(model.fc.weight)}
    assert {id(p) for p in plain["params"]} == {id(model.conv.bias), id(model.bn.weight), id(model.bn.bias),
                                                 id(model.fc.bias)}
    assert decayed["momentum"] == 0.9 and decayed["nesterov"] is True
    all_decay = build_optimizer(model, load_config(overrides=("optim.decay_bias_and_norm=true",)))
    assert len(all_decay.param_groups) == 1 and all_decay.param_groups[0]["weight_decay"] == 1e-4


def test_adam_for_language_models():
    opt = build_optimizer(TinyNet(), load_config(overrides=("optim.name=adam", "optim.lr=0.002",
                                                             "optim.betas=[0.8, 0.99]")))
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == 0.002 and opt.param_groups[0]["betas"] == (0.8, 0.99)


def test_gradient_clipping_bounds_the_update():
    # plain SGD, lr 1: the update equals the (clipped) gradient, whose global norm is grad_clip
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1.0)
    model = nn.Module()
    model.p = p
    s = LoopState(model=model, optimizer=opt, scheduler=None, batches=None, device=torch.device("cpu"),
                  total_steps=1, loss_fn=None, grad_clip=0.5)
    p.grad = torch.tensor([3.0, 4.0])  # norm 5 -> scaled by 0.5/5
    _optimizer_step(s)
    assert torch.allclose(p.detach(), torch.tensor([-0.3, -0.4]))
    s.grad_clip = 0.0
    p.grad = torch.tensor([3.0, 4.0])
    _optimizer_step(s)
    assert torch.allclose(p.detach(), torch.tensor([-3.3, -4.4]))


# --- losses and evaluation ------------------------------------------------------------------------
def test_label_smoothing_by_hand():
    # 3 classes, eps = 0.3: target distribution (1 - eps) one-hot + eps/3 everywhere
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    logp = torch.log_softmax(logits, -1)[0]
    expected = -(0.7 + 0.1) * logp[0] - 0.1 * logp[1] - 0.1 * logp[2]
    assert task_loss(logits, torch.tensor([0]), 0.3).item() == pytest.approx(expected.item(), rel=1e-6)
    assert task_loss(logits, torch.tensor([0])).item() == pytest.approx(-logp[0].item(), rel=1e-6)


def test_lm_loss_flattens_positions_and_evaluation_reports_perplexity():
    logits = torch.zeros(2, 3, 5)  # uniform over 5 tokens: loss log 5, perplexity 5
    target = torch.randint(0, 5, (2, 3))
    assert task_loss(logits, target).item() == pytest.approx(math.log(5))

    class Uniform(nn.Module):
        def forward(self, x):
            return torch.zeros(*x.shape, 5)

    m = evaluate(Uniform(), [(target, target)], torch.device("cpu"), task="lm")
    assert m["perplexity"] == pytest.approx(5.0) and m["loss"] == pytest.approx(math.log(5))


# --- contract: every registered model trains with a RigL engine attached --------------------------
CIFAR = DataInfo("cifar10", (3, 32, 32), 10)
GREY = DataInfo("mnist", (1, 28, 28), 10)
LM = DataInfo("tiny_lm", (6,), 23, task="lm")


def contract_cases():
    cases = [(n, {}) for n in MODELS.names()]
    # the ImageNet stems, on a small input so the test stays fast
    return cases + [("resnet18", {"variant": "imagenet"}), ("resnet50", {"variant": "imagenet"})]


@pytest.mark.parametrize("name,options", contract_cases(), ids=lambda v: v if isinstance(v, str) else str(v or ""))
def test_contract_every_model_trains_with_rigl_engine(name, options):
    torch.manual_seed(0)
    info = LM if name.endswith("_lm") else GREY if name in ("mlp", "lenet300", "lenet5") else CIFAR
    if options.get("variant") == "imagenet":
        info = DataInfo("imagenet", (3, 32, 32), 10)
    model = build_model(name, info, width=0.125, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    total = 4  # delta_t 1, end 3: topology updates at steps 1 and 2
    engine = SparsityEngine(model, opt, "rigl", sparsity=0.8, distribution="erk", total_steps=total, delta_t=1)
    expected = {t.name: count_active(t.param.numel(), engine.densities[t.name]) for t in engine.targets}
    assert engine.targets, f"{name}: nothing to sparsify"
    for _ in range(total):
        x = torch.randint(0, info.num_classes, (3, *info.input_shape)) if info.task == "lm" else torch.randn(3, *info.input_shape)
        y = torch.randint(0, info.num_classes, (3, *info.input_shape) if info.task == "lm" else (3,))
        opt.zero_grad()
        task_loss(model(x), y).backward()
        if engine.after_backward():
            opt.step()
        engine.after_step()
    assert engine.last_update is not None and engine.last_update["step"] == 2
    for t in engine.targets:
        mask = engine.masks[t.name]
        assert int(mask.sum()) == expected[t.name], t.name            # exact count after drop/grow
        assert not t.param[~mask].any(), t.name                         # masked weights are zero
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- run-level behaviour --------------------------------------------------------------------------
def test_nan_loss_stops_cleanly_and_keeps_last_good_checkpoint(tmp_path, capsys):
    argv = ["train", "--out-dir", str(tmp_path), "--set", "train.steps=30", "--set", "train.checkpoint_every=1",
            "--set", "optim.lr=1e30", "--quiet"]
    code, out, err = cli(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith("sparsetrain: error: loss became") and err.count("\n") == 1
    (run_dir,) = tmp_path.iterdir()
    assert not (run_dir / "summary.json").exists()
    ck = load_checkpoint(run_dir / "checkpoint.pt")  # intact and loadable
    failed_at = int(err.split("at step ")[1].split(";")[0])
    assert ck["step"] == failed_at >= 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_resume_refuses_a_checkpoint_written_with_other_method_options(tmp_path, capsys):
    """The checkpoint records the method's options, defaults included; a changed default (here
    simulated by editing the record) stops a resume instead of switching the method mid-run."""
    argv = ["train", "--out-dir", str(tmp_path), "--set", "train.steps=30", "--set", "train.checkpoint_every=10",
            "--quiet"]
    assert cli(argv, capsys)[0] == 0
    (run_dir,) = tmp_path.iterdir()
    (run_dir / "summary.json").unlink()  # an unfinished run
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ck["method_options"]["method"] == "rigl" and ck["method_options"]["delta_t"] == 100
    ck["method_options"]["delta_t"] = 50
    torch.save(ck, run_dir / "checkpoint.pt")
    code, out, err = cli(["train", "--quiet", "--resume", str(run_dir)], capsys)
    assert code == 2 and err.count("\n") == 1 and "delta_t: 50 -> 100" in err


def test_amp_on_cpu_is_a_config_error(tmp_path):
    cfg = load_config(overrides=("train.amp=true", "train.device=cpu", f"out_dir={tmp_path}"))
    with pytest.raises(ConfigError, match="CUDA"):
        Trainer(cfg, tmp_path / "run")
    assert not any(tmp_path.iterdir())


def test_progress_is_plain_lines_when_not_interactive(tmp_path, capsys):
    assert Progress("auto").enabled is False and Progress("auto").plain  # pytest's stderr is not a terminal
    assert Progress("on").enabled is True and Progress("off").enabled is False and not Progress("off").plain
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--set", "train.steps=20"], capsys)
    lines = err.splitlines()  # no bar redraws: one line at the start, one at the end
    assert code == 0 and len(lines) == 2 and "step 0/20 (0%)" in lines[0] and "step 20/20 (100%)" in lines[1], err
    assert "\r" not in err
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--set", "train.steps=20", "--quiet"], capsys)
    assert code == 0 and err == ""
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--set", "train.steps=21",
                          "--set", "train.progress=on"], capsys)
    assert code == 0 and "21/21" in err  # the tqdm bar, when asked for


def test_tensorboard_option_writes_event_file(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    code, out, _ = cli(["train", "--out-dir", str(tmp_path), "--set", "train.steps=20", "--set", "train.eval_every=10",
                        "--set", "train.tensorboard=true"], capsys)
    assert code == 0
    (run_dir,) = tmp_path.iterdir()
    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("test_accuracy")] == [10, 20]
    assert {"lr", "density", "train_loss", "drop_fraction"} <= set(acc.Tags()["scalars"])


def write_tiny_wikitext(root: Path) -> None:
    words = "the cat sat on the mat and the dog ate the hat".split()
    folder = root / "wikitext-2"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 400), ("valid", 80), ("test", 80)):
        lines = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (10,), generator=g)) for _ in range(n // 10)]
        (folder / f"wiki.{split}.tokens").write_text("\n".join(lines) + "\n")


def test_language_model_run_with_adam_reports_perplexity(tmp_path, capsys):
    # the PTB path on a WikiText-format corpus small enough for a unit test (same reader, same LM)
    write_tiny_wikitext(tmp_path / "data")
    code, out, err = cli(["train", "--out-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"),
                          "--set", "data.name=wikitext2", "--set", "model.name=lstm_lm", "--set", "optim.name=adam",
                          "--set", "optim.lr=0.01", "--set", "train.steps=30", "--set", "data.batch_size=4",
                          "--set", "model.width=0.25", "--set", "optim.grad_clip=0.25",
                          "--set", 'data.options={"seq_len": 8}', "--set", 'sparsity.options={"delta_t": 10}'], capsys)
    assert code == 0, err
    assert "test perplexity:" in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = records[0], records[-1]
    assert {"val_perplexity", "test_perplexity"} <= set(last)
    assert last["test_perplexity"] == pytest.approx(math.exp(last["test_loss"]))
    assert last["test_perplexity"] < first["test_perplexity"]  # it learns
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best"]["test_perplexity"] == min(r["test_perplexity"] for r in records)


def test_threads_automatic_rule_is_the_callers_and_explicit_wins():
    from sparsetrain.train.threads import default_threads, threads_for

    small = load_config(overrides=("train.device=cpu",))  # the default MLP on digits: far below 1M parameters
    assert threads_for(small) == 1
    big = load_config(overrides=("model.name=resnet18", "data.name=cifar10", "train.device=cpu"))  # ~11M
    assert threads_for(big) == 0  # left to the process (or the sweep worker)
    assert threads_for(load_config(overrides=("train.threads=3",))) == 3
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with default_threads(small):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_run_sets_threads_only_when_asked_and_restores_them(tmp_path, monkeypatch):
    from sparsetrain.experiments.run_store import train_run
    from sparsetrain.train import trainer as trainer_module

    seen, real_loop = [], trainer_module.train_loop

    def spying_loop(state):
        seen.append(torch.get_num_threads())
        return real_loop(state)

    monkeypatch.setattr(trainer_module, "train_loop", spying_loop)
    before = torch.get_num_threads()

    def run(name, *overrides):
        train_run(load_config(overrides=("train.steps=3", f"out_dir={tmp_path / name}", *overrides)))

    try:
        torch.set_num_threads(1)
        run("a", "train.threads=2")
        assert seen == [2] and torch.get_num_threads() == 1  # put back after the run
        run("b", "train.threads=0")
        assert seen == [2, 1] and torch.get_num_threads() == 1  # 0: the process's setting, untouched
        with pytest.raises(TrainingError):
            run("c", "train.threads=2", "optim.lr=1e30")
        assert seen[-1] == 2 and torch.get_num_threads() == 1  # restored on error too
    finally:
        torch.set_num_threads(before)


def test_threads_key_is_validated_and_not_hashed():
    from sparsetrain.config import load_config, run_hash

    with pytest.raises(ConfigError, match="train.threads"):
        load_config(overrides=("train.threads=-1",))
    assert run_hash(load_config(overrides=("train.threads=4",))) == run_hash(load_config())
