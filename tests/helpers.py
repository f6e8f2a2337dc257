"""Helpers shared by the test modules (tests/ is on sys.path: pyproject sets pytest's pythonpath)."""
from pathlib import Path

from sparsetrain.cli import main

#: the project's root (tests/ is laid out like the package, so test files sit at varying depths)
ROOT = Path(__file__).resolve().parents[1]
#: the real datasets, beside the checkout (../shared/data), as in CI
SHARED_DATA = ROOT.parent / "shared" / "data"


def run_cli(argv, capsys):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
