"""``sparsetrain sweep --launcher submitit`` with submitit's local executor: one job per run, the
same idempotent run directories as local sweeps, one-line errors for bad executor options
(experiments/submitit_launcher.py)."""
import json

import pytest

from sparsetrain.experiments.run_store import run_dir_for
from sparsetrain.experiments.sweep import build_spec, expand
from helpers import run_cli as cli

pytest.importorskip("submitit", reason="the 'cluster' extra is not installed (pip install 'sparsetrain[cluster]')")


def test_sweep_as_local_submitit_jobs_reuses_run_directories(tmp_path, capsys):
    spec = tmp_path / "sweep.toml"
    spec.write_text('[train]\nsteps = 10\n[grid]\n"sparsity.method" = ["static", "rigl"]\n')
    out = tmp_path / "runs"
    configs = expand(build_spec(str(spec), (), (f"out_dir={out}",)))
    code, stdout, err = cli(["sweep", str(spec), "--out-dir", str(out), "--quiet", "--launcher", "submitit",
                             "--cluster", "local", "--slurm", "timeout_min=5"], capsys)
    assert code == 0 and "2 runs: 2 done, 0 skipped" in stdout, stdout + err
    # the jobs trained in the sweep's own run directories, so a local sweep finds them finished
    assert {p.parent for p in out.rglob("summary.json")} == {run_dir_for(c) for c in configs}
    assert all(json.loads((run_dir_for(c) / "summary.json").read_text())["status"] == "finished" for c in configs)
    assert len(list((out / "submitit").glob("*_log.out"))) == 2  # each job's own log, kept by submitit
    code, stdout, err = cli(["sweep", str(spec), "--out-dir", str(out), "--quiet"], capsys)
    assert code == 0 and "2 runs: 0 done, 2 skipped" in stdout
    code, stdout, err = cli(["sweep", str(spec), "--out-dir", str(out), "--quiet", "--launcher", "submitit",
                             "--cluster", "local"], capsys)
    assert code == 0 and "2 runs: 0 done, 2 skipped" in stdout  # nothing submitted again


def test_bad_executor_options_are_one_line_errors(tmp_path, capsys):
    base = ["sweep", "--set", "train.steps=5", "--out-dir", str(tmp_path), "--launcher", "submitit"]
    code, out, err = cli([*base, "--cluster", "local", "--slurm", "no_such_option=1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "submitit:" in err, err
    code, out, err = cli([*base, "--cluster", "moon"], capsys)
    assert code == 2 and "--cluster must be one of auto, slurm, local, debug" in err
    code, out, err = cli([*base, "--cluster", "local", "--slurm", "timeout_min"], capsys)
    assert code == 2 and "--slurm expects KEY=VALUE" in err
