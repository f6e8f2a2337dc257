"""The ``sparsetrain`` command: the parser of every subcommand and the dispatch.

Each subcommand is a module of this package with ``NAME``, ``add_parser(subparsers)`` and
``run(args) -> int``, listed once in :data:`SUBCOMMANDS`. Errors a user can cause
(:class:`~sparsetrain.errors.SparsetrainError`) print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from ..errors import SparsetrainError, first_line
from . import flops, landscape, list as list_, report, sanity, sweep, train
from .common import EXIT_USAGE, Parser, fail

#: the subcommands, in the order ``--help`` lists them
SUBCOMMANDS = (train, list_, flops, sweep, report, landscape, sanity)
COMMANDS = {m.NAME: m for m in SUBCOMMANDS}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`SUBCOMMANDS`."""
    p = Parser(prog="sparsetrain", description="Sparse neural network training (RigL and friends).")
    sub = p.add_subparsers(dest="command", parser_class=Parser)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command].run(args)
    except SparsetrainError as e:
        return fail(first_line(e, 1000))
    except KeyboardInterrupt:  # outside a run's own handling (e.g. while loading data)
        print("sparsetrain: interrupted; rerun the same command (or --resume RUN_DIR) to continue", file=sys.stderr)
        return 130
