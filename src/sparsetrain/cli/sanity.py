"""``sparsetrain sanity``: sanity checks of a run's mask (:mod:`sparsetrain.experiments.sanity`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..experiments.sanity import CHECKS, DEFAULT_CHECKS, format_table, sanity
from .common import add_shortcuts, common, shortcut_overrides

NAME = "sanity"
SHORTCUTS = common("--data-dir", "--device", "--quiet")


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``sanity``: a finished run directory and the checks to run."""
    p = sub.add_parser(NAME, help="sanity checks of a run's mask: shuffle, reinit, invert (Frankle et al. 2021)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory")
    p.add_argument("--checks", default=",".join(DEFAULT_CHECKS),
                   help=f"comma-separated, from {', '.join(CHECKS)} (default {','.join(DEFAULT_CHECKS)})")
    add_shortcuts(p, SHORTCUTS)
    return p


def run(args) -> int:
    """Print the table; the JSON lands in RUN_DIR/sanity.json."""
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    print(format_table(sanity(Path(args.run_dir), checks, shortcut_overrides(args, SHORTCUTS))))
    return 0
