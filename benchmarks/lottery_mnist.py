"""Lottery tickets on MNIST: accuracy and time-to-ticket of IMP, Gem-Miner, edge-popup, SNIP, GraSP,
SynFlow, random (static) and GMP with LeNet-300-100 at 95% sparsity, plus the sanity checks.

Every run is an ordinary ``sparsetrain train`` run (idempotent: rerunning skips finished runs and
resumes interrupted ones); the sanity checks are ``sparsetrain sanity RUN_DIR``. Results go to
docs/lottery.md (table + the equivalent CLI commands), its raw output to docs/lottery_results.json
(and a copy next to the runs). The multi-seed lottery table at 90/95/98 % is in docs/results.md.

    python benchmarks/lottery_mnist.py --data-dir ../shared/data            # about 12 min on 1 CPU thread
    python benchmarks/lottery_mnist.py --data-dir ../shared/data --epochs 1 --out-dir /tmp/lt  # smoke

Short schedules on purpose (the brief of this benchmark): every weight training lasts ``--epochs``
epochs (IMP: every round; Gem-Miner / edge-popup: the fine-tuning after ``2 × epochs`` of mining).
"""
from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from sparsetrain.config import load_config
from sparsetrain.experiments.sanity import sanity
from sparsetrain.experiments.run_store import run_dir_for, train_run

ROOT = Path(__file__).resolve().parents[1]


def base_overrides(args) -> List[str]:
    return [f"data.name={args.dataset}", f"data.root={args.data_dir}", "data.batch_size=128",
            "model.name=lenet300", f"sparsity.sparsity={args.sparsity}", "sparsity.distribution=erk",
            "optim.lr=0.1", "optim.weight_decay=1e-4", "train.progress=off", f"out_dir={args.out_dir}",
            f"seed={args.seed}"]


