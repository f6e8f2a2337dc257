"""``sparsetrain sweep --launcher submitit`` with submitit's local executor: one job per run, the
same idempotent run directories as local sweeps, one-line errors for bad executor options
(experiments/submitit_launcher.py)."""
import json

import pytest

from helpers import run_cli as cli

pytest.importorskip("submitit", reason="the 'cluster' extra is not installed (pip install 'sparsetrain[cluster]')")


def test_sweep_as_local_submitit_jobs_reuses_run_directories(tmp_path, capsys):
    spec = tmp_path / "sweep.toml"
    spec.write_text('[train]\nsteps = 10\n[grid]\n"sparsity.method" = ["static", "rigl"]\n')
    out = tmp_path / "runs"
    # one run done by the local launcher first: the submitit sweep must skip it, not resubmit it
    code, stdout, err = cli(["sweep", "--set", "train.steps=10", "--set", "sparsity.method=static",
                             "--out-dir", str(out), "--quiet"], capsys)
    assert code == 0 and "1 runs: 1 done" in stdout, err
    code, stdout, err = cli(["sweep", str(spec), "--out-dir", str(out), "--quiet", "--launcher", "submitit",
                             "--cluster", "local", "--slurm", "timeout_min=5"], capsys)
    assert code == 0 and "2 runs: 1 done, 1 skipped" in stdout, stdout + err
    summaries = {p.parent.name.split("-")[2]: json.loads(p.read_text()) for p in out.rglob("summary.json")}
    assert set(summaries) == {"static", "rigl"} and summaries["rigl"]["status"] == "finished"
    assert list((out / "submitit").glob("*_0_log.out"))  # the job's own log, kept by submitit
    code, stdout, err = cli(["sweep", str(spec), "--out-dir", str(out), "--quiet", "--launcher", "submitit",
                             "--cluster", "local"], capsys)
    assert code == 0 and "2 runs: 0 done, 2 skipped" in stdout


def test_bad_executor_options_are_one_line_errors(tmp_path, capsys):
    base = ["sweep", "--set", "train.steps=5", "--out-dir", str(tmp_path), "--launcher", "submitit"]
    code, out, err = cli([*base, "--cluster", "local", "--slurm", "no_such_option=1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "submitit:" in err, err
    code, out, err = cli([*base, "--cluster", "moon"], capsys)
    assert code == 2 and "--cluster must be one of auto, slurm, local, debug" in err
    code, out, err = cli([*base, "--cluster", "local", "--slurm", "timeout_min"], capsys)
    assert code == 2 and "--slurm expects KEY=VALUE" in err
