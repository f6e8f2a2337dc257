"""The runs behind docs/results.md that need more compute than a laptop: one priority-ordered queue.

    PYTHONPATH=src python benchmarks/repro_runs.py --out runs/repro --blocks core_full,lottery --jobs 14
    PYTHONPATH=src python benchmarks/repro_runs.py --out runs/repro --blocks ptb --jobs 4 --device cuda
    PYTHONPATH=src python benchmarks/repro_runs.py --list --blocks core_full      # print the queue only

Blocks (each an ordinary set of ``sparsetrain train`` runs, written to ``OUT/<block>/``):

* ``core_full``: MNIST LeNet-300-100 at full scale (the config's 20 epochs), 5 seeds, 90/95/98 %:
  Static, SET, RigL (uniform), RigL (ERK), GMP, Dense (one claim's runs together);
* ``rigl5x``: RigL 5x (100 epochs) in the same setting;
* ``ptb``: word-level PTB LSTM (configs/ptb_lstm.toml, ``--ptb-scale`` of its 4 epochs, evaluated at the
  end only), 3 seeds:
  Dense, and Static, SET, RigL, SNFS, GMP at 75 % and 90 %;
* ``lottery``: MNIST LeNet-300-100 at 90/95/98 %, 3 seeds, the recipe of
  benchmarks/lottery_mnist.py (3 epochs per weight training): random (static), SNIP, GraSP,
  SynFlow, IMP, edge-popup, Gem-Miner (and Dense per seed); the sanity checks (shuffle, reinit,
  invert) follow each run of a method with a mask to check (``lottery_imp``: its IMP runs alone,
  ``lottery_rest``: the others);
* ``fashion_lr``: Fashion-MNIST LeNet-5 (configs/fashion_lenet5.toml at ``--fashion-scale``)
  at 95/98 % with 10,000 training images held out for validation (``data.val_size``):
  Static, SET, RigL, GMP and Dense over the learning rates ``--lrs`` (no warm-up), 5 seeds, seed
  by seed. The learning rate is chosen per setting on validation accuracy (benchmarks/results_report.py
  does that). ``fashion_lr_small`` (RigL and Static at 98 %) and ``fashion_lr_more`` (RigL, Static
  and SET at 95 %, SET at 98 %) are the parts of it a 2-core machine affords (``--fashion-seeds``).

Jobs go to ``--jobs`` worker processes with one torch thread each, in queue order (most
important first; within a block, long runs first). A run is complete when its summary.json is
there (and, for lottery runs, its sanity.json); rerunning skips complete runs and resumes
checkpointed ones, so a run cut off by a time limit is simply continued by the next invocation.
``OUT/machine_<device>.json`` records the machine (CPU count, torch, GPU name).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

CORE_SPARSITIES = (0.9, 0.95, 0.98)
CORE_SEEDS = 5
PTB_SPARSITIES = (0.75, 0.9)
PTB_METHODS = ("static", "set", "rigl", "snfs", "gmp")
PTB_SEEDS = 3
LOTTERY_SPARSITIES = (0.9, 0.95, 0.98)
LOTTERY_SEEDS = 3
LOTTERY_METHODS = ("IMP", "Gem-Miner", "edge-popup", "SNIP", "GraSP", "SynFlow", "random (static)", "dense")
LOTTERY_SANITY = ("IMP", "Gem-Miner", "edge-popup", "SNIP", "GraSP", "SynFlow", "random (static)")
LOTTERY_EPOCHS = 3
FASHION_SPARSITIES = (0.95, 0.98)
FASHION_METHODS = ("static", "set", "rigl", "gmp")
FASHION_SEEDS = 5
FASHION_VAL = 10000
LRS = (0.3, 0.1, 0.03)  # 0.03 and 0.01 collapsed at 98 % like 0.1 did (docs/results.md §4)
SANITY_CHECKS = ("shuffle", "reinit", "invert")


@dataclasses.dataclass
class Job:
    """One run: its block, a label, its config and the sanity checks that follow it."""

    block: str
    label: str
    cfg: Any
    checks: Tuple[str, ...] = ()
    cost: float = 1.0  # relative length, to start long runs first


def _with(cfg, *overrides: str):
    from sparsetrain.config import load_config, to_dict
    return load_config(base=to_dict(cfg), overrides=tuple(overrides))


def core_jobs(out: Path, data: Path, labels: Sequence[str]) -> List[Job]:
    import results as R

    plan = R.Plan(scale=1.0, seeds=CORE_SEEDS, sparsities=CORE_SPARSITIES)
    st = R.SETTINGS["mnist_lenet300"]
    cfg = R.base_config(st, plan, out / "core_full", data)
    variants = [v for v in R.main_variants(cfg, plan, {}) if v["label"] in labels]
    jobs = []
    for v in variants:
        one = R.spec_for(cfg, [v], CORE_SEEDS)
        from sparsetrain.experiments.sweep import expand
        for c in expand(one):
            jobs.append(Job("core_full", v["label"], c, cost=c.train.multiplier))
    order = {lab: i for i, lab in enumerate(labels)}
    jobs.sort(key=lambda j: order[j.label])  # one claim's runs (every sparsity and seed) together
    return jobs


def ptb_jobs(out: Path, data: Path, scale: float) -> List[Job]:
    import results as R
    from sparsetrain.experiments.sweep import expand

    plan = R.Plan(scale=scale)
    cfg = _with(R.base_config(R.PTB, plan, out / "ptb", data), "train.eval_every=0")  # evaluate at the end only
    points = [R._variant("dense", "dense", 0.0)]
    points += [R._variant(m, m, s) for s in PTB_SPARSITIES for m in PTB_METHODS]
    jobs = []
    for seed in range(PTB_SEEDS):  # seeds outermost: 1 complete seed first, then the next
        for p in points:
            for c in expand(R.spec_for(cfg, [p], 1)):
                jobs.append(Job("ptb", p["label"], _with(c, f"seed={seed}")))
    return jobs


def lottery_jobs(out: Path, data: Path, names: Sequence[str] = LOTTERY_METHODS,
                 seeds: Sequence[int] = tuple(range(LOTTERY_SEEDS)),
                 sparsities: Sequence[float] = LOTTERY_SPARSITIES) -> List[Job]:
    import lottery_mnist as L

    jobs = []
    for seed in seeds:
        for s in sparsities:
            args = argparse.Namespace(dataset="mnist", data_dir=str(data), sparsity=s,
                                      out_dir=str(out / "lottery"), seed=seed)
            table = L.methods(LOTTERY_EPOCHS)
            for name in names:
                if name == "dense" and s != sparsities[0]:
                    continue  # dense does not depend on the sparsity
                method, extra = table[name]
                cfg = L.config_of(args, method, extra)
                cost = 15.0 if name == "IMP" else 2.0 if name in ("Gem-Miner", "edge-popup") else 1.0
                jobs.append(Job("lottery", name, cfg, SANITY_CHECKS if name in LOTTERY_SANITY else (), cost))
    jobs.sort(key=lambda j: -j.cost)  # IMP (many rounds) first
    return jobs


def fashion_jobs(out: Path, data: Path, scale: float, lrs: Sequence[float],
                 methods: Sequence[str] = FASHION_METHODS, sparsities: Sequence[float] = FASHION_SPARSITIES,
                 seeds: int = FASHION_SEEDS, dense: bool = True, extra: Sequence[str] = ()) -> List[Job]:
    import results as R
    from sparsetrain.experiments.sweep import expand

    plan = R.Plan(scale=scale, sparsities=tuple(sparsities))
    cfg = R.base_config(R.SETTINGS["fashion_lenet5"], plan, out / "fashion_lr", data)
    cfg = _with(cfg, f"data.val_size={FASHION_VAL}", "train.eval_every=0", *extra)  # evaluate once per epoch
    points = [R._variant("dense", "dense", 0.0)] if dense else []
    points += [R._variant(m, m, s) for s in sparsities for m in methods]
    jobs = []
    for seed in range(seeds):
        for lr in lrs:
            for p in points:
                for c in expand(R.spec_for(cfg, [p], 1)):
                    jobs.append(Job("fashion_lr", f"{p['label']}_lr{lr:g}", _with(c, f"seed={seed}", f"optim.lr={lr}")))
    return jobs


def build_queue(blocks: Sequence[str], out: Path, data: Path, args) -> List[Job]:
    makers = {
        "core_full": lambda: core_jobs(out, data, ("static", "set", "rigl", "rigl_erk", "gmp", "dense")),
        "rigl5x": lambda: core_jobs(out, data, ("rigl_5x",)),
        "ptb": lambda: ptb_jobs(out, data, args.ptb_scale),
        "lottery": lambda: lottery_jobs(out, data, seeds=args.lottery_seeds, sparsities=args.lottery_sparsities),
        "lottery_imp": lambda: lottery_jobs(out, data, ("IMP",)),
        "lottery_rest": lambda: lottery_jobs(out, data, [m for m in LOTTERY_METHODS if m != "IMP"]),
        "fashion_lr": lambda: fashion_jobs(out, data, args.fashion_scale, args.lrs),
        # the part of fashion_lr that a 2-core machine affords: RigL and Static at 98 %
        "fashion_lr_small": lambda: fashion_jobs(out, data, args.fashion_scale, args.lrs, ("rigl", "static"),
                                                 (0.98,), seeds=args.fashion_seeds, dense=False),
        # the rest that a 2-core machine affords: RigL, Static and SET at 95 %, SET at 98 %
        "fashion_lr_more": lambda: fashion_jobs(out, data, args.fashion_scale, args.lrs, ("rigl", "static", "set"),
                                                (0.95,), seeds=args.fashion_seeds, dense=False)
        + fashion_jobs(out, data, args.fashion_scale, args.lrs, ("set",), (0.98,), seeds=args.fashion_seeds,
                       dense=False),
        # the same with the 10-way output layer kept dense (at 98 % uniform it keeps 17 weights)
        "fashion_dense_last": lambda: fashion_jobs(out, data, args.fashion_scale, args.lrs, ("rigl", "static"),
                                                   (0.98,), seeds=args.fashion_seeds, dense=False,
                                                   extra=("sparsity.dense_last=true",)),
    }
    unknown = [b for b in blocks if b not in makers]
    if unknown:
        raise SystemExit(f"unknown block(s) {unknown}; choose from {', '.join(makers)}")
    jobs: List[Job] = []
    for b in blocks:
        jobs += makers[b]()
    return jobs


def complete(job: Job) -> bool:
    from sparsetrain.experiments.run_store import finished_summary, run_dir_for
    d = run_dir_for(job.cfg)
    return finished_summary(d) is not None and (not job.checks or (d / "sanity.json").is_file())


#: the small files of a run directory that the record needs (no checkpoints, masks or tickets)
SMALL = ("config.json", "summary.json", "metrics.jsonl", "sanity.json", "rounds.jsonl",
         "sanity/*/config.json", "sanity/*/summary.json")


def mirror(job: Job, out: Path, to: Path) -> None:
    """Copy the small files of ``job``'s run directory to the same place under ``to``."""
    import shutil

    from sparsetrain.experiments.run_store import run_dir_for
    d = run_dir_for(job.cfg)
    for pattern in SMALL:
        for f in d.glob(pattern):
            dest = to / f.relative_to(out)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)