def methods(epochs: int) -> Dict[str, Tuple[str, List[str]]]:
    """name -> (method, extra overrides). Mining lasts 2 × epochs; every weight training ``epochs``."""
    mine = 2 * epochs
    gm = {"freeze_period": max(1, mine // 3), "reg_lambda": 1e-5, "mine_lr": 10.0,
          "weight_init": "signed_constant", "finetune": 0.5}
    ep = {"mine_lr": 0.1, "weight_init": "signed_constant", "finetune": 0.5}
    same = [f"train.epochs={epochs}"]
    return {
        "dense": ("dense", same),
        "small_dense": ("small_dense", same),
        "random (static)": ("static", same),
        "SNIP": ("snip", same),
        "GraSP": ("grasp", same),
        "SynFlow": ("synflow", same),
        "GMP": ("gmp", same),
        "IMP": ("imp", same),
        "edge-popup": ("edge_popup", [f"train.epochs={mine}", f"sparsity.options={json.dumps(ep)}"]),
        "Gem-Miner": ("gem_miner", [f"train.epochs={mine}", f"sparsity.options={json.dumps(gm)}"]),
    }


SANITY = ("IMP", "Gem-Miner", "edge-popup", "SNIP", "SynFlow")


def config_of(args, method: str, extra: Sequence[str]):
    return load_config(overrides=tuple(base_overrides(args) + [f"sparsity.method={method}"] + list(extra)))


def cli_command(args, method: str, extra: Sequence[str]) -> str:
    sets = [o for o in base_overrides(args) + [f"sparsity.method={method}"] + list(extra)
            if not o.startswith(("out_dir=", "data.root=", "train.progress="))]
    return "sparsetrain train --data-dir DATA --out-dir RUNS " + " ".join(f"--set {shlex.quote(o)}" for o in sets)


def row(name: str, s: dict) -> dict:
    """The numbers of one finished run that the table shows."""
    method = s["method"]
    ticket = (s.get(method) or {}).get("ticket") if isinstance(s.get(method), dict) else None
    ttt = s.get("time_to_ticket") or {}
    return {"name": name, "method": method, "test_accuracy": s["final"]["test"]["accuracy"],
            "density": s.get("achieved_density"), "ticket_accuracy": (ticket or {}).get("test_accuracy"),
            "ticket_epochs": ttt.get("epochs"), "ticket_wall_s": ttt.get("wall_time_s"),
            "ticket_flops": ttt.get("train_flops"), "total_epochs": s["epochs"], "wall_s": s["wall_time_s"],
            "dense_flops": s.get("inference_flops_dense"), "run_dir": s["run_dir"],
            "layers": {k: round(v["density"], 4) for k, v in (s.get("layers") or {}).items()}}


def fmt(x, spec: str, none: str = "–") -> str:
    return none if x is None else format(x, spec)


def table(rows: List[dict], sanity_results: Dict[str, dict]) -> str:
    lines = ["| method | density | test acc. | ticket acc. before weight training | time-to-ticket: epochs | "
             "wall s | train FLOPs (× 1 dense epoch) | shuffle | reinit | invert |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        epoch_flops = 3 * (r["dense_flops"] or 0) * 60000 if r["dense_flops"] else None
        flops = None if r["ticket_flops"] is None or not epoch_flops else r["ticket_flops"] / epoch_flops
        checks = sanity_results.get(r["name"], {}).get("checks", {})
        cells = [fmt(checks.get(c, {}).get("test_accuracy"), ".4f", "–") for c in ("shuffle", "reinit", "invert")]
        lines.append(f"| {r['name']} | {fmt(r['density'], '.4f')} | {r['test_accuracy']:.4f} | "
                     f"{fmt(r['ticket_accuracy'], '.4f')} | {fmt(r['ticket_epochs'], '.2f')} | "
                     f"{fmt(r['ticket_wall_s'], '.1f')} | {fmt(flops, '.2f')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def imp_rounds(summary: dict) -> str:
    rounds = summary.get("imp", {}).get("rounds", [])
    lines = ["| round | density | test acc. |", "|---|---|---|"]
    lines += [f"| {r['round']} | {r['density']:.4f} | {r['test_accuracy']:.4f} |" for r in rounds]
    return "\n".join(lines)


def compute_minutes(rows: List[dict]) -> float:
    """Wall time of every run and sanity retraining, from their summaries (cached runs included)."""
    total = sum(r["wall_s"] for r in rows)
    for r in rows:
        for f in Path(r["run_dir"]).glob("sanity/*/summary.json"):
            total += json.loads(f.read_text())["wall_time_s"]
    return total / 60


def write_doc(args, rows, sanity_results, summaries, cmds) -> None:
    imp = summaries.get("IMP", {})
    width = summaries.get("small_dense", {}).get("model_width")
    doc = f"""# Lottery tickets on {args.dataset}: LeNet-300-100 at {args.sparsity:.0%} sparsity

Measured by `benchmarks/lottery_mnist.py` (seed {args.seed}, one CPU thread shared with other
jobs, {compute_minutes(rows):.0f} min of training in all). Every weight training lasts {args.epochs} epochs (batch 128, SGD 0.1 Nesterov, cosine, wd 1e-4):
IMP trains each round that long, Gem-Miner and edge-popup fine-tune that long after
{2 * args.epochs} epochs of mining. The layer-wise distribution is ERK (every layer sparsified);
IMP, Gem-Miner, GraSP and SynFlow prune globally, SNIP and edge-popup per layer at the ERK counts.
Short schedules: the numbers compare methods under one small budget, not the papers' budgets.

- *test acc.*: after the method's final weight training; *ticket acc.*: the mined mask on the
  frozen init weights, before any weight training (Gem-Miner, edge-popup).
- *time-to-ticket*: training spent until the mask is final (IMP counts every round before the
  last; SNIP/GraSP use one batch, SynFlow none: 0 epochs), its wall time and its training FLOPs
  in units of one dense training epoch (3·f_D per example, {60000} examples).
- *shuffle / reinit / invert*: the sanity checks of Frankle et al. (ICLR 2021), each variant
  retrained with the same static recipe for {args.epochs} epochs (`sparsetrain sanity`). A ticket
  whose accuracy drops under a check depends on what the check destroys.

{table(rows, sanity_results)}

Small-Dense is LeNet-300-100 at width {fmt(width, '.4f')}: as large as the sparse model
(nonzeros + mask bits / 32, the size rule of docs/methods.md).

IMP rounds (density of the sparsified layers, test accuracy after the round's training):

{imp_rounds(imp)}

## How the methods run here

- **Phases.** Multi-phase methods declare phases (`sparsetrain/sparsity/run.py`); the Trainer
  runs the unchanged train loop once per phase with a fresh optimizer and LR schedule, the
  checkpoint records the phase and every metrics.jsonl row its name (`round3`, `mine`, ...).
- **SNIP / GraSP / SynFlow** prune before step 0 (SNIP, GraSP: on the first training batch, which
  is then also trained on; SynFlow: no data, an all-ones input to a float64 |θ| copy, 100 rounds,
  exponential schedule). Used with only the engine in a plain loop, SNIP prunes at the first
  `after_backward` and skips that SGD step, as the RigL code does. GraSP uses one batch and
  temperature 200, global by default.
- **IMP** prunes ceil(0.2·remaining) by global magnitude per round, the last round exactly to
  the target count (0.8^k otherwise), rewinds weights and buffers to init (or step k) and
  restarts optimizer and LR schedule; each round trains the full length (open_lth continues the
  schedule from step k instead).
- **edge-popup** keeps the top-k |score| per layer (k from ERK), straight-through to the
  scores through |·|; **Gem-Miner** follows Sreenivasan et al. (scores in [0, 1], r(p) = 1[p ≥ 0.5]
  with STE, clamp, λ·Σp², global freezing at ρ = 1 − d^(1/n) every T epochs, the rounded mask
  q ⊙ r(p) at the end). Ties among clipped scores are broken at random (seeded); with the lower-index rule a
  global selection would favour the first layer. Mining here uses signed-constant weights,
  Gem-Miner λ = 1e-5 and score LR 10 (tuned for the short budget), edge-popup score LR 0.1.
- **Sanity checks** retrain every variant as a static sparse run with the run's recipe, from
  the ticket's unmasked init weights (shuffle, invert: newly enabled weights start at their init
  values, as in Frankle et al.) or a fresh default init (reinit).

## Commands

Everything: `python benchmarks/lottery_mnist.py --data-dir ../shared/data` (idempotent). One run each:

```
""" + "\n".join(cmds) + """
sparsetrain sanity RUNS/<run directory> --checks shuffle,reinit,invert
```
"""
    out = ROOT / "docs" / "lottery.md"
    out.write_text(doc)
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out-dir", default=str(ROOT / "runs" / "lottery"))
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion_mnist"))
    p.add_argument("--sparsity", type=float, default=0.95)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-doc", action="store_true", help="print only; do not write docs/lottery.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows, summaries, sanity_results, cmds = [], {}, {}, []
    for name, (method, extra) in methods(args.epochs).items():
        cfg = config_of(args, method, extra)
        t = time.time()
        summaries[name] = train_run(cfg)
        rows.append(row(name, summaries[name]))
        cmds.append(cli_command(args, method, extra))
        print(f"{name:16s} acc {rows[-1]['test_accuracy']:.4f}  ({time.time() - t:.0f}s)", flush=True)
        if name in SANITY:
            sanity_results[name] = sanity(run_dir_for(cfg), ("shuffle", "reinit", "invert"))
            print(f"{'':16s} sanity {json.dumps(sanity_results[name]['checks'])}", flush=True)
    result = {"rows": rows, "sanity": sanity_results, "args": vars(args)}
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / "lottery_results.json").write_text(json.dumps(result, indent=2))
    print(table(rows, sanity_results))
    if not args.no_doc:  # the raw output the page is made from, committed beside it
        (ROOT / "docs" / "lottery_results.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        write_doc(args, rows, sanity_results, summaries, cmds)


if __name__ == "__main__":
    main()
