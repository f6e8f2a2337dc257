"""A tiny LightningModule and data for the Lightning tests (also run as the DDP script:
``python lightning_module.py OUT_JSON``, two CPU processes under strategy='ddp' with gloo)."""
import json
import sys

import torch
from torch import nn

import lightning.pytorch as pl


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return torch.utils.data.TensorDataset(x, (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4:].sum(1) > 0).long())


def loader(batch_size=8):
    return torch.utils.data.DataLoader(data(), batch_size=batch_size, shuffle=False)


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


class Tiny(pl.LightningModule):
    def __init__(self, seed=0, lr=0.1):
        super().__init__()
        self.net, self.lr = net(seed), lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def trainer(**kw):
    opts = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, deterministic=True)
    opts.update(kw)
    return pl.Trainer(**opts)


if __name__ == "__main__":  # the DDP run: every rank reports its masks
    from sparsetrain.integrations.lightning import SparsityCallback
    from sparsetrain.train.distributed import mask_digest

    torch.set_num_threads(1)
    cb = SparsityCallback("rigl", sparsity=0.75, delta_t=2, end_fraction=1.0)
    t = trainer(strategy="ddp", devices=2, max_steps=6, callbacks=[cb])
    t.fit(Tiny(), loader(batch_size=8))
    rank = t.global_rank
    report = {"rank": rank, "world": t.world_size, "digest": mask_digest(cb.engine.masks), "step": cb.engine.step,
              "last_update": cb.engine.last_update["step"],
              "counts": {n: int(m.sum()) for n, m in cb.engine.masks.items()},
              "zeros_ok": all(bool((cb.engine.param(n).detach()[~m] == 0).all()) for n, m in cb.engine.masks.items())}
    with open(f"{sys.argv[1]}.{rank}", "w") as f:
        json.dump(report, f)
