"""``sparsetrain sweep``: a grid of runs (:mod:`sparsetrain.experiments.sweep`)."""
from __future__ import annotations

import argparse
import sys

from ..experiments.sweep import build_spec, describe, expand, run_sweep
from ..train.stop import StopRequested, StopSignals, exit_code
from .common import add_config_flags, add_shortcuts, common, config_overrides

NAME = "sweep"
SHORTCUTS = common("--out-dir", "--data-dir", "--device", "--quiet")


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``sweep``: a spec file and/or ``--grid`` axes over a ``--set`` base config."""
    p = sub.add_parser(NAME, help="run a grid of configurations (idempotent, parallel, resumable)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", help="TOML/YAML/JSON file: a base config plus an optional `grid` table "
                   "(key -> list of values) and `variants` list")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="add a grid axis, e.g. --grid seed=0,1,2 --grid sparsity.method=static,set,rigl")
    add_config_flags(p, file=False, note="for every run: ")
    p.add_argument("--jobs", "-j", type=int, default=1, help="runs at once, each in its own process (default 1)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status; run nothing")
    p.add_argument("--launcher", choices=("local", "submitit"), default="local",
                   help="local: worker processes on this machine (default); submitit: one cluster job per run")
    p.add_argument("--cluster", default="auto", help="submitit: auto (Slurm when available, else local), slurm, "
                   "local or debug")
    p.add_argument("--submitit-dir", default=None, metavar="DIR",
                   help="submitit: folder of job files and logs (default OUT_DIR/submitit)")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="submitit: executor parameter, e.g. --slurm timeout_min=600 --slurm slurm_partition=gpu "
                   "--slurm gpus_per_node=1 (values read like --set)")
    add_shortcuts(p, SHORTCUTS)
    p.epilog = ("Finished runs (summary.json) are skipped and interrupted ones resume from checkpoint.pt,\n"
                "so rerunning the same command continues a sweep. Exit code 1 if any run failed.")
    return p


def run(args) -> int:
    """Run (or with ``--dry-run`` list) the sweep; exit code 1 if any run failed."""
    configs = expand(build_spec(args.spec, args.grid, config_overrides(args, SHORTCUTS)))
    if args.dry_run:
        for status, run_dir in describe(configs):
            print(f"{status:>8}  {run_dir}")
        print(f"{len(configs)} runs")
        return 0
    executor = _executor(args, configs) if args.launcher == "submitit" else None
    try:
        with StopSignals() as signals:
            result = run_sweep(configs, jobs=args.jobs, progress=not args.quiet, stop=signals.requested,
                               executor=executor)
    except StopRequested as e:
        print(f"sparsetrain: sweep {e}; running runs saved a checkpoint; rerun the same command to continue",
              file=sys.stderr)
        return exit_code(e.signum)
    c = result.counts
    print(f"sweep: {len(configs)} runs: {c['done']} done, {c['skipped']} skipped (finished before), {c['failed']} failed")
    for o in result.of("failed"):
        print(f"  failed: {o.run_dir}: {o.error}", file=sys.stderr)
    return 0 if result.ok else 1


def _executor(args, configs):
    """The submitit executor of ``--launcher submitit`` (its folder beside the run directories)."""
    from pathlib import Path

    from ..config import parse_value
    from ..errors import ConfigError
    from ..experiments.submitit_launcher import make_executor

    params = {}
    for item in args.slurm:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--slurm expects KEY=VALUE (e.g. timeout_min=600), got '{item}'")
        params[key.strip()] = parse_value(value)
    folder = Path(args.submitit_dir) if args.submitit_dir else Path(configs[0].out_dir if configs else ".") / "submitit"
    return make_executor(folder, args.cluster, params, args.jobs)
