"""Helpers shared by the test modules (importable because pytest puts tests/ on sys.path)."""
from pathlib import Path

from sparsetrain.cli import main

#: the real datasets, beside the checkout (../shared/data), as in CI
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def run_cli(argv, capsys):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
