"""SNIP: single-shot pruning at initialisation by connection sensitivity |g ⊙ w|.

Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity",
ICLR 2019. As in the RigL code's ``SparseSnipOptimizer``: the loss gradient of one batch,
score |∂L/∂w ⊙ w| per weight, each layer keeps the top N_l − floor(s_l·N_l) at the layer
sparsity of the chosen distribution (``scope="global"``: one threshold over all layers).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence

import torch

from ...registry import METHODS
from .pruning import PruneAtInit, sparsities

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import SparsityEngine


def snip_scores(model: torch.nn.Module, params: Dict[str, torch.Tensor], batch, loss_fn) -> Dict[str, torch.Tensor]:
    """|∂L/∂w ⊙ w| for every tensor in ``params`` ({name: parameter of ``model``}) on one batch.
    Uses ``torch.autograd.grad``, so the parameters' ``.grad`` fields are left untouched."""
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g.detach() * p.detach()).abs()
            for (n, p), g in zip(params.items(), grads)}


@METHODS.register("snip")
class SNIP(PruneAtInit):
    """Connection sensitivity |g ⊙ w| on the first batch (Lee et al., ICLR 2019).

    Two ways in: the Trainer calls :meth:`prune_at_init` with the first batch before training;
    in a plain loop with only the engine, the mask is computed at the first ``after_backward``
    from that step's gradient and that step's optimizer update is skipped (the official RigL
    code's SNIP step).
    """

    name = "snip"

    def scores(self, engine: "SparsityEngine", batch, loss_fn: Callable, input_shape: Optional[Sequence[int]],
               input_dtype: Optional[torch.dtype]) -> Dict[str, torch.Tensor]:
        return snip_scores(engine.model, {t.name: t.param for t in engine.targets}, batch, loss_fn)

    # --- engine-only path: prune from the gradient of the first step ---------------------------
    @property
    def skip_optimizer_step(self) -> bool:
        return True

    def is_update_step(self, step: int) -> bool:
        return self.found is None

    def observe_gradients(self, engine: "SparsityEngine", update: bool) -> None:
        if not update:
            return
        # masks are all ones here, so the dense gradient is ∂L/∂w of this batch
        scores = {t.name: (engine.dense_grad(t.name) * t.param.detach()).abs() for t in engine.targets}
        masks = self.select(engine, scores)
        engine.set_masks(masks, reason=self.name)
        self.found, self.last_scores = sparsities(masks), scores
