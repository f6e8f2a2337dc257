"""Hugging Face adapter (sparsetrain/integrations/huggingface.py) with a real transformers.Trainer
on a tiny BERT built from a config (2 layers, hidden 64) and synthetic batches: the default
layers, exact masks, skipped optimizer steps (SparseTrainer) or not (the callback's default), and
exact resume from a Trainer checkpoint."""
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the 'hf' extra is not installed "
                                   "(pip install 'sparsetrain[hf]')")
pytest.importorskip("accelerate", reason="the 'hf' extra is not installed (pip install 'sparsetrain[hf]')")

from sparsetrain.errors import CheckpointError  # noqa: E402
from sparsetrain.integrations.huggingface import ENGINE_FILE, SparseTrainer, SparsityCallback  # noqa: E402
from sparsetrain.sparsity.topk import count_active  # noqa: E402

SPARSE = dict(method="rigl", sparsity=0.8, delta_t=3, end_fraction=1.0)


def tiny_bert(seed=0):
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=32, num_labels=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(cfg)


class Synthetic(torch.utils.data.Dataset):
    def __init__(self, n=32, length=12):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (n, length), generator=g)
        self.labels = (self.ids[:, 0] > 50).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def args(tmp_path, **kw):
    opts = dict(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=4, learning_rate=1e-3,
                report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
                dataloader_num_workers=0, max_grad_norm=1.0)
    opts.update(kw)
    return transformers.TrainingArguments(**opts)


def check_masks(engine):
    for name, mask in engine.masks.items():
        assert int(mask.sum()) == count_active(mask.numel(), engine.densities[name]), name
        assert bool((engine.param(name).detach()[~mask] == 0).all()), name


def adam_steps(trainer):
    return {int(s["step"]) for s in trainer.optimizer.state.values()}


@pytest.fixture(autouse=True)
def quiet():
    transformers.logging.set_verbosity_error()
    logging.getLogger("sparsetrain").setLevel(logging.WARNING)


def test_sparse_trainer_follows_the_paper_and_sparsifies_attention_and_mlp(tmp_path):
    t = SparseTrainer(model=tiny_bert(), args=args(tmp_path), train_dataset=Synthetic(), sparsity=SPARSE)
    t.train()
    e = t.engine
    expected = {f"bert.encoder.layer.{i}.{p}.weight" for i in range(2)
                for p in ("attention.self.query", "attention.self.key", "attention.self.value",
                          "attention.output.dense", "intermediate.dense", "output.dense")}
    assert set(e.masks) == expected  # embeddings, LayerNorm, pooler and classifier stay dense
    assert e.step == 8 and e.last_update["step"] == 6
    assert adam_steps(t) == {6}  # the updates at steps 3 and 6 skipped AdamW's step
    check_masks(e)


def test_callback_default_keeps_the_optimizer_step(tmp_path):
    cb = SparsityCallback(**SPARSE)
    t = transformers.Trainer(model=tiny_bert(), args=args(tmp_path), train_dataset=Synthetic(), callbacks=[cb])
    t.train()
    assert adam_steps(t) == {8} and cb.engine.last_update["step"] == 6  # a documented deviation
    check_masks(cb.engine)
    skip = SparsityCallback(skip_optimizer_step=True, **SPARSE)
    t = transformers.Trainer(model=tiny_bert(), args=args(tmp_path, gradient_accumulation_steps=2),
                             train_dataset=Synthetic(), callbacks=[skip])
    t.train()
    assert adam_steps(t) == {6} and skip.engine.step == 8  # one engine step per optimizer step


def test_resume_from_a_trainer_checkpoint_is_exact(tmp_path):
    full = SparseTrainer(model=tiny_bert(), args=args(tmp_path / "full"), train_dataset=Synthetic(), sparsity=SPARSE)
    full.train()
    first = SparseTrainer(model=tiny_bert(), args=args(tmp_path / "run", save_strategy="steps", save_steps=4),
                          train_dataset=Synthetic(), sparsity=SPARSE)
    first.train()
    assert (tmp_path / "run" / "checkpoint-4" / ENGINE_FILE).is_file()
    again = SparseTrainer(model=tiny_bert(seed=1), args=args(tmp_path / "run"), train_dataset=Synthetic(),
                          sparsity=SPARSE)
    again.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    assert again.engine.step == 8 and again.engine.last_update == full.engine.last_update
    assert all(torch.equal(again.engine.masks[n], m) for n, m in full.engine.masks.items())
    for (n, a), b in zip(again.model.state_dict().items(), full.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=n)
    # a checkpoint without the engine state is refused with the fix
    (tmp_path / "run" / "checkpoint-4" / ENGINE_FILE).unlink()
    cb = SparsityCallback(**SPARSE)
    t = transformers.Trainer(model=tiny_bert(), args=args(tmp_path / "run"), train_dataset=Synthetic(), callbacks=[cb])
    with pytest.raises(CheckpointError, match="sparsity_engine.pt' is missing"):
        t.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
