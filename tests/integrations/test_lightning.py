"""Lightning adapter (sparsetrain/integrations/lightning.py) with a real lightning.Trainer: the
same masks and weights as sparsetrain's plain loop, accumulation + clipping + bf16 autocast on
the CPU, resume from a Lightning checkpoint, DDP with gloo on 2 processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning", reason="the 'lightning' extra is not installed (pip install 'sparsetrain[lightning]')")

from sparsetrain import SparsityEngine  # noqa: E402
from sparsetrain.integrations.lightning import SparsityCallback  # noqa: E402
from sparsetrain.sparsity.topk import count_active  # noqa: E402
from lightning_module import Tiny, loader, net, trainer  # noqa: E402

HERE = Path(__file__).resolve().parent
OPTS = dict(delta_t=3, end_fraction=1.0, seed=0)


def check_masks(engine):
    for name, mask in engine.masks.items():
        assert int(mask.sum()) == count_active(mask.numel(), engine.densities[name]), name
        assert bool((engine.param(name).detach()[~mask] == 0).all()), name


def test_same_masks_and_weights_as_the_plain_loop():
    cb = SparsityCallback("rigl", sparsity=0.8, **OPTS)
    module = Tiny()
    trainer(max_steps=16, callbacks=[cb]).fit(module, loader())
    # the reference: sparsetrain's own two hooks in a plain loop over the same batches
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    eng = SparsityEngine(model, opt, "rigl", sparsity=0.8, total_steps=16, **OPTS)
    ran = []
    for step, (x, y) in zip(range(16), list(loader()) * 2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        ran.append(eng.step_optimizer())
    assert ran.count(False) == 5  # updates at steps 3, 6, 9, 12, 15 skip the SGD step
    assert cb.engine.step == 16 and cb.engine.last_update["step"] == 15 == eng.last_update["step"]
    assert all(torch.equal(cb.engine.masks["net." + n], m) for n, m in eng.masks.items())
    for (n, a), b in zip(module.net.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    check_masks(cb.engine)


def test_accumulation_clipping_and_bf16_autocast():
    cb = SparsityCallback("snfs", sparsity=0.8, delta_t=2, end_fraction=1.0)
    t = trainer(max_steps=6, callbacks=[cb], accumulate_grad_batches=2, gradient_clip_val=0.5,
                precision="bf16-mixed")
    t.fit(Tiny(), loader())
    assert t.global_step == 6 and cb.engine.step == 6  # one engine step per optimizer step
    assert cb.engine.last_update["step"] == 4 and cb.engine.overflow_steps == 0
    assert set(cb.engine.method.ema) == set(cb.engine.masks)  # the gradient average ran
    check_masks(cb.engine)


def test_resume_from_a_lightning_checkpoint_gives_the_same_masks(tmp_path):
    # one schedule for all (total_steps=16: 2 epochs of 8 batches); the break is at the epoch's end
    full = SparsityCallback("set", sparsity=0.8, total_steps=16, **OPTS)
    m_full = Tiny()
    trainer(max_epochs=2, callbacks=[full]).fit(m_full, loader())

    first = SparsityCallback("set", sparsity=0.8, total_steps=16, **OPTS)
    t = trainer(max_epochs=1, callbacks=[first])
    t.fit(Tiny(), loader())
    t.save_checkpoint(tmp_path / "half.ckpt")
    second = SparsityCallback("set", sparsity=0.8, total_steps=16, **OPTS)
    m_resumed = Tiny(seed=1)  # other initial weights: the checkpoint's must win
    trainer(max_epochs=2, callbacks=[second]).fit(m_resumed, loader(), ckpt_path=tmp_path / "half.ckpt")
    assert second.engine.step == 16 and second.engine.last_update == full.engine.last_update
    assert all(torch.equal(second.engine.masks[n], m) for n, m in full.engine.masks.items())
    for a, b in zip(m_resumed.state_dict().values(), m_full.state_dict().values()):
        torch.testing.assert_close(a, b)
    check_masks(second.engine)


@pytest.mark.slow
def test_ddp_with_gloo_on_two_processes(tmp_path):
    out = tmp_path / "rank.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    proc = subprocess.run([sys.executable, str(HERE / "lightning_module.py"), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2] and reports[0]["digest"] == reports[1]["digest"]
    for r in reports:
        assert r["step"] == 6 and r["last_update"] == 4 and r["zeros_ok"]
        assert r["counts"] == reports[0]["counts"]
