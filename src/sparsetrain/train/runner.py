"""From a RunConfig to a finished run directory: data, model, engine, optimizer, loop, summary.

Run directory (``out_dir/<data>-<model>-<method>-s<sparsity>-<hash>``):
config.json, checkpoint.pt, metrics.jsonl, summary.json (and tb/ with TensorBoard). A run
with summary.json is finished and is not run again; one with checkpoint.pt resumes from it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist

from ..config import RunConfig, from_dict, run_hash, to_dict, validate
from ..errors import CheckpointError, ConfigError, TrainingError
from ..registry import METHODS
from ..sparsity.engine import SparsityEngine
from .batches import EpochBatches, eval_batches
from .callbacks import Checkpointer, Evaluator, MetricsLog, Progress, TensorBoard
from .checkpoint import atomic_write_text, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .evaluate import task_loss
from .flops_meter import build_flops_meter
from .loop import LoopState, train_loop
from .phases import TicketClock, check_phases, default_phases, phase_config, phase_starts, with_extra_loss
from .lr import lr_factor

log = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; use NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and device_name != "cpu"
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, d: Dist) -> torch.device:
    """``auto``: CUDA when available (this process's local GPU under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name} but CUDA is not available; use train.device=cpu")
        if name == "cuda":
            name = f"cuda:{d.local_rank}"
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device '{name}' is not a device; use auto, cpu or cuda[:N]") from None


def configure_backend(device: torch.device, deterministic: bool) -> None:
    """Bind this process to its GPU (collectives need it) and pick cuDNN's deterministic kernels
    when ``train.deterministic``; CPU kernels here are deterministic already."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


#: below this many parameters the automatic thread choice (train.threads = 0) is one thread
SMALL_MODEL_PARAMS = 1_000_000


def configure_threads(threads: int, model: torch.nn.Module) -> None:
    """``train.threads`` > 0 sets the CPU intra-op threads; 0 picks one for small models and
    leaves PyTorch's (or the sweep worker's) setting otherwise."""
    if threads > 0:
        torch.set_num_threads(threads)
    elif sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)


def seed_everything(seed: int) -> None:
    """Seed torch, Python's ``random`` and NumPy: model init and any user transform are reproducible
    (the checkpoint restores all three on resume)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def mask_digest(masks: Dict[str, torch.Tensor]) -> str:
    """Short SHA-256 of every mask in name order: equal digests mean identical masks."""
    h = hashlib.sha256()
    for name in sorted(masks):
        h.update(name.encode())
        h.update(masks[name].detach().to("cpu", torch.uint8).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_dir_for(cfg: RunConfig) -> Path:
    s = cfg.sparsity
    return Path(cfg.out_dir) / f"{cfg.data.name}-{cfg.model.name}-{s.method}-s{s.sparsity:g}-{run_hash(cfg)}"


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or Adam/AdamW; biases and norm parameters (ndim < 2) get no
    weight decay unless ``optim.decay_bias_and_norm``."""
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.decay_bias_and_norm:
        groups = [{"params": params, "weight_decay": o.weight_decay}]
    else:
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.lr, betas=tuple(o.betas))


def build_scheduler(optimizer, cfg: RunConfig, total: int, steps_per_epoch: int):
    o, m = cfg.optim, cfg.train.multiplier
    warmup = int(round(o.warmup_epochs * steps_per_epoch * m))
    miles = [int(round(e * steps_per_epoch * m)) for e in o.milestones]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, o.schedule, miles, o.gamma))


def total_steps(cfg: RunConfig, steps_per_epoch: int) -> int:
    base = cfg.train.steps if cfg.train.steps > 0 else int(round(cfg.train.epochs * steps_per_epoch))
    return max(1, int(round(base * cfg.train.multiplier)))


def build_engine(model, optimizer, cfg: RunConfig, total: int, device: torch.device = torch.device("cpu"),
                 world: int = 1) -> Optional[SparsityEngine]:
    """The method's engine, or None for methods that train without masks (dense baselines).
    Method options given in steps (start, end) scale with the training multiplier.
    ``sparsity.backend = "sparse"`` builds the truly sparse CPU engine instead."""
    s = cfg.sparsity
    if not getattr(METHODS.get(s.method), "uses_masks", True):
        if s.backend != "masked":
            raise ConfigError(f"method '{s.method}' trains without masks; remove sparsity.backend={s.backend}")
        return None
    opts = dict(s.options)
    for key in ("start", "end"):
        if opts.get(key) is not None:
            opts[key] = int(round(opts[key] * cfg.train.multiplier))
    common = dict(sparsity=s.sparsity, distribution=s.distribution, total_steps=total, dense_first=s.dense_first,
                  dense_last=s.dense_last, include=list(s.include) or None, exclude=list(s.exclude) or None,
                  custom=s.custom, erk_power=s.erk_power, seed=cfg.seed)
    if s.backend == "masked":
        if s.backend_options:
            raise ConfigError("sparsity.backend_options apply to sparsity.backend=sparse only; remove them")
        return SparsityEngine(model, optimizer, s.method, **common, **opts)
    from ..sparsity.backend import build_sparse_engine
    return build_sparse_engine(model, optimizer, s.method, device=device, world=world,
                               backend_options=s.backend_options, **common, **opts)


def load_run_config(run_dir: Path) -> RunConfig:
    """The config saved in a run directory (for --resume)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"'{run_dir}' is not a run directory (no config.json); pass the directory "
                              "that `sparsetrain train` created")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"'{path}' is corrupt; delete the run directory to start over") from None
    data.pop("_hash", None)
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    return cfg


