"""The claim-verdict rule of benchmarks/results.py (docs/results.md), on hand-made seed statistics."""
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import ROOT

_path = ROOT / "benchmarks" / "results.py"
_spec = importlib.util.spec_from_file_location("results_script", _path)
results = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = results  # its dataclasses look their module up
_spec.loader.exec_module(results)


def group(mean, std, n=3):
    return SimpleNamespace(stats={"test_accuracy": SimpleNamespace(mean=mean, std=std, n=n)})


@pytest.mark.parametrize("a,b,at_least,want", [
    (group(0.90, 0.01), group(0.87, 0.01), False, "confirmed"),        # gap 3 > spread 2
    (group(0.88, 0.01), group(0.87, 0.01), False, "inconclusive"),
    (group(0.85, 0.01), group(0.88, 0.01), False, "not confirmed"),
    (group(0.865, 0.003), group(0.87, 0.003), True, "confirmed"),      # gap closed within a tight spread
    (group(0.62, 0.45), group(0.87, 0.006), True, "inconclusive (seed spread too large)"),
    (group(0.40, 0.01), group(0.87, 0.45), True, "not confirmed"),     # A clearly worse: no spread saves it
    (group(0.90, 0.01, n=1), group(0.80, 0.01), False, "inconclusive (1 seed)"),
])
def test_verdict_rule(a, b, at_least, want):
    assert results.verdict(a, b, at_least=at_least) == want
