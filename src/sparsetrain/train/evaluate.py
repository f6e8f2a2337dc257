"""Losses and evaluation for classification and language modelling."""
from __future__ import annotations

import math
from typing import Dict

import torch

from ..sparsity.run import task_loss

__all__ = ["task_loss", "correct_count", "evaluate"]


def correct_count(output: torch.Tensor, target: torch.Tensor) -> int:
    if isinstance(output, (tuple, list)):
        output = output[0]
    return int((output.argmax(-1) == target).sum())


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, device: torch.device, task: str = "classification",
             amp_dtype=None) -> Dict[str, float]:
    """Mean loss and accuracy (plus perplexity for LM) over ``batches`` of (x, y)."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
        n = y.numel()
        total_loss += float(task_loss(out.float() if torch.is_tensor(out) else out, y)) * n
        correct += correct_count(out, y)
        count += n
    model.train(was_training)
    loss = total_loss / max(1, count)
    metrics = {"loss": loss, "accuracy": correct / max(1, count)}
    if task == "lm":
        metrics["perplexity"] = math.exp(min(loss, 50.0))
    return metrics