class Trainer:
    """Builds everything for one run and drives the loop (one phase per method phase)."""

    def __init__(self, cfg: RunConfig, run_dir: Optional[Path] = None):
        from ..data import default_data_root, load_dataset
        from ..models import build_model

        self.cfg = cfg
        self.dist = setup_distributed(cfg.train.device)
        self.device = resolve_device(cfg.train.device, self.dist)
        configure_backend(self.device, cfg.train.deterministic)
        if cfg.train.amp and self.device.type != "cuda":
            raise ConfigError("train.amp needs a CUDA device; set train.amp=false on CPU")
        d = cfg.data
        self.splits = load_dataset(d.name, d.root or default_data_root(), download=d.download,
                                   val_size=d.val_size, augment=d.augment, seed=cfg.seed, **d.options)
        self.info = self.splits.info
        method_cls = METHODS.get(cfg.sparsity.method)
        self.model_cfg = method_cls.adjust_config(cfg, self.info).model  # Small-Dense narrows it
        seed_everything(cfg.seed)
        m = self.model_cfg
        self.model = build_model(m.name, self.info, width=m.width, **m.options)
        self.model.to(self.device)
        if self.device.type == "cpu":
            configure_threads(cfg.train.threads, self.model)
        self.batches = EpochBatches(self.splits.train, d.batch_size, cfg.seed, self.dist.rank, self.dist.world)
        self.total = total_steps(cfg, self.batches.steps_per_epoch)
        self.optimizer = build_optimizer(self.model, cfg)
        self.engine = build_engine(self.model, self.optimizer, cfg, self.total, self.device, self.dist.world)
        reference = None if m == cfg.model else build_model(cfg.model.name, self.info, width=cfg.model.width,
                                                            **cfg.model.options)
        self.flops = build_flops_meter(self.model, self.info, cfg, self.engine, self.dist.world, reference)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total, self.batches.steps_per_epoch)
        self.run_dir = Path(run_dir) if run_dir else run_dir_for(cfg)
        self.wall_time = 0.0
        self.loss_fn = lambda out, y: task_loss(out, y, cfg.optim.label_smoothing)
        self.method = self.engine.method if self.engine is not None else method_cls(**cfg.sparsity.options)
        self.phases = check_phases(self.method.phases(self) or default_phases(self.total))
        self.phase_index = 0

    # --- run directory ----------------------------------------------------------------------
    def _prepare_dir(self) -> None:
        if not self.dist.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.run_dir / "config.json"
        want = {**to_dict(self.cfg), "_hash": run_hash(self.cfg)}
        if cfg_path.exists():
            have = json.loads(cfg_path.read_text())
            if have.get("_hash") != want["_hash"]:
                raise CheckpointError(f"run directory '{self.run_dir}' holds a different configuration; "
                                      "choose another out_dir or delete it")
        else:
            atomic_write_text(cfg_path, json.dumps(want, indent=2))

    def _payload(self, s: LoopState) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": s.step,
                "engine": self.engine.state_dict() if self.engine else None,
                "evaluator": self.evaluator.state_dict(), "rng": rng_state(),
                "config_hash": run_hash(self.cfg), "world_size": self.dist.world, "wall_time": self.wall_time + time.time() - self._t0,
                "scaler": s.scaler.state_dict() if s.scaler is not None else None,
                "flops": self.flops.state_dict(), "phase": self.phase_index,
                "ticket": self.clock.state_dict()}

    def _rank_digests(self) -> Optional[list]:
        """Every rank's mask digest (a collective: all ranks save at the same steps). Ranks with
        different masks would train different networks under one DDP model, so that stops the run."""
        if self.engine is None or self.dist.world == 1:
            return None
        digests = [None] * self.dist.world
        dist.all_gather_object(digests, mask_digest(self.engine.masks))
        if len(set(digests)) > 1:
            raise TrainingError(f"ranks hold different masks (digests {digests}); this is a bug, please "
                                "report it with the run's config.json")
        return digests

    def save(self, s: LoopState) -> None:
        digests = self._rank_digests()
        if self.dist.main:
            save_checkpoint(self.run_dir / "checkpoint.pt", {**self._payload(s), "rank_mask_digests": digests})

    def _read_checkpoint(self) -> Optional[Dict[str, Any]]:
        path = self.run_dir / "checkpoint.pt"
        if not path.exists():
            return None
        ck = load_checkpoint(path, map_location=self.device)
        if ck.get("config_hash") != run_hash(self.cfg):
            raise CheckpointError(f"checkpoint in '{self.run_dir}' belongs to another configuration; "
                                  "delete it or use another out_dir")
        if ck.get("world_size", 1) != self.dist.world:
            raise CheckpointError(f"checkpoint in '{self.run_dir}' was written by {ck.get('world_size', 1)} "
                                  f"process(es), this run has {self.dist.world}; resume with the same "
                                  "torchrun --nproc_per_node")
        if not 0 <= int(ck.get("phase", 0)) < len(self.phases):
            raise CheckpointError(f"checkpoint in '{self.run_dir}' is in phase {ck.get('phase')}, but the "
                                  f"method has {len(self.phases)}; delete it or use another out_dir")
        return ck

    def _resume(self, metrics: MetricsLog, ck: Dict[str, Any]) -> int:
        """Load ``ck`` (read by :meth:`_read_checkpoint`) into the current phase's objects."""
        try:
            if hasattr(self.engine, "restore_structure"):
                # the sparse backend compresses layers during a dense-to-sparse run (GMP): give the
                # fresh model the checkpoint's layer types before loading its weights
                self.engine.restore_structure(ck["engine"])
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
            if self.engine is not None:
                self.engine.load_state_dict(ck["engine"])
            self.evaluator.load_state_dict(ck["evaluator"])
            if ck.get("flops") is not None:
                self.flops.load_state_dict(ck["flops"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"checkpoint in '{self.run_dir}' does not fit this model: "
                                  f"{str(e).splitlines()[0][:160]}") from None
        set_rng_state(ck["rng"])
        self.clock.load_state_dict(ck.get("ticket"))
        self.wall_time = float(ck.get("wall_time", 0.0))
        metrics.truncate_after(ck["step"])
        log.info("resumed %s at step %d", self.run_dir, ck["step"])
        return int(ck["step"])

    # --- the run ----------------------------------------------------------------------------
    def _eval_splits(self) -> Dict[str, Any]:
        bs, w = self.cfg.data.eval_batch_size, self.cfg.data.workers
        out = {}
        if self.splits.val is not None:
            out["val"] = eval_batches(self.splits.val, bs, w)
        out["test"] = eval_batches(self.splits.test, bs, w)
        return out

    def elapsed(self) -> float:
        """Wall time of the run so far, resumed sessions included."""
        return self.wall_time + time.time() - self._t0

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.dist.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _enter_phase(self, i: int, state: LoopState, ck: Optional[Dict[str, Any]], metrics: MetricsLog) -> None:
        """Phase ``i``: its hooks, optimizer and schedule; then load ``ck``, or (a fresh start of a
        later phase) checkpoint the boundary so the ``begin`` transition never runs twice."""
        phase, start = self.phases[i], phase_starts(self.phases)[i]
        self.phase_index = i
        self.flops.refresh()  # count on the plain model, before a setup hook reparametrizes it
        if phase.setup is not None:
            phase.setup(self)
        if ck is None and phase.begin is not None:
            phase.begin(self)
        if phase.reset_optimizer:
            pc = phase_config(self.cfg, phase)
            self.optimizer = build_optimizer(self.model, pc)
            self.scheduler = build_scheduler(self.optimizer, pc, phase.steps, self.batches.steps_per_epoch)
            if self.engine is not None:
                self.engine.optimizer = self.optimizer
        state.model, state.optimizer, state.scheduler = self._wrap(self.model), self.optimizer, self.scheduler
        state.total_steps, state.loss_fn = start + phase.steps, with_extra_loss(self.loss_fn, phase.extra_loss)
        self.evaluator.phase = phase.name
        if ck is not None:
            state.step = self._resume(metrics, ck)
        elif i == 0:
            metrics.truncate_after(-1)
            state.step = 0
        else:
            state.step, self.evaluator.best = start, {}
            self.save(state)

    def run(self) -> Dict[str, Any]:
        """Train every phase to the end (resuming if a checkpoint exists); write and return
        summary.json."""
        summary_path = self.run_dir / "summary.json"
        if summary_path.exists():
            return json.loads(summary_path.read_text())
        self._prepare_dir()
        cfg, t = self.cfg, self.cfg.train
        every = t.eval_every or self.batches.steps_per_epoch
        metrics = MetricsLog(self.run_dir / "metrics.jsonl" if self.dist.main else None)
        self.evaluator = Evaluator(self._eval_splits(), every, self.info.task, metrics)
        self.clock = TicketClock(self.method, self.engine, self.batches.steps_per_epoch, self.elapsed,
                                 lambda: self.flops.tracker.total)
        scaler = torch.amp.GradScaler("cuda") if t.amp else None
        state = LoopState(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                          batches=self.batches, device=self.device, total_steps=self.total,
                          loss_fn=self.loss_fn, engine=self.engine, grad_clip=cfg.optim.grad_clip,
                          scaler=scaler, amp_dtype=torch.float16 if t.amp else None)
        self._t0 = time.time()
        ck = self._read_checkpoint()
        if ck is None and t.init_from:  # a fresh run started from another run's solution
            from ..experiments.init_from import init_from_run
            init_from_run(self.model, self.engine, t.init_from, self.device)
        fixed = [Checkpointer(t.checkpoint_every or every, self.save),
                 Progress(t.progress if self.dist.main else "off", self.run_dir.name)]
        if t.tensorboard and self.dist.main:
            fixed.append(TensorBoard(self.run_dir / "tb"))
        first = int(ck.get("phase", 0)) if ck else 0
        for i in range(first, len(self.phases)):
            self._enter_phase(i, state, ck if i == first else None, metrics)
            state.callbacks = [self.flops, *self.phases[i].callbacks, self.clock, self.evaluator, *fixed]
            train_loop(state)
            if self.phases[i].end is not None:
                self.phases[i].end(self)
        summary = self.summary(state)
        if self.dist.main:
            atomic_write_text(summary_path, json.dumps(summary, indent=2))
        return summary

    def summary(self, s: LoopState) -> Dict[str, Any]:
        last = self.evaluator.last
        out = {"status": "finished", "run_dir": str(self.run_dir), "config_hash": run_hash(self.cfg),
               "method": self.cfg.sparsity.method, "target_sparsity": self.cfg.sparsity.sparsity,
               "steps": s.step, "epochs": s.step / self.batches.steps_per_epoch,
               "wall_time_s": self.wall_time + time.time() - self._t0,
               "final": {split: m for split, m in last.items()}, "best": dict(self.evaluator.best),
               "world_size": self.dist.world}
        if self.engine is not None:
            rep = self.engine.density_report()
            out.update(achieved_density=rep["weights_density"], achieved_sparsity=1 - rep["weights_density"],
                       model_density=rep.get("model_density"),
                       layers={n: {k: v[k] for k in ("shape", "density", "sparsified")} for n, v in rep["layers"].items()})
            if self.cfg.sparsity.backend != "masked":
                out.update(backend=self.cfg.sparsity.backend,
                           compressed_layers=[n for n in rep["layers"] if self.engine.is_compressed(n)])
        else:
            out.update(achieved_density=1.0, achieved_sparsity=0.0, model_density=1.0)
        out.update(self.flops.summary())
        out["time_to_ticket"] = self.clock.record
        if len(self.phases) > 1:
            out["phases"] = [{"name": p.name, "steps": p.steps} for p in self.phases]
        if self.model_cfg != self.cfg.model:
            out["model_width"] = self.model_cfg.width
        out.update(self.method.report())
        return out


def train_run(cfg: RunConfig, run_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Build and run (or finish, or skip if finished) the run for ``cfg``."""
    done = Path(run_dir or run_dir_for(cfg)) / "summary.json"
    if done.exists():
        log.info("%s is finished; not running it again", done.parent)
        return json.loads(done.read_text())
    return Trainer(cfg, run_dir).run()
