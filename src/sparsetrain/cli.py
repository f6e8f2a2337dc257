"""Command line: thin wrappers over the library. Errors a user can cause print one line on
stderr and exit with code 2."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Dict, List, Optional

from .errors import SparsetrainError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SystemExit(_fail(f"{message} (see `{self.prog} --help`)"))


def _fail(message: str) -> int:
    print(f"sparsetrain: error: {message}", file=sys.stderr)
    return EXIT_USAGE


COMMANDS: Dict[str, Callable] = {}


def command(name: str):
    def wrap(fn):
        COMMANDS[name] = fn
        return fn
    return wrap


def _train_args(p: argparse.ArgumentParser) -> None:
    from .config import describe_keys
    p.add_argument("--config", help="TOML/YAML/JSON config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set sparsity.sparsity=0.95 (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--out-dir", help="where run directories are created (config key out_dir)")
    p.add_argument("--data-dir", help="dataset root (config key data.root; default $SPARSETRAIN_DATA or ./data)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (config key train.device)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.epilog = "config keys:\n  " + "\n  ".join(describe_keys())
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def _shortcuts(args) -> List[str]:
    extra = []
    for flag, key in (("out_dir", "out_dir"), ("data_dir", "data.root"), ("device", "train.device")):
        if getattr(args, flag, None):
            extra.append(f"{key}={getattr(args, flag)}")
    if getattr(args, "quiet", False):
        extra.append("train.progress=off")
    return extra


@command("train")
def cmd_train(args) -> int:
    from .config import load_config, to_dict
    from .experiments.run_store import default_threads, load_run_config, train_run
    from pathlib import Path

    overrides = tuple(args.overrides) + tuple(_shortcuts(args))
    if args.resume:
        if args.config or args.overrides:
            return _fail("--resume takes the config saved in the run directory; drop --config/--set")
        saved = load_run_config(Path(args.resume))
        allowed = [o for o in overrides if o.split("=")[0] in ("train.device", "train.progress", "data.root")]
        cfg, run_dir = load_config(overrides=tuple(allowed), base=to_dict(saved)), Path(args.resume)
    else:
        cfg, run_dir = load_config(args.config, overrides), None
    with default_threads(cfg):  # train.threads = 0: the CLI's automatic choice (one thread for small models)
        summary = train_run(cfg, run_dir)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    test = summary.get("final", {}).get("test", {})
    line = [f"run: {summary['run_dir']}", f"steps: {summary['steps']}",
            f"wall time: {summary['wall_time_s']:.1f}s"]
    if "perplexity" in test:
        line.append(f"test perplexity: {test['perplexity']:.2f}")
    if "accuracy" in test:
        line.append(f"test accuracy: {test['accuracy']:.4f}")
    line.append(f"achieved sparsity: {summary.get('achieved_sparsity', 0.0):.4f}")
    print("  ".join(line))


@command("list")
def cmd_list(args) -> int:
    from . import registry
    import sparsetrain.data  # noqa: F401  (registers datasets)
    import sparsetrain.models  # noqa: F401

    for title, reg in (("methods", registry.METHODS), ("models", registry.MODELS),
                       ("datasets", registry.DATASETS), ("distributions", registry.DISTRIBUTIONS)):
        print(f"{title}: {', '.join(reg.names())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sparsetrain", description="Sparse neural network training (RigL and friends).")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    _train_args(sub.add_parser("train", help="train one run (default: RigL 90%% on digits)"))
    sub.add_parser("list", help="show registered methods, models, datasets, distributions")
    for extra in _EXTRA_PARSERS:
        extra(sub)
    return p


#: other modules add subcommands here: fn(subparsers) -> None
_EXTRA_PARSERS: List[Callable] = []


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except SparsetrainError as e:
        return _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        return _fail("interrupted; rerun the same command (or --resume RUN_DIR) to continue")


from . import flops_cli  # noqa: E402,F401  (registers the `flops` subcommand)
from .experiments import commands as _experiment_commands  # noqa: E402,F401  (sweep, report, landscape)
from .experiments import sanity as _sanity  # noqa: E402,F401  (registers the `sanity` subcommand)
