"""train.amp: bf16 autocast end to end on the CPU, fp16 refused there, the option's spellings and
the run hash of older configs (train/loop.py, train/trainer.py, config.py)."""
import json

import pytest
import torch

from sparsetrain.config import load_config, run_hash
from sparsetrain.sparsity.topk import count_active
from sparsetrain.train.checkpoint import load_checkpoint
from helpers import run_cli as cli


def test_bf16_autocast_on_cpu_end_to_end(tmp_path, capsys):
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--quiet", "--set", "train.amp=bf16",
                          "--set", "train.steps=150", "--set", "train.eval_every=75",
                          "--set", 'sparsity.options={"delta_t": 10}'], capsys)
    assert code == 0, err
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    ck = load_checkpoint(run / "checkpoint.pt")
    engine = ck["engine"]
    assert engine["last_update"]["step"] == 110  # RigL updated every 10 steps up to 0.75 T
    for name, mask in engine["masks"].items():
        w = ck["model"][name]
        assert w.dtype == torch.float32  # autocast computes in bf16, the weights stay fp32
        assert int(mask.sum()) == count_active(mask.numel(), engine["densities"][name])
        assert bool((w[~mask] == 0).all())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # fp32 reaches 0.933 with this recipe (0.936 measured under bf16)
    assert [r["step"] for r in records] == [75, 150] and records[-1]["test_accuracy"] > 0.85


def test_amp_spellings_and_hash_of_older_configs(tmp_path, capsys):
    base = load_config()
    assert base.train.amp == "off"
    assert load_config(overrides=("train.amp=false",)).train.amp == "off"
    assert load_config(overrides=("train.amp=true",)).train.amp == "fp16"
    assert load_config(overrides=("train.amp=BF16",)).train.amp == "bf16"
    # a run written when amp was a boolean keeps its directory: off/fp16 hash as false/true did
    assert run_hash(load_config(overrides=("train.amp=false",))) == run_hash(base)
    assert run_hash(load_config(overrides=("train.amp=bf16",))) != run_hash(base)
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--set", "train.amp=fp8"], capsys)
    assert code == 2 and err.count("\n") == 1 and "train.amp must be one of off, bf16, fp16" in err


def test_fp16_on_cpu_names_bf16(tmp_path, capsys):
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--set", "train.amp=fp16",
                          "--set", "train.device=cpu"], capsys)
    assert code == 2 and "use train.amp=bf16 on the CPU" in err and err.count("\n") == 1
