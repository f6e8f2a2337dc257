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
    try:
        with StopSignals() as signals:
            result = run_sweep(configs, jobs=args.jobs, progress=not args.quiet, stop=signals.requested)
    except StopRequested as e:
        print(f"sparsetrain: sweep {e}; running runs saved a checkpoint; rerun the same command to continue",
              file=sys.stderr)
        return exit_code(e.signum)
    c = result.counts
    print(f"sweep: {len(configs)} runs: {c['done']} done, {c['skipped']} skipped (finished before), {c['failed']} failed")
    for o in result.of("failed"):
        print(f"  failed: {o.run_dir}: {o.error}", file=sys.stderr)
    return 0 if result.ok else 1
