"""The run protocol (sparsity/run.py): methods talk to a run, not to the Trainer. A stub run drives
IMP's and SNIP's phase hooks; importing sparsetrain loads no training code; every registered method
declares its capability attributes."""
import io
import json
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import sparsetrain.sparsity.methods as methods_pkg
from sparsetrain.config import load_config
from sparsetrain.data.base import DataInfo
from sparsetrain.registry import METHODS
from sparsetrain.sparsity.engine import SparsityEngine
from sparsetrain.sparsity.methods.base import Method
from sparsetrain.sparsity.methods.pruning import layer_counts
from sparsetrain.sparsity.run import RunContext, RunHooks, check_phases, run_hooks, task_loss
from sparsetrain.train.trainer import Trainer


class StubRun:
    """The least a multi-phase method needs: a model, its engine, batches and a place for files."""

    def __init__(self, engine: SparsityEngine, total_steps: int = 4):
        self.engine, self.model, self.total_steps = engine, engine.model, total_steps
        self.steps_per_epoch, self.device, self.is_main = 2, torch.device("cpu"), True
        self.info = DataInfo("stub", (6,), 3)
        self.last_metrics = {"test": {"accuracy": 0.5}}
        self.files = {}
        self.generator = torch.Generator().manual_seed(0)

    def batches(self, from_step):
        while True:
            yield torch.randn(8, 6, generator=self.generator), torch.randint(0, 3, (8,), generator=self.generator)

    def first_batch(self):
        return next(self.batches(0))

    def loss_fn(self, output, target):
        return task_loss(output, target)

    def evaluate(self):
        return {"test": {"accuracy": 0.25, "loss": 1.0}}

    def save_artifact(self, name, data):
        self.files[name] = data
        return Path(name)

    def elapsed(self):
        return 1.5


def _engine(method: str, **options) -> SparsityEngine:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return SparsityEngine(model, opt, method, sparsity=0.75, total_steps=4, dense_first=False, **options)


def test_a_stub_run_drives_imp_rounds_without_the_trainer():
    engine = _engine("imp", prune_fraction=0.5)
    run = StubRun(engine)
    phases = check_phases(run_hooks(engine.method).phases(run))
    assert [p.name for p in phases] == ["round0", "round1", "round2"]
    init = {k: v.clone() for k, v in engine.model.state_dict().items()}
    counts = []
    for phase in phases:
        for hook in (phase.setup, phase.begin):
            if hook is not None:
                hook(run)
        with torch.no_grad():  # "training": move every weight, so rewinding is visible
            for p in engine.model.parameters():
                p.add_(torch.randn_like(p))
            engine.apply_masks()
        phase.end(run)
        counts.append(sum(int(m.sum()) for m in engine.masks.values()))
    target = sum(layer_counts(engine).values())  # the distribution's exact count at 75% sparsity
    assert counts == [108, 54, target] and 24 <= target < 54  # halve the 108 weights, then land on it
    rounds = [json.loads(line) for line in run.files["rounds.jsonl"].splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2] and [r["steps"] for r in rounds] == [4, 8, 12]
    assert rounds[-1]["test_accuracy"] == 0.5 and rounds[-1]["wall_time_s"] == 1.5
    ticket = torch.load(io.BytesIO(run.files["ticket.pt"]), weights_only=True)
    for name, mask in ticket["masks"].items():  # the ticket: the init weights under the final mask
        assert torch.equal(ticket["weights"][name], init[name] * mask)
    assert sorted(k for k in run.files if k.startswith("masks/")) == [f"masks/round_{r}.pt" for r in range(3)]
    assert engine.method.report()["imp"]["levels"] == 2


def test_a_stub_run_drives_snip_pruning_at_init():
    engine = _engine("snip")
    run = StubRun(engine)
    (phase,) = run_hooks(engine.method).phases(run)
    phase.begin(run)
    assert sum(int(m.sum()) for m in engine.masks.values()) == sum(layer_counts(engine).values())
    assert run_hooks(engine.method).ticket_step(engine) == 0
    assert torch.load(io.BytesIO(run.files["ticket.pt"]), weights_only=True)["scores"] is not None


def test_importing_sparsetrain_loads_no_training_code():
    code = "import sparsetrain, sys; print([m for m in sys.modules if m.startswith('sparsetrain.train')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_method_module_is_registered_without_a_list():
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(methods_pkg.__path__)}
    assert {f"sparsetrain.sparsity.methods.{m}" for m in modules} <= set(sys.modules)
    assert {"imp", "gem_miner", "snip", "rigl", "dense"} <= set(METHODS.names())


def test_every_method_declares_its_capabilities():
    for attr in ("uses_masks", "needs_data", "tracks_momentum", "starts_dense"):
        assert attr in vars(Method), attr  # declared once on the base, with a default
    for name in METHODS.names():
        cls = METHODS.get(name)
        method = cls()
        for attr in ("uses_masks", "needs_data", "tracks_momentum", "starts_dense"):
            assert isinstance(getattr(method, attr), bool), (name, attr)
        assert method.name == name  # what ticket.pt records
        hooks = run_hooks(method)
        assert isinstance(hooks, RunHooks)
        if not method.uses_masks:
            assert hooks.ticket_step(None) is None


def test_run_hooks_defaults_for_a_plain_method():
    static = METHODS.get("static")()
    assert not isinstance(static, RunHooks)
    hooks = run_hooks(static)
    assert hooks.phases(None) is None and hooks.ticket_step(None) == 0
    assert hooks.eval_metrics(None) == {} and hooks.report() == {}


def test_the_trainer_implements_the_run_protocol(tmp_path):
    tr = Trainer(load_config(overrides=("train.steps=4", "sparsity.method=snip")), tmp_path / "run")
    members = [n for n in vars(RunContext) if not n.startswith("_")]
    assert len(members) == 14 and all(hasattr(tr, n) for n in members)
    assert tr.total_steps == 4 and tr.is_main and tr.last_metrics == {}
    x, y = tr.first_batch()
    assert torch.equal(x, next(tr.batches(0))[0]) and float(tr.loss_fn(tr.model(x), y).detach()) > 0
    assert set(tr.evaluate()) == {"test"}
    path = tr.save_artifact("sub/note.txt", "hi")
    assert path == tmp_path / "run" / "sub" / "note.txt" and path.read_text() == "hi"
