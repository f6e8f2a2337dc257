"""Every table of docs/performance.md that a script prints is that script's output, byte for byte.

A table printed by a script carries, on the line directly above it, the command that prints it
from committed raw output:

    <!-- generated: python benchmarks/sparse_rnn.py --report docs/perf/rnn.json -->

The test runs that report in-process (the script's ``main(argv)``, stdout captured) and compares
it with the lines under the marker. A table with no marker must be listed in ``UNTRACED`` with
the reason no script prints it.
"""
import importlib.util
import re
import shlex

import pytest
from helpers import ROOT

DOC = ROOT / "docs" / "performance.md"
MARKER = re.compile(r"^<!-- generated: (.+?) -->$")

# Raw files not measured yet. The tables under their markers are still the earlier, untraced text;
# the measurements are to be made on a quiet machine (commands in each script's docstring). Once a
# file is committed, replace the table with its --report output and delete the file from this set
# (while the file exists the test checks its table anyway).
PENDING: set = set()

# Tables that no script prints (their first line -> why). A new table needs a marker or a line here.
UNTRACED = {
    "| target | measured | verdict |":
        "a summary quoting the convolution tables above it",
    "| sparsity | regular step: target / reached | amortised ΔT = 100: target / reached |":
        "the issue's Linear speed targets beside the speed-up column of the generated table above it",
}

_modules = {}


def doc_lines():
    return DOC.read_text().split("\n")


def markers():
    return [(i, m.group(1)) for i, line in enumerate(doc_lines()) if (m := MARKER.match(line))]


def raw_files(command):
    return [a for a in shlex.split(command)[2:] if a.endswith((".json", ".jsonl"))]


def report_output(command):
    """What ``command`` prints, run in this process from the repository root (benchmarks/perf_docs.py,
    which rewrites the tables, runs them the same way)."""
    return _perf_docs().report_output(command, _modules)


def _perf_docs():
    if "perf_docs" not in _modules:
        spec = importlib.util.spec_from_file_location("perf_docs_tool", ROOT / "benchmarks" / "perf_docs.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules["perf_docs"] = module
    return _modules["perf_docs"]


def test_markers_name_reports_of_committed_scripts():
    found = markers()
    assert len(found) >= 10, found
    for line, command in found:
        argv = shlex.split(command)
        assert argv[0] == "python" and argv[1].startswith("benchmarks/") and (ROOT / argv[1]).is_file(), command
        # a marker may only read raw output, never start a measurement
        assert {"--report", "--compare"} & set(argv), command
        assert raw_files(command), command


@pytest.mark.parametrize("line,command", markers(), ids=lambda v: v if isinstance(v, str) else f"line{v + 1}")
def test_table_under_marker_is_the_report(line, command, monkeypatch):
    missing = [f for f in raw_files(command) if not (ROOT / f).is_file()]
    if missing and set(missing) <= PENDING:
        pytest.skip(f"pending measurement: {', '.join(missing)}")
    assert not missing, f"`{command}` reads {missing}, which is not committed"
    monkeypatch.chdir(ROOT)
    want = report_output(command).rstrip("\n").split("\n")
    lines = doc_lines()
    have = lines[line + 1:line + 1 + len(want)]
    bad = next((k for k, (w, h) in enumerate(zip(want, have)) if w != h), None)
    assert have == want, (
        f"docs/performance.md line {line + 2 + (bad or 0)} differs from `{command}`:\n"
        f"doc:    {have[bad] if bad is not None else have[-1:]}\nscript: {want[bad] if bad is not None else want[-1:]}")
    after = lines[line + 1 + len(want)] if line + 1 + len(want) < len(lines) else ""
    assert after.strip() == "", f"the table under `{command}` goes on past the report: {after!r}"


def test_pending_files_are_named_by_markers():
    named = {f for _, command in markers() for f in raw_files(command)}
    assert PENDING <= named, PENDING - named


def test_every_table_has_a_marker_or_a_reason():
    """A table is covered by a marker above it when only table rows, blank lines and bold
    headings (the profile report's) lie between them."""
    lines = doc_lines()
    uncovered = []
    for i, line in enumerate(lines):
        if not line.startswith("|") or lines[i - 1].startswith("|"):
            continue
        j = i - 1
        while j >= 0 and (not lines[j].strip() or lines[j].startswith(("|", "**wide@"))):
            j -= 1
        if not MARKER.match(lines[j]) and line not in UNTRACED:
            uncovered.append(f"line {i + 1}: {line[:80]}")
    assert not uncovered, uncovered
    assert all(key in lines for key in UNTRACED), [k for k in UNTRACED if k not in lines]
