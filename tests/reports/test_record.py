"""Run records (JSON Lines): what is kept, what is dropped, byte-stable writes, and that tables
built from records equal those built from the run directories."""
from __future__ import annotations

import json
from pathlib import Path

from sparsetrain.config import load_config, to_dict
from sparsetrain.reports import group_runs, load_runs, markdown_table
from sparsetrain.reports.record import extract, read_raw, read_records, write_records


def write_run(root: Path, method: str, seed: int, acc: float, sanity: bool = False) -> Path:
    cfg = load_config(overrides=(f"sparsity.method={method}", "sparsity.sparsity=0.9", f"seed={seed}",
                                 f"out_dir={root}", "data.root=/somewhere/data", "train.device=cpu"))
    run = root / f"mnist-mlp-{method}-s0.9-{seed}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({**to_dict(cfg), "_hash": "x"}))
    summary = {"final": {"test": {"accuracy": acc}}, "achieved_sparsity": 0.9, "wall_time_s": 2.0,
               "run_dir": str(run), "layers": {"fc1.weight": {"shape": [4, 4], "density": 0.1}}}
    (run / "summary.json").write_text(json.dumps(summary))
    rows = [{"step": 10, "density": 0.1, "drop_fraction": 0.3, "train_loss": 1.0, "lr": 0.1},
            {"step": 20, "train_loss": 0.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if sanity:
        (run / "sanity.json").write_text(json.dumps({"run_dir": str(run), "checks": {"shuffle": {"test_accuracy": 0.5}}}))
        check = run / "sanity" / "shuffle"
        check.mkdir(parents=True)
        (check / "config.json").write_text((run / "config.json").read_text())
        (check / "summary.json").write_text(json.dumps({"final": {"test": {"accuracy": 0.5}}, "wall_time_s": 3.0}))
    return run


def fixture_runs(root: Path) -> Path:
    for seed, acc in enumerate((0.91, 0.93, 0.92)):
        write_run(root, "rigl", seed, acc, sanity=seed == 0)
    for seed, acc in enumerate((0.88, 0.87)):
        write_run(root, "static", seed, acc)
    return root


def test_record_keeps_results_drops_places(tmp_path):
    recs = {r["run"]: r for r in extract(fixture_runs(tmp_path / "runs"), "box, 2 cores")}
    assert len(recs) == 5  # the sanity/shuffle directory belongs to its run, it is no run of its own
    r = recs["mnist-mlp-rigl-s0.9-0"]
    assert r["device"] == "cpu" and r["machine"] == "box, 2 cores"
    assert "out_dir" not in r["config"] and "root" not in r["config"]["data"] and "device" not in r["config"]["train"]
    assert r["config"]["seed"] == 0 and r["config"]["sparsity"]["method"] == "rigl"
    assert "run_dir" not in r["summary"] and r["summary"]["final"]["test"]["accuracy"] == 0.91
    assert r["summary"]["sanity"] == {"checks": {"shuffle": {"test_accuracy": 0.5}}, "wall_time_s": {"shuffle": 3.0}}
    # metrics: only the plot keys, only rows with more than the step, only for the lowest seed of a group
    assert r["metrics"] == [{"step": 10, "density": 0.1, "drop_fraction": 0.3}]
    assert "metrics" not in recs["mnist-mlp-rigl-s0.9-1"] and "metrics" in recs["mnist-mlp-static-s0.9-0"]


def test_tables_from_records_equal_tables_from_runs(tmp_path):
    root = fixture_runs(tmp_path / "runs")
    path = tmp_path / "rec.jsonl"
    write_records(extract(root, "box"), path)
    runs = [r for r in load_runs(root) if "sanity" not in r.run_dir.parts]  # a check's retraining is no run
    from_runs = markdown_table(group_runs(runs), metrics=["test_accuracy", "achieved_sparsity"])
    from_recs = markdown_table(group_runs(read_records(path)), metrics=["test_accuracy", "achieved_sparsity"])
    assert from_recs == from_runs and "92.00 ± 1.00" in from_recs  # rigl: mean 0.92, sample std 0.01
    assert [r.seed for r in read_records(path, {"sparsity.method": "static"})] == [0, 1]


def test_writes_are_byte_stable_and_merge_by_run_name(tmp_path):
    root = fixture_runs(tmp_path / "runs")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    recs = extract(root, "box")
    write_records(recs, a)
    write_records(list(reversed(recs)), b)
    assert a.read_bytes() == b.read_bytes()
    assert [r["run"] for r in read_raw(a)] == sorted(r["run"] for r in recs)
    changed = dict(recs[0], machine="other")
    assert write_records([changed, dict(recs[0], run="new-run")], a) == len(recs) + 1
    got = {r["run"]: r for r in read_raw(a)}
    assert got[recs[0]["run"]]["machine"] == "other" and got[recs[1]["run"]]["machine"] == "box"
