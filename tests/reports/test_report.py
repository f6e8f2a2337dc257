"""Reports from fixture run directories written here: grouping over seeds, mean ± sample std
(hand-computed), Markdown/CSV, every plot written, graceful skips and the matplotlib error."""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import pytest

from sparsetrain.cli import main
from sparsetrain.config import load_config, to_dict
from sparsetrain.errors import ConfigError
from sparsetrain.reports import group_runs, load_runs, markdown_table, write_report
from sparsetrain.reports.plots import churn_curve, series_label
from sparsetrain.reports.tables import Stat

# final test accuracies per (method, distribution, sparsity) and seed
ACC = {("rigl", "erk", 0.9): [0.90, 0.92, 0.94], ("rigl", "uniform", 0.9): [0.88, 0.89],
       ("static", "uniform", 0.9): [0.85], ("rigl", "erk", 0.8): [0.95, 0.97],
       ("dense", "erk", 0.0): [0.98, 0.99]}
LAYERS = {"erk": {"fc1.weight": 0.05, "fc2.weight": 0.3}, "uniform": {"fc1.weight": 0.1, "fc2.weight": 0.1}}


def write_run(root: Path, method: str, dist: str, sparsity: float, seed: int, acc: float,
              finished: bool = True, flops: bool = True, extra: tuple = ()) -> Path:
    cfg = load_config(overrides=(f"sparsity.method={method}", f"sparsity.distribution={dist}",
                                 f"sparsity.sparsity={sparsity}", f"seed={seed}", f"out_dir={root}") + extra)
    run = root / f"{method}-{dist}-{sparsity}-{seed}-{len(list(root.glob('*'))) if root.exists() else 0}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({**to_dict(cfg), "_hash": "x"}))
    if not finished:
        return run
    summary = {"final": {"test": {"accuracy": acc, "loss": 1 - acc}}, "achieved_sparsity": sparsity,
               "wall_time_s": 1.0}
    if flops:
        summary.update(train_flops_ratio=1 - sparsity if method != "rigl" else 1.1 * (1 - sparsity),
                       inference_flops_ratio=1 - sparsity)
    if method != "dense":
        summary["layers"] = {n: {"shape": [4, 4], "density": d, "sparsified": True} for n, d in LAYERS[dist].items()}
    (run / "summary.json").write_text(json.dumps(summary))
    records = []
    for step in (100, 200, 300):
        rec = {"step": step, "test_accuracy": acc}
        if method != "dense":
            rec.update(density=1 - sparsity, drop_fraction=0.3 * (1 - step / 300))
        if method == "rigl":
            rec["last_update"] = {"step": step - 1, "churn": 0.01 * step / 100, "drop_fraction": 0.1}
        records.append(rec)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for (method, dist, s), accs in ACC.items():
        for seed, acc in enumerate(accs):
            write_run(root, method, dist, s, seed, acc)
    write_run(root / "nested", "set", "uniform", 0.9, 0, 0.0, finished=False)  # unfinished, one level deeper
    return root


def test_groups_are_runs_differing_only_in_seed_with_hand_computed_stats(runs):
    groups = group_runs(load_runs(runs))
    assert len(groups) == len(ACC)  # the unfinished run is not a group
    g = next(g for g in groups if g.get("sparsity.method") == "rigl" and g.get("sparsity.distribution") == "erk"
             and g.get("sparsity.sparsity") == 0.9)
    assert g.n == 3 and g.seeds == [0, 1, 2]
    st = g.stats["test_accuracy"]
    # mean 0.92; sample std sqrt(((-0.02)^2 + 0 + 0.02^2) / 2) = 0.02
    assert st.mean == pytest.approx(0.92) and st.std == pytest.approx(0.02) and st.n == 3
    one = next(g for g in groups if g.get("sparsity.method") == "static")
    assert one.n == 1 and math.isnan(one.stats["test_accuracy"].std)


def test_stat_by_hand():
    s = Stat.of([1.0, 2.0, 4.0])
    assert s.mean == pytest.approx(7 / 3)
    assert s.std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))


