"""Rewrite every generated table of docs/performance.md from its committed raw output.

    python benchmarks/perf_docs.py            # rewrite the tables in place
    python benchmarks/perf_docs.py --check    # exit 1 if any table differs from its report

A generated table sits directly under a line ``<!-- generated: python benchmarks/X.py --report RAW ... -->``;
the block is the table rows, blank lines and bold headings that follow (trailing blank lines kept). Each command is run in this process (the
script's ``main(argv)``, stdout captured), from the repository root, and its output replaces the block.
tests/benchmarks/test_performance_tables.py checks the same, table by table.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"
MARKER = re.compile(r"^<!-- generated: (.+?) -->$")


def report_output(command: str, modules: dict) -> str:
    """What ``command`` (``python benchmarks/X.py ...``) prints, run in this process."""
    argv = shlex.split(command)
    script = argv[1]
    if script not in modules:
        spec = importlib.util.spec_from_file_location(f"perf_docs_{Path(script).stem}", ROOT / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules[script] = module
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        modules[script].main(argv[2:])
    return out.getvalue()


def _kind(line: str) -> str:
    text = line.strip()
    return "blank" if not text else "row" if text.startswith("|") else "text"


def _in_block(lines: list, k: int) -> bool:
    """Table rows, blank lines and bold one-line headings directly followed (after a blank line) by
    a table (a report's table titles) make up a generated block."""
    text = lines[k].strip()
    if not text or text.startswith("|"):
        return True
    return text.startswith("**") and k + 2 < len(lines) and not lines[k + 1].strip() \
        and lines[k + 2].startswith("|")


def regenerate(lines: list) -> list:
    """``lines`` with every block under a marker replaced by its command's output."""
    out, i, modules = [], 0, {}
    while i < len(lines):
        out.append(lines[i])
        m = MARKER.match(lines[i])
        i += 1
        if not m:
            continue
        new = report_output(m.group(1), modules).rstrip("\n").split("\n")
        if [_kind(x) for x in lines[i:i + len(new)]] == [_kind(x) for x in new]:
            end = i + len(new)                          # the same report's shape: replace it line for line
        else:                                           # a new shape (e.g. a column added): the table block
            end = i
            while end < len(lines) and _in_block(lines, end):
                end += 1
            while end > i and not lines[end - 1].strip():   # trailing blank lines stay
                end -= 1
        i = end
        out += new
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only report whether the document is up to date")
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    lines = DOC.read_text().split("\n")
    new = regenerate(lines)
    if args.check:
        stale = new != lines
        print("docs/performance.md is " + ("stale: run python benchmarks/perf_docs.py" if stale else "up to date"))
        return int(stale)
    DOC.write_text("\n".join(new))
    print(f"rewrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
