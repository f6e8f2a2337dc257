"""The Trainer: one run's objects wired into the train loop, phase by phase.

It builds data, model, optimizer, schedule, engine and FLOPs meter from a RunConfig, runs every
phase of the method (resuming from ``checkpoint.pt`` in the run directory), writes
``metrics.jsonl`` and checkpoints, and returns the summary. It implements
:class:`sparsetrain.sparsity.run.RunContext`, the view multi-phase methods get of the run. The
run directory itself (naming, config.json, skipping finished runs, summary.json) belongs to
:mod:`sparsetrain.experiments.run_store`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import torch
import torch.distributed as dist

from ..config import RunConfig, run_hash, to_dict
from ..errors import CheckpointError, ConfigError, TrainingError, first_line
from ..registry import METHODS
from ..sparsity.run import Metrics, adjusted_config, check_phases, default_phases, run_hooks, task_loss
from .batches import EpochBatches, eval_batches
from .callbacks import Checkpointer, Evaluator, MetricsLog, Progress, TensorBoard
from .checkpoint import atomic_write_bytes, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .distributed import configure_backend, mask_digest, resolve_device, setup_distributed
from .evaluate import evaluate
from .flops_meter import build_flops_meter
from .init_from import init_from_run
from .loop import LoopState, train_loop
from .phases import TicketClock, phase_config, phase_starts, with_extra_loss
from .runner import build_engine, build_optimizer, build_run_model, build_scheduler, seed_everything, total_steps
from .stop import StopOnRequest
from .threads import intra_op_threads
from .trackers import build_trackers, build_user_callbacks, check_trackers

log = logging.getLogger(__name__)


class Trainer:
    """Builds everything for one run in ``run_dir`` and drives the loop (one pass per phase of
    the method). Implements :class:`~sparsetrain.sparsity.run.RunContext`."""

    def __init__(self, cfg: RunConfig, run_dir: Union[str, Path],
                 stop: Callable[[], Optional[int]] = lambda: None):
        """``stop()``: the signal number of a pending stop request, or None (see :mod:`.stop`)."""
        from ..data import default_data_root, load_dataset
        from ..models import build_model

        self.cfg, self.run_dir, self.stop = cfg, Path(run_dir), stop
        self._saved_step: Optional[int] = None
        self.user_callbacks = build_user_callbacks(cfg.train.callbacks)
        check_trackers(cfg.train.trackers)
        self.dist = setup_distributed(cfg.train.device)
        self.device = resolve_device(cfg.train.device, self.dist)
        configure_backend(self.device, cfg.train.deterministic)
        if cfg.train.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.amp=fp16 (GradScaler) needs a CUDA device; use train.amp=bf16 on the CPU")
        d = cfg.data
        self.splits = load_dataset(d.name, d.root or default_data_root(), download=d.download,
                                   val_size=d.val_size, augment=d.augment, seed=cfg.seed, **d.options)
        self.info = self.splits.info
        method_cls = METHODS.get(cfg.sparsity.method)
        self.model_cfg = adjusted_config(method_cls, cfg, self.info).model  # Small-Dense narrows it
        seed_everything(cfg.seed)
        m = self.model_cfg
        #: built "sparse" (compressed layers created compressed: sparsity.build) or "dense"
        self.model, self.built = build_run_model(cfg, m, self.info, self.device, self.dist.world)
        self.train_batches = EpochBatches(self.splits.train, d.batch_size, cfg.seed, self.dist.rank, self.dist.world)
        self.total = total_steps(cfg, self.steps_per_epoch)
        self.optimizer = build_optimizer(self.model, cfg)
        self.engine = build_engine(self.model, self.optimizer, cfg, self.total, self.device, self.dist.world)
        reference = None if m == cfg.model else build_model(cfg.model.name, self.info, width=cfg.model.width,
                                                            **cfg.model.options)
        self.flops = build_flops_meter(self.model, self.info, cfg, self.engine, self.dist.world, reference)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total, self.steps_per_epoch)
        self.wall_time, self._t0 = 0.0, time.time()
        self.evaluator: Optional[Evaluator] = None
        self.method = self.engine.method if self.engine is not None else method_cls(**cfg.sparsity.options)
        self.phases = check_phases(run_hooks(self.method).phases(self) or default_phases(self.total))
        self.phase_index = 0

    # --- the run protocol (sparsetrain.sparsity.run.RunContext) --------------------------------
    @property
    def total_steps(self) -> int:
        return self.total

    @property
    def steps_per_epoch(self) -> int:
        return self.train_batches.steps_per_epoch

    @property
    def is_main(self) -> bool:
        return self.dist.main

    @property
    def last_metrics(self) -> Metrics:
        return {} if self.evaluator is None else self.evaluator.last

    def batches(self, from_step: int) -> Iterator[Tuple[torch.Tensor, ...]]:
        return self.train_batches.from_step(from_step)

    def first_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.batches(0))
        return x.to(self.device), y.to(self.device)

    def loss_fn(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        return task_loss(output, target, self.cfg.optim.label_smoothing)

    def evaluate(self) -> Metrics:
        splits = self.evaluator.splits if self.evaluator is not None else self._eval_splits()
        return {split: evaluate(self.model, batches, self.device, self.info.task) for split, batches in splits.items()}

    def save_artifact(self, name: str, data: Union[bytes, str]) -> Optional[Path]:
        if not self.dist.main:
            return None
        path = self.run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data.encode() if isinstance(data, str) else data)
        return path

    def elapsed(self) -> float:
        """Wall time of the run so far, resumed sessions included."""
        return self.wall_time + time.time() - self._t0

    # --- checkpoints ------------------------------------------------------------------------
    def _payload(self, s: LoopState) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": s.step,
                "engine": self.engine.state_dict() if self.engine else None,
                "evaluator": self.evaluator.state_dict(), "rng": rng_state(),
                "config_hash": run_hash(self.cfg), "world_size": self.dist.world, "wall_time": self.elapsed(),
                "scaler": s.scaler.state_dict() if s.scaler is not None else None,
                "flops": self.flops.state_dict(), "phase": self.phase_index,
                "ticket": self.clock.state_dict(), "threads": self._cpu_threads(),
                "method_options": self.method.describe()}

    def _cpu_threads(self) -> Optional[int]:
        """Intra-op threads of a CPU run (its float sums, hence its numbers, depend on them)."""
        return torch.get_num_threads() if self.device.type == "cpu" else None

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
        self._saved_step = s.step

    def _agree(self, signum: Optional[int]) -> Optional[int]:
        """The stop request of any rank, on every rank (one small collective per step)."""
        if self.dist.world == 1:
            return signum
        flag = torch.tensor([signum or 0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

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
        self._check_threads(ck.get("threads"))
        self._check_method_options(ck.get("method_options"))
        return ck

    def _check_method_options(self, saved: Optional[dict]) -> None:
        """A run continues only with the method options it started with, defaults included: the
        hash covers the options as written, so a changed default (a new release's GMP schedule,
        say) would otherwise switch the method in the middle of a run."""
        now = self.method.describe()
        if saved is None:
            log.warning("checkpoint in '%s' does not record the method's options (written by an older "
                        "version); if the method's defaults changed since (docs/methods.md), delete the "
                        "run directory to start over", self.run_dir)
        elif saved != now:
            changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise CheckpointError(f"checkpoint in '{self.run_dir}' was written with other method options "
                                  f"({', '.join(f'{k}: {saved.get(k)!r} -> {now.get(k)!r}' for k in changed)}); "
                                  "the method's defaults changed since (docs/methods.md): delete the run "
                                  "directory to start over, or write the old values into sparsity.options "
                                  "for a new run")

    def _check_threads(self, saved: Optional[int]) -> None:
        """A CPU run continues only with the thread count it started with: another count sums in
        another order and gives other numbers under the same run directory."""
        now = self._cpu_threads()
        if saved is not None and now is not None and saved != now:
            raise CheckpointError(f"checkpoint in '{self.run_dir}' was written with {saved} CPU threads, this "
                                  f"process uses {now} (results would differ); continue with "
                                  f"--set train.threads={saved}")

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
                                  f"{first_line(e)}") from None
        set_rng_state(ck["rng"])
        self.clock.load_state_dict(ck.get("ticket"))
        self.wall_time = float(ck.get("wall_time", 0.0))
        metrics.truncate_after(ck["step"])
        log.info("resumed %s at step %d", self.run_dir, ck["step"])
        return int(ck["step"])

    def _eval_splits(self) -> Dict[str, Any]:
        bs, w = self.cfg.data.eval_batch_size, self.cfg.data.workers
        out = {}
        if self.splits.val is not None:
            out["val"] = eval_batches(self.splits.val, bs, w)
        out["test"] = eval_batches(self.splits.test, bs, w)
        return out

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
            self.scheduler = build_scheduler(self.optimizer, pc, phase.steps, self.steps_per_epoch)
            if self.engine is not None:
                self.engine.optimizer = self.optimizer
        state.model, state.optimizer, state.scheduler = self._wrap(self.model), self.optimizer, self.scheduler
        state.total_steps, state.loss_fn = start + phase.steps, with_extra_loss(self.loss_fn, phase.extra_loss)
        self.evaluator.phase = phase.name
        if ck is not None:
            state.step = self._resume(metrics, ck)
            if state.scaler is not None and ck.get("scaler"):
                state.scaler.load_state_dict(ck["scaler"])  # the loss scale continues too
        elif i == 0:
            metrics.truncate_after(-1)
            state.step = 0
        else:
            state.step, self.evaluator.best = start, {}
            self.save(state)

    # --- the run ----------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        """Train every phase to the end (resuming if a checkpoint exists) and return the summary.
        On CPU, ``train.threads`` > 0 holds for the run and the previous setting comes back after."""
        with intra_op_threads(self.cfg.train.threads if self.device.type == "cpu" else 0):
            return self._run()

    def _run(self) -> Dict[str, Any]:
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg, t = self.cfg, self.cfg.train
        every = t.eval_every or self.steps_per_epoch
        metrics = MetricsLog(self.run_dir / "metrics.jsonl" if self.dist.main else None)
        self.evaluator = Evaluator(self._eval_splits(), every, self.info.task, metrics)
        self.clock = TicketClock(self.method, self.engine, self.steps_per_epoch, self.elapsed,
                                 lambda: self.flops.tracker.total)
        scaler = torch.amp.GradScaler("cuda") if t.amp == "fp16" else None
        state = LoopState(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                          batches=self.train_batches, device=self.device, total_steps=self.total,
                          loss_fn=self.loss_fn, engine=self.engine, grad_clip=cfg.optim.grad_clip,
                          scaler=scaler, amp_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp))
        self._t0 = time.time()
        ck = self._read_checkpoint()
        if ck is None and t.init_from:  # a fresh run started from another run's solution
            init_from_run(self.model, self.engine, t.init_from, self.device)
        fixed = [Checkpointer(t.checkpoint_every or every, self.save),
                 Progress(t.progress if self.dist.main else "off", self.run_dir.name),
                 StopOnRequest(self.stop, self.save, lambda: self._saved_step, self.run_dir, self._agree)]
        if t.tensorboard and self.dist.main:
            fixed.append(TensorBoard(self.run_dir / "tb"))
        fixed += self.user_callbacks
        if t.trackers and self.dist.main:
            fixed += build_trackers(t.trackers, self.run_dir, to_dict(cfg), self.flops.summary)
        first = int(ck.get("phase", 0)) if ck else 0
        for i in range(first, len(self.phases)):
            self._enter_phase(i, state, ck if i == first else None, metrics)
            state.callbacks = [self.flops, *self.phases[i].callbacks, self.clock, self.evaluator, *fixed]
            train_loop(state)
            if self.phases[i].end is not None:
                self.phases[i].end(self)
        return self.summary(state)

    def summary(self, s: LoopState) -> Dict[str, Any]:
        last = self.evaluator.last
        out = {"status": "finished", "run_dir": str(self.run_dir), "config_hash": run_hash(self.cfg),
               "method": self.cfg.sparsity.method, "target_sparsity": self.cfg.sparsity.sparsity,
               "steps": s.step, "epochs": s.step / self.steps_per_epoch,
               "wall_time_s": self.elapsed(),
               "final": {split: m for split, m in last.items()}, "best": dict(self.evaluator.best),
               "world_size": self.dist.world, "threads": self._cpu_threads()}
        if self.engine is not None:
            rep = self.engine.density_report()
            out.update(achieved_density=rep["weights_density"], achieved_sparsity=1 - rep["weights_density"],
                       model_density=rep.get("model_density"),
                       pattern=self.cfg.sparsity.pattern,
                       layers={n: {k: v[k] for k in ("shape", "density", "sparsified", "pattern") if k in v}
                               for n, v in rep["layers"].items()})
            if self.cfg.sparsity.pattern_overrides:
                out["pattern_overrides"] = dict(self.cfg.sparsity.pattern_overrides)
            if self.cfg.sparsity.backend != "masked":
                out.update(backend=self.cfg.sparsity.backend, built=self.built,
                           compressed_layers=[n for n in rep["layers"] if self.engine.is_compressed(n)])
        else:
            out.update(achieved_density=1.0, achieved_sparsity=0.0, model_density=1.0)
        out.update(self.flops.summary())
        out["time_to_ticket"] = self.clock.record
        if len(self.phases) > 1:
            out["phases"] = [{"name": p.name, "steps": p.steps} for p in self.phases]
        if self.model_cfg != self.cfg.model:
            out["model_width"] = self.model_cfg.width
        out.update(run_hooks(self.method).report())
        return out
