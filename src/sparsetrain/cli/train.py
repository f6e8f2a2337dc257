"""``sparsetrain train``: one run from a config file, ``--set`` overrides and shortcut flags."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config import describe_keys, load_config, to_dict
from ..experiments.run_store import default_threads, load_run_config, train_run
from .common import add_config_flags, add_shortcuts, common, config_overrides, fail

NAME = "train"
SHORTCUTS = common("--out-dir", "--data-dir", "--device", "--quiet")
#: the keys a resumed run may change: where and how it executes, never what it computes
RESUMABLE_KEYS = ("train.device", "train.progress", "data.root")


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``train``; its epilog lists every config key with type and default."""
    p = sub.add_parser(NAME, help="train one run (default: RigL 90%% on digits)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="config keys:\n  " + "\n  ".join(describe_keys()))
    add_config_flags(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    add_shortcuts(p, SHORTCUTS)
    return p


def run(args) -> int:
    """Train (or resume) and print one summary line."""
    overrides = config_overrides(args, SHORTCUTS)
    if args.resume:
        if args.config or args.overrides:
            return fail("--resume takes the config saved in the run directory; drop --config/--set")
        saved = load_run_config(Path(args.resume))
        allowed = [o for o in overrides if o.split("=")[0] in RESUMABLE_KEYS]
        cfg, run_dir = load_config(overrides=tuple(allowed), base=to_dict(saved)), Path(args.resume)
    else:
        cfg, run_dir = load_config(args.config, overrides), None
    with default_threads(cfg):  # train.threads = 0: the CLI's automatic choice (one thread for small models)
        summary = train_run(cfg, run_dir)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(summary_line(summary))
    return 0


def summary_line(summary: dict) -> str:
    """``run: DIR  steps: N  wall time: Ts  test accuracy/perplexity  achieved sparsity``."""
    test = summary.get("final", {}).get("test", {})
    line = [f"run: {summary['run_dir']}", f"steps: {summary['steps']}",
            f"wall time: {summary['wall_time_s']:.1f}s"]
    if "perplexity" in test:
        line.append(f"test perplexity: {test['perplexity']:.2f}")
    if "accuracy" in test:
        line.append(f"test accuracy: {test['accuracy']:.4f}")
    line.append(f"achieved sparsity: {summary.get('achieved_sparsity', 0.0):.4f}")
    return "  ".join(line)
