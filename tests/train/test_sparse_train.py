"""`sparsetrain train` on the truly sparse backend (sparsity.backend=sparse): it trains like the
masked-dense backend, reports which layers it compressed and the FLOPs really spent, resumes
bitwise after SIGKILL, and refuses what it cannot do with one-line errors before any run
directory exists."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparsetrain.config import RunConfig, SparsityConfig, run_hash
from sparsetrain.train.checkpoint import load_checkpoint
from helpers import run_cli as cli

STEPS = 90
# the default job (digits MLP) is small, so every layer is forced onto the sparse backend
SPARSE = ["--set", "sparsity.backend=sparse", "--set", 'sparsity.backend_options={"overrides": {"*": "sparse"}}']
RUN = ["train", "--quiet", "--set", f"train.steps={STEPS}", "--set", "train.eval_every=30",
       "--set", "train.checkpoint_every=10", "--set", 'sparsity.options={"delta_t": 7}',
       "--set", "data.batch_size=32"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def summary_of(out_dir: Path) -> dict:
    (run_dir,) = [p for p in Path(out_dir).iterdir() if p.is_dir()]
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same short RigL run on both backends, one thread each; "sparse" builds the model dense
    (the same init as masked), "built" sparse from the start (sparsity.build=auto)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name, extra in (("masked", []), ("sparse", [*SPARSE, "--set", "sparsity.build=dense"]),
                            ("built", SPARSE)):
            d = tmp_path_factory.mktemp(name)
            from sparsetrain.cli import main
            assert main([*RUN, *extra, "--out-dir", str(d)]) == 0
            out[name] = d
    finally:
        torch.set_num_threads(before)
    return out


def test_sparse_backend_trains_like_masked_dense(runs):
    m, s = summary_of(runs["masked"]), summary_of(runs["sparse"])
    assert "backend" not in m
    assert s["backend"] == "sparse" and sorted(s["compressed_layers"]) == sorted(s["layers"])
    assert s["built"] == "dense"
    # exact per-layer counts are the same rule on both backends
    assert {n: v["density"] for n, v in s["layers"].items()} == {n: v["density"] for n, v in m["layers"].items()}
    assert s["achieved_sparsity"] == pytest.approx(m["achieved_sparsity"], abs=1e-12)
    # FLOPs: the counter reads compressed layers' density from the layers themselves
    assert s["inference_flops"] == pytest.approx(m["inference_flops"], rel=1e-9)
    assert s["train_flops"] == pytest.approx(m["train_flops"], rel=1e-9)
    assert s["inference_flops_ratio"] < 0.5
    # the two backends sum in different orders: the runs agree closely, not bitwise
    assert s["final"]["test"]["accuracy"] == pytest.approx(m["final"]["test"]["accuracy"], abs=0.03)
    assert s["final"]["test"]["accuracy"] > 0.5


def test_built_sparse_run_has_the_plans_counts_and_trains(runs):
    m, b = summary_of(runs["masked"]), summary_of(runs["built"])
    assert b["built"] == "sparse"             # sparsity.build=auto: RigL starts from random masks
    assert sorted(b["compressed_layers"]) == sorted(b["layers"])
    assert {n: v["density"] for n, v in b["layers"].items()} == {n: v["density"] for n, v in m["layers"].items()}
    assert b["train_flops"] == pytest.approx(m["train_flops"], rel=1e-9)
    # other init draws than the dense build: a different run of the same recipe, not the same run
    assert b["final"]["test"]["accuracy"] > 0.5


def test_checkpoint_holds_compressed_weights(runs):
    (run_dir,) = [p for p in runs["sparse"].iterdir() if p.is_dir()]
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    keys = set(ck["model"])
    assert any(k.endswith(".values") for k in keys) and not any(k.endswith(".weight") for k in keys)
    # SGD momentum exists for every parameter and has the parameter's size: nnz for compressed layers
    n_params = sum(v.numel() for k, v in ck["model"].items() if k.endswith((".values", ".bias")))
    n_state = sum(st["momentum_buffer"].numel() for st in ck["optimizer"]["state"].values())
    assert n_state == n_params


def test_resume_after_sigkill_is_bitwise(tmp_path, runs):
    cmd = [sys.executable, "-m", "sparsetrain", *RUN, *SPARSE, "--out-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    deadline = time.time() + 240
    try:
        while not list(tmp_path.glob("*/checkpoint.pt")) or \
                load_checkpoint(next(tmp_path.glob("*/checkpoint.pt")))["step"] < 30:
            assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read()}"
            assert time.time() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    (run_dir,) = list(tmp_path.iterdir())
    assert not (run_dir / "summary.json").exists()
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] < STEPS
    done = subprocess.run([sys.executable, "-m", "sparsetrain", "train", "--quiet", "--resume", str(run_dir)],
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    (ref_dir,) = [p for p in runs["built"].iterdir() if p.is_dir()]
    a, b = load_checkpoint(ref_dir / "checkpoint.pt"), load_checkpoint(run_dir / "checkpoint.pt")
    assert a["step"] == b["step"] == STEPS
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for name, mask in a["engine"]["masks"].items():
        assert torch.equal(mask.to_dense(), b["engine"]["masks"][name].to_dense()), name
    assert (ref_dir / "metrics.jsonl").read_text() == (run_dir / "metrics.jsonl").read_text()


def test_gmp_compresses_layers_during_the_run_and_resumes(tmp_path, capsys):
    gmp = ["train", "--quiet", "--set", "train.steps=40", "--set", "train.eval_every=20",
           "--set", "train.checkpoint_every=10", "--set", "data.batch_size=32", "--set", "sparsity.method=gmp",
           "--set", "sparsity.sparsity=0.95", "--set", "sparsity.distribution=erk",
           "--set", 'sparsity.options={"frequency": 5, "end_fraction": 0.5}',
           "--set", "sparsity.backend=sparse", "--set", 'sparsity.backend_options={"min_size": 0}']
    code, _, err = cli([*gmp, "--out-dir", str(tmp_path)], capsys)
    assert code == 0, err
    first = summary_of(tmp_path)
    assert first["built"] == "dense"          # GMP starts dense: sparsity.build=auto builds it dense
    # dense at the start (density 1); ERK at 0.95 takes the hidden layers below max_density 0.1, not the head
    assert first["compressed_layers"] == ["layers.0.weight", "layers.2.weight"]
    assert first["layers"]["layers.4.weight"]["density"] > 0.1
    (run_dir,) = list(tmp_path.iterdir())
    assert {"layers.0.values", "layers.4.weight"} <= set(load_checkpoint(run_dir / "checkpoint.pt")["model"])
    (run_dir / "summary.json").unlink()                               # resume into a fresh, dense model
    code, _, err = cli(["train", "--quiet", "--resume", str(run_dir)], capsys)
    assert code == 0, err
    again = summary_of(tmp_path)
    assert again["compressed_layers"] == first["compressed_layers"]
    assert again["final"] == first["final"] and again["layers"] == first["layers"]


@pytest.mark.parametrize("extra,fragment", [
    (["--set", "sparsity.backend=csr"], "sparsity.backend must be masked or sparse"),
    (["--set", "sparsity.backend=sparse", "--set", "sparsity.method=snip"], "use sparsity.backend=masked"),
    (["--set", "sparsity.backend=sparse", "--set", 'sparsity.backend_options={"max_dens": 0.2}'],
     "unknown sparsity.backend_options"),
    (["--set", 'sparsity.backend_options={"max_density": 0.2}'], "apply to sparsity.backend=sparse only"),
    (["--set", "sparsity.backend=sparse", "--set", 'sparsity.backend_options={"overrides": {"*": "csr"}}'],
     "use 'sparse' or 'dense'"),
    (["--set", "sparsity.backend=sparse", "--set", "sparsity.method=dense"], "trains without masks"),
    (["--set", "sparsity.backend=sparse", "--set", "sparsity.method=gmp", "--set", "sparsity.build=sparse"],
     "use sparsity.build=dense"),
    (["--set", "sparsity.build=sparse"], "needs sparsity.backend=sparse"),
    (["--set", "sparsity.backend=sparse", "--set", "sparsity.build=lazy"], "must be auto, sparse or dense"),
    (["--set", "sparsity.backend=sparse", "--set", 'sparsity.backend_options={"kernel": "cusparse"}'],
     "unknown sparse kernel"),
    (["--set", "sparsity.backend=sparse", "--set", 'sparsity.backend_options={"min_size": "big"}'],
     "sparsity.backend_options.min_size must be an integer"),
    (["--set", "sparsity.backend=sparse", "--set", 'sparsity.backend_options={"cache_transpose": 1}'],
     "sparsity.backend_options.cache_transpose must be true or false"),
])
def test_bad_backend_settings_are_one_line_errors(tmp_path, capsys, extra, fragment):
    code, _, err = cli(["train", "--quiet", "--set", "train.steps=2", *extra, "--out-dir", str(tmp_path)], capsys)
    assert code == 2
    assert fragment in err and "Traceback" not in err
    assert not any(tmp_path.iterdir()), "no run directory for a refused config"


def test_backend_is_hashed_only_when_set():
    base = RunConfig()
    assert run_hash(base) == run_hash(RunConfig(sparsity=SparsityConfig(backend="masked")))
    assert run_hash(base) != run_hash(RunConfig(sparsity=SparsityConfig(backend="sparse")))
    assert run_hash(RunConfig(sparsity=SparsityConfig(backend="sparse"))) != run_hash(
        RunConfig(sparsity=SparsityConfig(backend="sparse", backend_options={"max_density": 0.2})))
    # sparsity.build changes the init draws of a CNN: hashed unless at its default
    assert run_hash(RunConfig(sparsity=SparsityConfig(backend="sparse"))) == run_hash(
        RunConfig(sparsity=SparsityConfig(backend="sparse", build="auto")))
    assert run_hash(RunConfig(sparsity=SparsityConfig(backend="sparse"))) != run_hash(
        RunConfig(sparsity=SparsityConfig(backend="sparse", build="dense")))


def test_backend_options_are_storage_policy_fields():
    import dataclasses
    from sparsetrain.sparsity.backend import BACKEND_OPTIONS, OPTION_TYPES
    from sparsetrain.sparsity.storage import BackendPolicy
    assert set(BACKEND_OPTIONS) == {f.name for f in dataclasses.fields(BackendPolicy)}
    assert set(OPTION_TYPES) == set(BACKEND_OPTIONS)
