"""Two CPU processes (gloo) under DistributedDataParallel, each with its own data, end with the
same masks and weights for RigL and SET (RigL paper App. M: all-reduced gradients; masks broadcast
from rank 0)."""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sparsetrain import SparsityEngine

WORLD = 2
STEPS = 12


def _gather(t: torch.Tensor) -> list:
    out = [torch.empty_like(t) for _ in range(WORLD)]
    dist.all_gather(out, t)
    return out


def _train(method: str, rank: int, engine_seed: int) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    eng = SparsityEngine(ddp, opt, method, sparsity=0.8, total_steps=STEPS, delta_t=2, end_fraction=1.0,
                         seed=engine_seed)
    init = torch.cat([m.reshape(-1) for m in eng.masks.values()])
    data = torch.Generator().manual_seed(100 + rank)  # different batches on each rank
    for _ in range(STEPS):
        opt.zero_grad()
        x, y = torch.randn(8, 10, generator=data), torch.randint(0, 3, (8,), generator=data)
        nn.functional.cross_entropy(ddp(x), y).backward()
        if eng.after_backward():
            opt.step()
        eng.after_step()
    mask = torch.cat([m.reshape(-1) for m in eng.masks.values()])
    weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return {"masks": _gather(mask.to(torch.uint8)), "weights": _gather(weights),
            "changed": bool((mask != init).any()), "x": _gather(x)}


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    # a file store: no TCP port to race for with other processes on the machine
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        # RigL with one seed; SET with a different engine seed per rank, so only the broadcast
        # from rank 0 can keep its random growth in agreement
        result = {"rigl": _train("rigl", rank, 0), "set": _train("set", rank, rank)}
        if rank == 0:
            torch.save(result, out)
        dist.barrier()  # no rank tears gloo down while its peer is still using it
    finally:
        dist.destroy_process_group()
    # leave without the interpreter's teardown: a gloo thread destroyed there occasionally made
    # a rank abort ("terminate called without an active exception") after all the work was done
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_masks_and_weights_agree_across_ranks(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(str(tmp_path / "store"), out), nprocs=WORLD, join=True)
    result = torch.load(out)
    for method, r in result.items():
        assert not torch.equal(r["x"][0], r["x"][1]), method  # the ranks did see different data
        assert r["changed"], method  # the topology was updated
        assert torch.equal(r["masks"][0], r["masks"][1]), method
        assert torch.equal(r["weights"][0], r["weights"][1]), method
