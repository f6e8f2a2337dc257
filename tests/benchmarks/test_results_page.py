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


def _rec(name, seed, acc, val=None, **cfg):
    """A hand-made record: flat ``cfg`` keys (dotted) -> nested config."""
    config = {"seed": seed}
    for key, value in {"sparsity.distribution": "uniform", "train.multiplier": 1.0, **cfg}.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    final = {"test": {"accuracy": acc}}
    if val is not None:
        final["val"] = {"accuracy": val}
    return {"run": f"{name}-{seed}", "config": config, "device": "cpu", "machine": "box",
            "summary": {"final": final, "wall_time_s": 1800.0}}


def test_verdict_rows_and_chosen_learning_rates_from_hand_made_records(tmp_path):
    from sparsetrain.reports.record import write_records

    data, docs = tmp_path / "data", tmp_path / "docs"
    core = [_rec(f"{m}", s, acc + 0.001 * s, **{"sparsity.method": m, "sparsity.sparsity": 0.9})
            for m, acc in (("rigl", 0.980), ("set", 0.970), ("static", 0.985)) for s in range(5)]
    core += [_rec("gmp", s, 0.97, **{"sparsity.method": "gmp", "sparsity.sparsity": 0.95}) for s in range(3)]
    write_records(core, data / "core_full.jsonl")
    # Fashion: lr 0.01 wins on validation for RigL at 95 % although lr 0.1 has the better test accuracy
    fashion = [_rec(f"rigl-lr{lr}", s, test, val, **{"sparsity.method": "rigl", "sparsity.sparsity": 0.95,
                                                    "optim.lr": lr, "train.epochs": 2.0})
               for lr, test, val in ((0.1, 0.90, 0.80), (0.01, 0.85, 0.86)) for s in range(3)]
    # a rate tried on one seed only is not chosen, however good its validation accuracy
    fashion.append(_rec("rigl-lr0.3", 0, 0.95, 0.99, **{"sparsity.method": "rigl", "sparsity.sparsity": 0.95,
                                                       "optim.lr": 0.3, "train.epochs": 2.0}))
    write_records(fashion, data / "fashion_lr.jsonl")
    page = results_report.build(data, docs)
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in page.splitlines()
            if line.startswith("| ") and "±" in line}
    # means 98.2 vs 97.2, identical spreads: Welch t = 1 / (0.1581 * sqrt(2/5)) = 10.0 on 8 df
    assert "+1.00 [+0.77, +1.23]" in rows[("RigL > SET", "0.9")] and rows[("RigL > SET", "0.9")].endswith("| confirmed |")
    assert "t=10.00, df=8.0" in rows[("RigL > SET", "0.9")]
    assert rows[("RigL > Static", "0.9")].endswith("| not confirmed |")  # Static is better here
    assert rows[("RigL 5× ≥ GMP (margin 0.3)", "0.95")].endswith("| not run |")  # no RigL 5× runs
    assert results_report.chosen_lrs(results_report.load("fashion_lr", data)) == {("rigl", 0.95): 0.01}
    assert "| RigL 0.95 | 0.01 | 85.00 ± 0.00 (n=3) | 90.00 ± 0.00 (n=3) | 0 |" in page
    assert "- total: 12.50 run-hours" in page  # 25 runs of 1800 s
