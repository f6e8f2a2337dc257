"""``sparsetrain landscape``: loss along the line between two solutions
(:mod:`sparsetrain.experiments.landscape`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config
from ..experiments.landscape import paper_experiment, write_landscape
from .common import add_config_flags, add_shortcuts, common, config_overrides, fail

NAME = "landscape"
SHORTCUTS = common("--device")


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``landscape``: two run directories, or ``--paper`` with a config."""
    p = sub.add_parser(NAME, help="loss along the line between two solutions (RigL paper §5)")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="RUN_A RUN_B: two finished runs of the same model")
    p.add_argument("--points", type=int, default=21, help="t values in [0, 1], endpoints included (default 21)")
    p.add_argument("--out", help="PNG path (the curve goes to the same name .json); default landscape.png")
    p.add_argument("--train-examples", type=int, default=0, help="train loss on the first N examples (default all)")
    p.add_argument("--paper", action="store_true", help="run the paper's experiment instead: train Static with "
                   "--config/--set, then RigL started from it, then interpolate")
    add_config_flags(p, note="with --paper: ")
    add_shortcuts(p, SHORTCUTS)
    return p


def run(args) -> int:
    """Interpolate (training the two runs first with ``--paper``); print where the curve went."""
    out = Path(args.out or "landscape.png")
    if args.paper:
        if args.runs:
            return fail("--paper trains its own two runs; drop RUN_A RUN_B")
        cfg = load_config(args.config, config_overrides(args, SHORTCUTS))
        curve = paper_experiment(cfg, out, args.points, args.train_examples)
    else:
        if len(args.runs) != 2 or args.config or args.overrides:
            return fail("landscape needs exactly two run directories RUN_A RUN_B (or --paper with --config/--set)")
        device = None if args.device in (None, "auto") else args.device  # None: CUDA if available
        curve = write_landscape(args.runs[0], args.runs[1], out, args.points, args.train_examples, device)
    ends = (curve["train_loss"][0], curve["train_loss"][-1], max(curve["train_loss"]))
    print(f"landscape: {out} and {out.with_suffix('.json')}; train loss A {ends[0]:.4f}, B {ends[1]:.4f}, "
          f"max along the line {ends[2]:.4f}")
    return 0