def test_write_report_tables_equal_the_fixtures(runs, tmp_path):
    out = tmp_path / "report"
    rep = write_report(runs, out)
    assert rep.markdown.exists() and rep.csv.exists()
    rows = list(csv.DictReader(io.StringIO(rep.csv.read_text())))
    assert len(rows) == len(ACC)
    for (method, dist, s), accs in ACC.items():
        (row,) = [r for r in rows if r["sparsity.method"] == method and r["sparsity.distribution"] == dist
                  and float(r["sparsity.sparsity"]) == s]
        mean = sum(accs) / len(accs)
        assert float(row["test_accuracy_mean"]) == pytest.approx(mean)
        assert int(row["n"]) == len(accs) and row["seeds"] == " ".join(map(str, range(len(accs))))
        if len(accs) > 1:
            std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1))
            assert float(row["test_accuracy_std"]) == pytest.approx(std)
        else:
            assert row["test_accuracy_std"] == ""
    md = rep.markdown.read_text()
    assert "| rigl | 0.9 | erk | 3 | 92.00 ± 2.00 |" in md  # method, sparsity, distribution, n, acc (%)
    assert "| static | 0.9 | uniform | 1 | 85.00 ± – |" in md
    assert "1 unfinished run(s) left out" in md


def test_write_report_writes_every_plot(runs, tmp_path):
    rep = write_report(runs, tmp_path / "report")
    names = {p.name for _, p in rep.figures}
    assert names == {"digits-mlp-accuracy_vs_sparsity.png", "digits-mlp-accuracy_vs_flops.png",
                     "digits-mlp-s0.8-layer_density.png", "digits-mlp-s0.8-dynamics.png", "digits-mlp-s0.8-churn.png",
                     "digits-mlp-s0.9-layer_density.png", "digits-mlp-s0.9-dynamics.png", "digits-mlp-s0.9-churn.png"}
    for _, p in rep.figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        assert f"(plots/{p.name})" in rep.markdown.read_text()


def test_missing_flops_skips_that_plot_with_a_note(tmp_path):
    root = tmp_path / "runs"
    for seed, acc in enumerate((0.9, 0.8)):
        write_run(root, "rigl", "erk", 0.9, seed, acc, flops=False)
    rep = write_report(root, tmp_path / "out")
    assert not any("flops" in p.name for _, p in rep.figures)
    assert any("no training FLOPs" in n for n in rep.notes)
    assert "no training FLOPs" in rep.markdown.read_text()


def test_churn_is_one_point_per_distinct_update():
    records = [{"step": 10, "last_update": {"step": 9, "churn": 0.2}}, {"step": 20, "last_update": {"step": 9, "churn": 0.2}},
               {"step": 30, "last_update": {"step": 29, "churn": 0.1}}, {"step": 40},
               {"step": 50, "last_update": {"step": 45, "churn": 0.0, "reason": "prune"}}]
    assert churn_curve(records) == ([9, 29], [0.2, 0.1])


def test_series_labels_name_small_dense_distribution_and_multiplier(runs):
    groups = group_runs(load_runs(runs))
    g = next(g for g in groups if g.get("sparsity.distribution") == "uniform" and g.get("sparsity.method") == "rigl")
    assert series_label(g, ["sparsity.method", "sparsity.distribution"]) == "rigl uniform"
    g.config["train.multiplier"] = 5.0
    assert series_label(g, ["sparsity.distribution", "train.multiplier"]) == "rigl uniform 5×"
    g.config.update({"sparsity.method": "dense", "model.width": 0.5})
    assert series_label(g, ["sparsity.method", "sparsity.distribution", "model.width"]) == "small_dense"


def test_markdown_shows_only_varying_keys(runs):
    md = markdown_table(group_runs(load_runs(runs)))
    head = md.splitlines()[0]
    assert "distribution" in head and "options" not in head and "width" not in head


def test_options_are_opened_so_only_the_varying_option_is_a_column(tmp_path):
    for dt, acc in ((50, 0.9), (100, 0.8)):
        write_run(tmp_path, "rigl", "erk", 0.9, 0, acc, extra=(f'sparsity.options={{"delta_t": {dt}, "alpha": 0.3}}',))
    md = markdown_table(group_runs(load_runs(tmp_path)))
    head, _, *rows = md.splitlines()
    assert "| delta_t |" in head and "alpha" not in head
    assert sorted(r.split(" | ")[4:7] for r in rows) == [["100", "1", "80.00 ± –"], ["50", "1", "90.00 ± –"]]


def test_report_cli_and_errors(runs, tmp_path, capsys):
    assert main(["report", str(runs), "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    assert "5 groups from 10 runs" in capsys.readouterr().out
    assert not (tmp_path / "r" / "plots").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no finished runs"):
        write_report(tmp_path / "empty")


def test_missing_matplotlib_names_the_extra(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'sparsetrain\[plots\]'"):
        write_report(runs, tmp_path / "r")
    assert write_report(runs, tmp_path / "r2", plot=False).csv.exists()  # tables need no matplotlib
