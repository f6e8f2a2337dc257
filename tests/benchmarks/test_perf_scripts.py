"""The benchmark scripts with --out/--report (sparse_rnn, engine_overhead, cli_end_to_end): tiny
runs store raw samples and machine info, and the reports compute medians and ranges from them."""
import importlib.util
import json
import sys

import pytest
from helpers import ROOT


def load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sparse_rnn = load("sparse_rnn")
engine_overhead = load("engine_overhead")
cli_end_to_end = load("cli_end_to_end")
perf_common = load("perf_common")

MACHINE = {"cpu": "x86_64", "cpus": 2, "torch": "2.x", "threads": 2, "loadavg_before": [1.0, 1, 1],
           "loadavg_after": [1.5, 1, 1], "started": "s", "finished": "f"}


def assert_machine(m):
    assert {"cpus", "torch", "threads", "loadavg_before", "loadavg_after", "started", "finished"} <= set(m)
    assert m["started"].endswith("UTC") and len(m["loadavg_before"]) == 3


def test_select_tables_picks_blocks_between_blank_lines():
    text = "| a |\n|---|\n\n**b**\n\n| c |\n"
    assert perf_common.select_tables(text, "1") == "| a |\n|---|"
    assert perf_common.select_tables(text, "2-3") == "**b**\n\n| c |"
    with pytest.raises(SystemExit):
        perf_common.select_tables(text, "4")


def test_sparse_rnn_stores_every_step_and_reports_median_and_range(tmp_path, capsys):
    out = tmp_path / "rnn.json"
    sparse_rnn.main(["--configs", "lstm:16,gru:8", "--seq", "3", "--batch", "2", "--densities", "0.5", "0.25",
                     "--rounds", "3", "--per-round", "2", "--threads", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert_machine(res["machine"])
    assert [(c["cell"], c["hidden"]) for c in res["configs"]] == [("lstm", 16), ("gru", 8)]
    for c in res["configs"]:
        assert list(c["step_ms"]) == ["dense", "0.5", "0.25"]
        assert all(len(rounds) == 3 and all(len(r) == 2 for r in rounds) for rounds in c["step_ms"].values())
    printed = capsys.readouterr().out
    assert sparse_rnn.report(res) in printed
    assert "| LSTM 16 |" in printed and "| GRU 8 |" in printed


def test_sparse_rnn_report_from_hand_made_samples():
    res = {"machine": MACHINE, "configs": [{
        "cell": "lstm", "hidden": 1500, "seq": 35, "batch": 20, "rounds": 3, "per_round": 2,
        "loadavg_before": [2.0], "loadavg_after": [3.0],
        "step_ms": {"dense": [[10, 10], [12, 12], [11, 11]], "0.1": [[4, 6], [4, 4], [6, 6]]}}]}
    lines = sparse_rnn.report(res).split("\n")
    assert lines[0] == "| layer | density 1 (torch), ms median [min–max] | density 0.1 |"
    # round means: dense 10, 12, 11; sparse 5, 4, 6 → ratio of medians 5 / 11
    assert lines[2] == "| LSTM 1500 | 11.0 [10.0–12.0] | 5.0 [4.0–6.0] (0.45×) |"
    assert "load average 2.0–3.0" in lines[-1]


def test_engine_overhead_keeps_at_least_ten_update_samples(tmp_path, capsys):
    out = tmp_path / "eo.json"
    engine_overhead.main(["--models", "mlp", "--threads", "1", "--repeats", "2", "--steps", "5", "--out", str(out)])
    res = json.loads(out.read_text())
    assert_machine(res["machine"])
    (run,) = res["runs"]
    raw = run["models"]["MLP 784-300-100-10, batch 128"]
    assert [len(r) for r in raw["update"]["hooks"]] == [5, 5]
    assert set(raw) == {"plain", "engine", "update"} and set(raw["engine"]) == {"step", "hooks"}
    assert "(10) |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        engine_overhead.main(["--models", "mlp", "--threads", "1", "--repeats", "3", "--steps", "3"])


def test_engine_overhead_report_from_hand_made_samples():
    raw = {"plain": {"step": [[0.010] * 2, [0.012] * 2, [0.011] * 2], "opt": [[0.001] * 2] * 3},
           "engine": {"step": [[0.011] * 2] * 3, "hooks": [[0.0005] * 2, [0.0004] * 2, [0.0006] * 2]},
           "update": {"hooks": [[0.020] * 2, [0.030] * 2, [0.022] * 2]}}
    res = {"machine": MACHINE, "runs": [{"threads": 2, "repeats": 3, "steps": 2, "models": {"MLP": raw}}]}
    row = engine_overhead.report(res).split("\n")[2]
    assert row == ("| MLP | 2 | 11.00 [10.00–12.00] | 0.500 [0.400–0.600] | 0.045 | 22.00 [20.00–30.00] (6) "
                   "| 2.00 |")


def _cli_run(variant, wall, acc, rss, **extra):
    return {"variant": variant, "wall_s": wall, "test_accuracy": acc, "peak_rss_mb": rss, "steps": 937,
            "loadavg_before": [2.0], "loadavg_after": [2.5], **extra}


def test_cli_end_to_end_report_from_hand_made_runs():
    res = {"machine": MACHINE, "recipe": {"dataset": "mnist", "hidden": "4096,4096,4096", "sparsity": 0.99},
           "runs": [_cli_run("masked", 400.0, 0.9463, 2580.0), _cli_run("sparse", 30.0, 0.946, 1280.0),
                    _cli_run("sparse", 32.0, 0.947, 1300.0), _cli_run("sparse", 20.0, 0.945, 1290.0)],
           "skipped": {"sparseprop": "sparseprop is not installed"}}
    lines = cli_end_to_end.report(res).split("\n")
    assert lines[2] == "| masked (dense weights × masks) | 400.0 s | 94.63 % | 2.52 GB |"
    assert lines[3] == "| sparse (default kernel: native where built) | 30.0 s [20.0–32.0] (3) | 94.60 % [94.50–94.70] (3) | 1.26 GB [1.25–1.27] (3) |"
    assert lines[4].endswith("| not run: sparseprop is not installed | – | – |")
    res["runs"][0]["error"] = "Traceback ..."
    assert cli_end_to_end.report(res).split("\n")[2] == "| masked (dense weights × masks) | failed | – | – |"


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "MNIST").is_dir(), reason="MNIST not in ../shared/data")
def test_cli_end_to_end_runs_sparsetrain_and_reads_its_summary(tmp_path, capsys):
    out = tmp_path / "cli.json"
    cli_end_to_end.main(["--variants", "sparse", "--hidden", "128", "--sparsity", "0.9", "--steps", "2",
                         "--threads", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert_machine(res["machine"])
    (run,) = res["runs"]
    assert run["returncode"] == 0 and "error" not in run, run.get("error")
    assert run["steps"] == 2 and 0.0 <= run["test_accuracy"] <= 1.0
    assert run["compressed_layers"] == ["layers.0.weight"]  # 784 x 128 is the one layer above min_size
    assert run["peak_rss_mb"] > 50 and run["wall_s"] > run["train_wall_s"] > 0
    assert "sparsity.backend=sparse" in run["command"]
    assert "| sparse (default kernel: native where built) | " in capsys.readouterr().out
