"""``sparsetrain report``: tables and plots from run directories (:mod:`sparsetrain.reports`)."""
from __future__ import annotations

import argparse

from ..reports import write_report

NAME = "report"


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``report``."""
    p = sub.add_parser(NAME, help="tables (Markdown/CSV, mean ± std over seeds) and plots from run directories")
    p.add_argument("runs_dir", help="directory holding run directories (searched recursively)")
    p.add_argument("--out", help="output directory (default RUNS_DIR/report)")
    p.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    return p


def run(args) -> int:
    """Write the report; print where it went and its notes."""
    rep = write_report(args.runs_dir, args.out, plot=not args.no_plots)
    print(f"report: {len(rep.groups)} groups from {sum(g.n for g in rep.groups)} runs -> {rep.markdown}, "
          f"{rep.csv}, {len(rep.figures)} plots")
    for note in rep.notes:
        print(f"  note: {note}")
    return 0
