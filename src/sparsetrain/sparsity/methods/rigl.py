"""RigL: SET with the grow score replaced by the magnitude of the dense gradient."""
from dataclasses import dataclass
from typing import Dict

import torch

from ...flops import training_flops_rigl
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
    runs_on_compressed = True
    Options = RigLOptions

    def setup(self, engine) -> None:
        super().setup(engine)
        self._grad_scores: Dict[str, torch.Tensor] = {}

    def observe_gradients(self, engine, update: bool) -> None:
        super().observe_gradients(engine, update)
        if update:
            # snapshot now: the engine masks the gradients right after this hook. A compressed
            # layer keeps the factors of its dense gradient instead (see grow_scores_rows).
            self._grad_scores = {t.name: engine.dense_grad(t.name).abs() for t in engine.targets
                                 if not engine.is_compressed(t.name)}

    def grow_scores(self, engine, name: str) -> torch.Tensor:
        # an explicit engine.update_masks(f) outside the hooks has no snapshot: read .grad now
        snap = self._grad_scores.get(name)
        return engine.dense_grad(name).abs() if snap is None else snap

    def grow_scores_rows(self, engine, name: str, rows: slice, n_cols: int) -> torch.Tensor:
        return engine.dense_grad_rows(name, rows).abs()

    def finish_update(self, engine) -> None:
        self._grad_scores = {}

    def training_flops(self, f_s: float, f_d: float) -> float:
        # paper App. H: a dense weight gradient once per ΔT + 1 steps; f_S stays constant because
        # every layer keeps its count (with redistribution, the parent's rule applies)
        if self.tracks_momentum:
            return super().training_flops(f_s, f_d)
        return training_flops_rigl(f_s, f_d, self.options.delta_t)

    def uses_dense_grad(self, step: int) -> bool:
        return self.tracks_momentum or self.is_update_step(step)
