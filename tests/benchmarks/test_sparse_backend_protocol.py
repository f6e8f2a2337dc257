"""The timing protocol of benchmarks/sparse_backend.py (docs/performance.md) on hand-made samples."""
import importlib.util
import sys

import pytest
from helpers import ROOT

_path = ROOT / "benchmarks" / "sparse_backend.py"
_spec = importlib.util.spec_from_file_location("sparse_backend_script", _path)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)


def raw(regular, update=(), after=(), infer=(0.001,), rounds=()):
    return {"regular": list(regular), "update": list(update), "after_update": list(after),
            "infer": list(infer), "round_regular": list(rounds)}


def test_summarise_amortises_update_and_the_step_after_it():
    s = bench.summarise(raw([0.010, 0.012, 0.011], update=[0.110, 0.090, 0.100], after=[0.020]))
    assert s["step_ms"] == pytest.approx(11.0)
    assert s["update_step_ms"] == pytest.approx(100.0) and s["after_update_ms"] == pytest.approx(20.0)
    # 11 + ((100 − 11) + (20 − 11)) / 100
    assert s["amortised_ms"] == pytest.approx(11.0 + 0.98)
    assert s["regular"] == {"median": pytest.approx(11.0), "min": pytest.approx(10.0), "max": pytest.approx(12.0), "n": 3}


def test_each_backend_runs_at_its_faster_zero_grad_setting():
    runs = {"dense/keep": {"step_ms": 50.0}, "dense/none": {"step_ms": 60.0},
            "sparse/keep": {"step_ms": 5.0}, "sparse/none": {"step_ms": 4.0}}
    assert bench.choose_settings(runs, ["dense", "sparse"], ["keep", "none"]) == \
        {"dense": "dense/keep", "sparse": "sparse/none"}


def test_paired_ratios_per_round_and_quiet_rounds():
    group = {"chosen": {"dense": "dense/keep", "sparse": "sparse/keep"},
             "runs": {"dense/keep": {"round_regular_ms": [40.0, 80.0, 30.0, None]},
                      "sparse/keep": {"round_regular_ms": [10.0, 10.0, 10.0, 5.0]}},
             "rounds": [{"noisy": False}, {"noisy": True}, {"noisy": False}, {"noisy": False}]}
    p = bench.paired_ratios(group, "sparse")
    assert (p["median"], p["min"], p["max"], p["n"]) == (4.0, 3.0, 8.0, 3)   # the round without dense is skipped
    assert (p["quiet_median"], p["n_quiet"]) == (3.5, 2)
    assert bench.paired_ratios(group, "sparse-sp") is None