_CLAIMS: Optional[Path] = None


def _init(threads: int, claims: Optional[str], parent: int) -> None:
    """Each worker: the sweep module's worker set-up (torch threads, dies with ``parent``, stops
    cleanly on SIGTERM/SIGINT), and the claims folder."""
    from sparsetrain.experiments.sweep import _init_worker
    global _CLAIMS
    _init_worker(threads, parent)
    _CLAIMS = Path(claims) if claims else None


def _claim(job: Job) -> bool:
    """With ``--claims DIR`` shared by concurrent invocations (a CPU and a GPU queue over the same
    runs), take the job by creating ``DIR/<run name>``; False when another worker has it."""
    if _CLAIMS is None:
        return True
    from sparsetrain.experiments.run_store import run_dir_for
    try:
        os.close(os.open(_CLAIMS / run_dir_for(job.cfg).name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def do_job(job: Job) -> Tuple[str, str, float, Optional[str]]:
    """Train (or finish) one run, then its sanity checks; returns (block, label, seconds, error)."""
    import traceback

    from sparsetrain.experiments.run_store import run_dir_for, train_run
    from sparsetrain.experiments.sanity import sanity

    t = time.time()
    if not _claim(job):
        return job.block, job.label + " (taken by the other queue)", 0.0, None
    try:
        train_run(job.cfg)
        if job.checks:
            sanity(run_dir_for(job.cfg), job.checks)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which goes on
        return job.block, job.label, time.time() - t, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
    return job.block, job.label, time.time() - t, None


def machine(device: str) -> Dict[str, Any]:
    import torch
    info = {"device": device, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="root of the run directories (OUT/<block>/...)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--blocks", default="core_full,ptb,lottery")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--device", default="cpu", help="cpu or cuda (train.device of every run)")
    p.add_argument("--ptb-scale", type=float, default=0.1, help="fraction of the PTB config's 4 epochs")
    p.add_argument("--fashion-scale", type=float, default=0.1, help="fraction of the LeNet-5 config's 20 epochs")
    p.add_argument("--lottery-seeds", type=lambda s: tuple(int(x) for x in s.split(",")),
                   default=tuple(range(LOTTERY_SEEDS)), help="seeds of the lottery block (default 0,1,2)")
    p.add_argument("--lottery-sparsities", type=lambda s: tuple(float(x) for x in s.split(",")),
                   default=LOTTERY_SPARSITIES, help="sparsities of the lottery block (default 0.9,0.95,0.98)")
    p.add_argument("--fashion-seeds", type=int, default=3, help="seeds 0..N-1 of fashion_lr_small (default 3)")
    p.add_argument("--lrs", type=lambda s: tuple(float(x) for x in s.split(",")), default=LRS)
    p.add_argument("--claims", help="a folder shared with a concurrent invocation over the same runs: each "
                   "run goes to whichever queue reaches it first")
    p.add_argument("--mirror", help="copy each finished run's small files (summaries, metrics, configs) here")
    p.add_argument("--steps", type=int, default=0, help="cut every run to this many steps (a smoke test)")
    p.add_argument("--limit", type=int, default=0, help="only the first N runs of the queue (a smoke test)")
    p.add_argument("--list", action="store_true", help="print the queue and stop")
    a = p.parse_args(argv)
    out, data = Path(a.out).resolve(), Path(a.data_dir).resolve()
    if not (data / "MNIST").is_dir():
        print(f"error: no datasets under {data} (expected MNIST/, FashionMNIST/, ptb/); pass --data-dir", file=sys.stderr)
        return 2
    extra = (f"train.device={a.device}",) + ((f"train.steps={a.steps}", "train.eval_every=0") if a.steps else ())
    jobs = [dataclasses.replace(j, cfg=_with(j.cfg, *extra)) for j in build_queue(a.blocks.split(","), out, data, a)]
    jobs = jobs[:a.limit] if a.limit else jobs
    todo = [j for j in jobs if not complete(j)]
    if a.claims:
        Path(a.claims).mkdir(parents=True, exist_ok=True)
    print(f"{len(jobs)} runs, {len(todo)} to do, {a.jobs} workers on {a.device}", flush=True)
    if a.list:
        for j in todo:
            print(f"{j.block:10s} {j.label:18s} seed {j.cfg.seed} s {j.cfg.sparsity.sparsity:g}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for where in [out] + ([Path(a.mirror)] if a.mirror else []):
        where.mkdir(parents=True, exist_ok=True)
        (where / f"machine_{a.device.replace(':', '')}.json").write_text(json.dumps(machine(a.device), indent=2))
    for j in jobs:  # runs finished by an earlier invocation
        if a.mirror and complete(j):
            mirror(j, out, Path(a.mirror))
    import multiprocessing
    t0, failed, done = time.time(), 0, 0
    with ProcessPoolExecutor(max_workers=a.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init, initargs=(a.threads, a.claims, os.getpid())) as pool:
        pending = {pool.submit(do_job, j): j for j in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                job = pending.pop(f)
                block, label, secs, err = f.result()
                if a.mirror and err is None:
                    mirror(job, out, Path(a.mirror))
                done += 1
                failed += err is not None
                print(f"[{time.time() - t0:6.0f}s] {done}/{len(todo)} {block} {label} {secs:.0f}s"
                      + (f" FAILED {err}" if err else ""), flush=True)
    print(f"all done in {time.time() - t0:.0f}s, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
