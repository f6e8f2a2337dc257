"""The package's layering: no import cycles, nothing imports a higher layer (docs/architecture.md).

Runs the structure check that ships beside the checkout (../shared/tools/check_layers.py, as in
CI); without it the test is skipped and says so.
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT.parent / "shared" / "tools" / "check_layers.py"


@pytest.mark.skipif(not CHECK.is_file(), reason=f"structure check not found at {CHECK}")
def test_no_import_cycle_and_no_upward_import():
    proc = subprocess.run([sys.executable, str(CHECK)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "layers OK" in proc.stdout, proc.stdout + proc.stderr
