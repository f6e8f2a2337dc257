"""RigL: SET with the grow score replaced by the magnitude of the dense gradient."""
from dataclasses import dataclass
from typing import Dict

import torch

from ...registry import METHODS
from .base import DynamicOptions
from .set import SET


@dataclass(frozen=True)
class RigLOptions(DynamicOptions):
    skip_optimizer_step: bool = True


@METHODS.register("rigl")
class RigL(SET):
    """Rigged Lottery (Evci, Gale, Menick, Castro, Elsen, ICML 2020).

    On update steps the dense gradient ∂L/∂(M⊙W) of the current batch is read right after the
    backward pass; inactive positions with the largest |gradient| are grown. As in the paper's
    code, no optimizer step is taken on an update iteration (``skip_optimizer_step``).
    ``redistribution`` enables the layer-wise reallocation studied in the reproducibility report.
    """

    name = "rigl"
    Options = RigLOptions

    def setup(self, engine) -> None:
        super().setup(engine)
        self._grad_scores: Dict[str, torch.Tensor] = {}

    def observe_gradients(self, engine, update: bool) -> None:
        super().observe_gradients(engine, update)
        if update:
            self._grad_scores = {t.name: engine.dense_grad(t.name).abs() for t in engine.targets}

    def grow_scores(self, engine, name: str) -> torch.Tensor:
        return self._grad_scores[name]

    def finish_update(self, engine) -> None:
        self._grad_scores = {}
