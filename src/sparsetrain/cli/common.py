"""What every subcommand shares: the one-line-error parser, :func:`fail`, the config flags
(``--config``, ``--set``) and the shortcut flags that stand for one config key each.

A shortcut is a row of a table {flag: config key}; its argparse option is generated from the
row and the key's dataclass field (type and default for the help, a ``--x/--no-x`` pair for a
bool), and its value reaches the config as one more ``--set key=value``, so it is typed and
validated by the same code as ``--set`` (:func:`sparsetrain.config.load_config`).
"""
from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

from ..config import describe_keys, key_type

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SystemExit(fail(f"{message} (see `{self.prog} --help`)"))


def fail(message: str) -> int:
    """Print ``message`` as the one error line on stderr; return the usage exit code (2)."""
    print(f"sparsetrain: error: {message}", file=sys.stderr)
    return EXIT_USAGE


@dataclass(frozen=True)
class Shortcut:
    """``flag VALUE`` means ``--set key=VALUE``; with a fixed ``value`` the flag takes no argument
    and sets ``key=value`` (``--quiet``: ``train.progress=off``)."""

    flag: str
    key: str
    help: str
    value: Optional[str] = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


#: the shortcuts several subcommands take, defined once
COMMON: Dict[str, Shortcut] = {s.flag: s for s in (
    Shortcut("--out-dir", "out_dir", "where run directories are created"),
    Shortcut("--data-dir", "data.root", "dataset root (default $SPARSETRAIN_DATA or ./data)"),
    Shortcut("--device", "train.device", "auto, cpu, cuda, cuda:N"),
    Shortcut("--quiet", "train.progress", "no progress bar", value="off"),
)}


def common(*flags: str) -> List[Shortcut]:
    """The shared shortcuts named by ``flags`` (e.g. ``common("--device", "--quiet")``)."""
    return [COMMON[f] for f in flags]


def add_config_flags(p: argparse.ArgumentParser, file: bool = True, note: str = "") -> None:
    """``--config FILE`` (unless ``file`` is False) and the repeatable ``--set KEY=VALUE``."""
    if file:
        p.add_argument("--config", help=f"{note}TOML/YAML/JSON config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"{note}override one config key, e.g. --set sparsity.sparsity=0.95 (repeatable)")


def _key_help(key: str) -> str:
    """``config key K, TYPE, default D`` from the config dataclasses (``config key K`` for a key
    inside a table, such as a method option)."""
    described = dict(line.split(" (", 1) for line in describe_keys())  # "key (type) = default"
    if key not in described:
        return f"config key {key}"
    tp, default = described[key].split(") = ", 1)
    return f"config key {key}, {tp}, default {default}"


def _is_bool(key: str) -> bool:
    tp = key_type(key)
    return tp is bool or (typing.get_origin(tp) is typing.Union and bool in typing.get_args(tp))


def add_shortcuts(p: argparse.ArgumentParser, shortcuts: Iterable[Shortcut]) -> None:
    """One argparse option per shortcut; every default is None (the config's default applies)."""
    for s in shortcuts:
        text = f"{s.help} ({_key_help(s.key)})".replace("%", "%%")
        if s.value is not None:
            p.add_argument(s.flag, dest=s.dest, action="store_true", help=f"{s.help} (config key {s.key}={s.value})")
        elif _is_bool(s.key):
            p.add_argument(s.flag, dest=s.dest, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            p.add_argument(s.flag, dest=s.dest, metavar=s.dest.upper(), help=text)


def shortcut_overrides(args: argparse.Namespace, shortcuts: Iterable[Shortcut]) -> List[str]:
    """``key=value`` assignments of the shortcuts given on the command line."""
    out = []
    for s in shortcuts:
        given = getattr(args, s.dest, None)
        if s.value is not None:
            out += [f"{s.key}={s.value}"] if given else []
        elif isinstance(given, bool):
            out.append(f"{s.key}={'true' if given else 'false'}")
        elif given is not None and given != "":
            out.append(f"{s.key}={given}")
    return out


def config_overrides(args: argparse.Namespace, shortcuts: Sequence[Shortcut]) -> tuple:
    """``--set`` assignments, then the shortcuts' (a shortcut wins over ``--set`` of its key)."""
    return tuple(getattr(args, "overrides", ())) + tuple(shortcut_overrides(args, shortcuts))
