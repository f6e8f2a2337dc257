"""The queue of benchmarks/repro_runs.py: what each block holds, in which order (no run is started)."""
import argparse
import importlib.util
import sys
from collections import Counter

from helpers import ROOT, SHARED_DATA

sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("repro_runs", ROOT / "benchmarks" / "repro_runs.py")
repro = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = repro
_spec.loader.exec_module(repro)

ARGS = argparse.Namespace(ptb_scale=0.25, fashion_scale=0.1, lrs=(0.1, 0.03, 0.01), fashion_seeds=3,
                          lottery_seeds=(0, 1, 2), lottery_sparsities=(0.9, 0.95, 0.98))


def test_blocks_hold_the_planned_runs(tmp_path):
    q = repro.build_queue(["core_full", "rigl5x", "ptb", "lottery", "fashion_lr"], tmp_path, SHARED_DATA, ARGS)
    by_block = Counter(j.block for j in q)
    # core: (static, set, rigl, rigl ERK, gmp) x 3 sparsities x 5 seeds + 5 dense; RigL 5x: 15 more
    # ptb: (dense + 5 methods x 2 sparsities) x 3 seeds; lottery: 7 methods x 3 x 3 + dense per seed
    # fashion: (dense + 4 methods x 2 sparsities) x 3 learning rates x 5 seeds
    assert by_block == {"core_full": 95, "ptb": 33, "lottery": 66, "fashion_lr": 135}
    from sparsetrain.experiments.run_store import run_dir_for
    assert len({run_dir_for(j.cfg) for j in q}) == len(q)  # no run twice
    core = [j for j in q if j.block == "core_full" and j.label != "rigl_5x"]
    assert all(j.cfg.train.epochs == 20 and j.cfg.train.multiplier == 1 for j in core)
    assert sorted({j.cfg.seed for j in core}) == [0, 1, 2, 3, 4]
    ptb = [j for j in q if j.block == "ptb"]
    assert [j.cfg.seed for j in ptb] == sorted(j.cfg.seed for j in ptb)  # one complete seed after another
    assert all(j.cfg.train.epochs == 1.0 for j in ptb)
    lottery = [j for j in q if j.block == "lottery"]
    assert lottery[0].label == "IMP" and all(j.checks == repro.SANITY_CHECKS for j in lottery if j.label != "dense")
    fashion = [j for j in q if j.block == "fashion_lr"]
    assert all(j.cfg.data.val_size == 10000 for j in fashion) and {j.cfg.optim.lr for j in fashion} == {0.1, 0.03, 0.01}
