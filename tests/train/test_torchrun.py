"""`torchrun --nproc_per_node=2 -m sparsetrain train` end to end on CPU (DDP over gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from sparsetrain.train.checkpoint import load_checkpoint
from sparsetrain.train.distributed import mask_digest

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def test_torchrun_two_cpu_processes_keep_identical_masks(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sparsetrain", "train", "--out-dir", str(tmp_path), "--set", "train.device=cpu",
           "--set", "train.steps=40", "--set", "train.eval_every=10", "--set", "train.checkpoint_every=10",
           "--set", 'sparsity.options={"delta_t": 5}']
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run: ") == 1  # only rank 0 reports
    (run_dir,) = tmp_path.iterdir()

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 40
    assert summary["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)
    steps = [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]  # written once (by rank 0), not once per rank

    # At every checkpoint each rank's mask digest is all-gathered (a mismatch stops the run); the
    # final checkpoint holds both ranks' digests, which must equal the digest of the saved masks.
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    assert ck["world_size"] == 2 and ck["step"] == 40
    digests = ck["rank_mask_digests"]
    assert len(digests) == 2 and digests[0] == digests[1] == mask_digest(ck["engine"]["masks"])
    # the masks were really updated under DDP: updates every 5 steps until T_end = 0.75 * 40
    assert ck["engine"]["last_update"]["step"] == 25
