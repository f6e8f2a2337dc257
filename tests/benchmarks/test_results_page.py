"""docs/results.md is generated from the committed records alone: regenerating it gives the
committed file byte for byte, and every figure it links is committed."""
import importlib.util
import re
import sys

from helpers import ROOT

_spec = importlib.util.spec_from_file_location("results_report", ROOT / "benchmarks" / "results_report.py")
results_report = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = results_report  # its dataclasses look their module up
_spec.loader.exec_module(results_report)


def test_results_md_regenerates_byte_for_byte():
    page = ROOT / "docs" / "results.md"
    assert results_report.build().encode() == page.read_bytes(), (
        "docs/results.md differs from what its records give; regenerate it with "
        "`PYTHONPATH=src python benchmarks/results_report.py` (commentary: docs/results/commentary.md)")


def test_every_linked_figure_is_committed():
    page = (ROOT / "docs" / "results.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert all((ROOT / "docs" / link).is_file() for link in links), links
