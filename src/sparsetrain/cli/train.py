"""``sparsetrain train``: one run from a config file, ``--set`` overrides and shortcut flags."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config import describe_keys, load_config, to_dict
from ..experiments.run_store import default_threads, load_run_config, train_run
from ..train.stop import StopRequested, StopSignals, exit_code
from .common import add_config_flags, add_shortcuts, common, config_overrides, fail

NAME = "train"
SHORTCUTS = common("--out-dir", "--data-dir", "--device", "--quiet")
#: the keys a resumed run may change: where and how it executes, never what it computes
RESUMABLE_KEYS = ("train.device", "train.progress", "data.root", "train.threads")


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``train``; its epilog lists every config key with type and default."""
    p = sub.add_parser(NAME, help="train one run (default: RigL 90%% on digits)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="config keys (key (type) = default: meaning):\n  "
                       + "\n  ".join(describe_keys(meanings=True)))
    add_config_flags(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint "
                   "(after a kill, a time-out or a preemption; --set may change only "
                   + ", ".join(RESUMABLE_KEYS) + ")")
    add_shortcuts(p, SHORTCUTS)
    return p


def _resumed_config(args, overrides):
    """The config saved in ``--resume RUN_DIR`` with the allowed ``--set`` keys applied."""
    changed = [o.split("=")[0].strip() for o in args.overrides]
    if args.config or any(k not in RESUMABLE_KEYS for k in changed):
        raise SystemExit(fail("--resume takes the config saved in the run directory; drop --config and "
                              f"--set (except {', '.join(RESUMABLE_KEYS)})"))
    run_dir = Path(args.resume)
    saved = load_run_config(run_dir)
    allowed = [o for o in overrides if o.split("=")[0].strip() in RESUMABLE_KEYS]
    if not (run_dir / "checkpoint.pt").exists() and not (run_dir / "summary.json").exists():
        print(f"sparsetrain: note: '{run_dir}' has no checkpoint yet; training starts at step 0", file=sys.stderr)
    return load_config(overrides=tuple(allowed), base=to_dict(saved)), run_dir


def run(args) -> int:
    """Train (or resume) and print one summary line; on SIGTERM/SIGINT checkpoint, print how to
    resume and return 143/130."""
    overrides = config_overrides(args, SHORTCUTS)
    if args.resume:
        cfg, run_dir = _resumed_config(args, overrides)
    else:
        cfg, run_dir = load_config(args.config, overrides), None
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    try:
        with StopSignals() as signals, default_threads(cfg):  # threads: the automatic choice for 0
            summary = train_run(cfg, run_dir, stop=signals.requested)
    except StopRequested as e:
        if main_rank:
            print(f"sparsetrain: {e}; resume with `sparsetrain train --resume {e.run_dir}` "
                  "(or rerun the same command)", file=sys.stderr)
        return exit_code(e.signum)
    if main_rank:
        print(summary_line(summary))
    return 0


def summary_line(summary: dict) -> str:
    """``run: DIR  steps: N  wall time: Ts  test accuracy/perplexity  achieved sparsity``."""
    test = summary.get("final", {}).get("test", {})
    line = [f"run: {summary['run_dir']}", f"steps: {summary['steps']}",
            f"wall time: {summary['wall_time_s']:.1f}s"]
    if summary.get("skipped"):
        line.insert(1, "(finished before; not run again)")
    if "perplexity" in test:
        line.append(f"test perplexity: {test['perplexity']:.2f}")
    if "accuracy" in test:
        line.append(f"test accuracy: {test['accuracy']:.4f}")
    line.append(f"achieved sparsity: {summary.get('achieved_sparsity', 0.0):.4f}")
    return "  ".join(line)
