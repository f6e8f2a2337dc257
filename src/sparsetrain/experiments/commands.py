"""Subcommands ``sweep``, ``report`` and ``landscape`` (thin wrappers; the work is in
:mod:`sparsetrain.experiments.sweep`, :mod:`sparsetrain.reports` and
:mod:`sparsetrain.experiments.landscape`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import _EXTRA_PARSERS, _fail, _shortcuts, command


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of configurations (idempotent, parallel, resumable)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", help="TOML/YAML/JSON file: a base config plus an optional `grid` table "
                   "(key -> list of values) and `variants` list")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="add a grid axis, e.g. --grid seed=0,1,2 --grid sparsity.method=static,set,rigl")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config key for every run (repeatable)")
    p.add_argument("--jobs", "-j", type=int, default=1, help="runs at once, each in its own process (default 1)")
    p.add_argument("--out-dir", help="where run directories are created (config key out_dir)")
    p.add_argument("--data-dir", help="dataset root (config key data.root)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (config key train.device)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress view")
    p.epilog = ("Finished runs (summary.json) are skipped and interrupted ones resume from checkpoint.pt,\n"
                "so rerunning the same command continues a sweep. Exit code 1 if any run failed.")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="tables (Markdown/CSV, mean ± std over seeds) and plots from run directories")
    p.add_argument("runs_dir", help="directory holding run directories (searched recursively)")
    p.add_argument("--out", help="output directory (default RUNS_DIR/report)")
    p.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")


def _add_landscape(sub) -> None:
    p = sub.add_parser("landscape", help="loss along the line between two solutions (RigL paper §5)")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="RUN_A RUN_B: two finished runs of the same model")
    p.add_argument("--points", type=int, default=21, help="t values in [0, 1], endpoints included (default 21)")
    p.add_argument("--out", help="PNG path (the curve goes to the same name .json); default landscape.png")
    p.add_argument("--train-examples", type=int, default=0, help="train loss on the first N examples (default all)")
    p.add_argument("--device", help="torch device for the evaluation (default: CUDA if available)")
    p.add_argument("--paper", action="store_true", help="run the paper's experiment instead: train Static with "
                   "--config/--set, then RigL started from it, then interpolate")
    p.add_argument("--config", help="with --paper: base config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --paper: config overrides")


_EXTRA_PARSERS.extend([_add_sweep, _add_report, _add_landscape])


@command("sweep")
def cmd_sweep(args) -> int:
    from .sweep import build_spec, describe, expand, run_sweep

    spec = build_spec(args.spec, args.grid, tuple(args.overrides) + tuple(_shortcuts(args)))
    configs = expand(spec)
    if args.dry_run:
        for status, run_dir in describe(configs):
            print(f"{status:>8}  {run_dir}")
        print(f"{len(configs)} runs")
        return 0
    result = run_sweep(configs, jobs=args.jobs, progress=not args.quiet)
    c = result.counts
    print(f"sweep: {len(configs)} runs: {c['done']} done, {c['skipped']} skipped (finished before), {c['failed']} failed")
    for o in result.of("failed"):
        print(f"  failed: {o.run_dir}: {o.error}", file=sys.stderr)
    return 0 if result.ok else 1


@command("report")
def cmd_report(args) -> int:
    from ..reports import write_report

    rep = write_report(args.runs_dir, args.out, plot=not args.no_plots)
    print(f"report: {len(rep.groups)} groups from {sum(g.n for g in rep.groups)} runs -> {rep.markdown}, "
          f"{rep.csv}, {len(rep.figures)} plots")
    for note in rep.notes:
        print(f"  note: {note}")
    return 0


@command("landscape")
def cmd_landscape(args) -> int:
    from ..config import load_config
    from .landscape import paper_experiment, write_landscape

    out = Path(args.out or "landscape.png")
    if args.paper:
        if args.runs:
            return _fail("--paper trains its own two runs; drop RUN_A RUN_B")
        cfg = load_config(args.config, tuple(args.overrides))
        curve = paper_experiment(cfg, out, args.points, args.train_examples)
    else:
        if len(args.runs) != 2 or args.config or args.overrides:
            return _fail("landscape needs exactly two run directories RUN_A RUN_B (or --paper with --config/--set)")
        curve = write_landscape(args.runs[0], args.runs[1], out, args.points, args.train_examples, args.device)
    ends = (curve["train_loss"][0], curve["train_loss"][-1], max(curve["train_loss"]))
    print(f"landscape: {out} and {out.with_suffix('.json')}; train loss A {ends[0]:.4f}, B {ends[1]:.4f}, "
          f"max along the line {ends[2]:.4f}")
    return 0
