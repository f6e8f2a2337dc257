"""`sparsetrain train --set sparsity.pattern=...`: the pattern reaches the masks and summary.json;
a bad pattern or combination is one stderr line and exit code 2."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import run_cli as cli

FAST = ["--set", "train.steps=20", "--set", "train.eval_every=10", "--set", "sparsity.options.delta_t=5"]


def test_train_with_a_2_4_pattern_reports_it(tmp_path, capsys):
    code, out, err = cli(["train", "--out-dir", str(tmp_path), *FAST, "--set", "sparsity.pattern=2:4",
                          "--set", "sparsity.sparsity=0.5"], capsys)
    assert code == 0, err
    (run_dir,) = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["pattern"] == "2:4"
    assert summary["achieved_sparsity"] == pytest.approx(0.5)
    assert {v["pattern"] for v in summary["layers"].values()} == {"2:4"}
    engine = torch.load(run_dir / "checkpoint.pt", weights_only=False)["engine"]
    for mask in engine["masks"].values():
        assert bool((mask.reshape(-1, 4).sum(1) == 2).all())


@pytest.mark.parametrize("sets,match", [
    (["sparsity.pattern=2:4"], "sparsity.sparsity=0.5"),
    (["sparsity.pattern=3:7", "sparsity.sparsity=0.5714285714"], "divisible by 7"),
    (["sparsity.pattern=diagonal"], "unknown sparsity pattern"),
    (["sparsity.pattern=channel", "sparsity.backend=sparse"], "backend=masked"),
    (["sparsity.pattern=channel", "sparsity.method=dense"], "remove sparsity.pattern"),
])
def test_bad_pattern_is_one_line_and_exit_2(tmp_path, capsys, sets, match):
    args = ["train", "--out-dir", str(tmp_path), *FAST]
    for s in sets:
        args += ["--set", s]
    code, out, err = cli(args, capsys)
    assert code == 2 and match in err and err.count("\n") == 1, err
