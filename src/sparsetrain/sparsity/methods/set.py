"""SET: drop the smallest-magnitude weights, grow uniformly at random among inactive ones."""
import torch

from ...registry import METHODS
from .base import DynamicMethod


@METHODS.register("set")
class SET(DynamicMethod):
    """Sparse Evolutionary Training (Mocanu et al., Nature Communications 2018), with the RigL
    paper's schedule: every ΔT steps drop a cosine-decayed fraction of the active weights by
    magnitude and grow as many at random positions (exact count, drawn from the engine's seeded
    generator; just-dropped positions are eligible)."""

    name = "set"
    runs_on_compressed = True

    def grow_scores(self, engine, name: str) -> torch.Tensor:
        p = engine.param(name)
        return torch.rand(p.shape, generator=engine.generator).to(p.device)

    def grow_scores_rows(self, engine, name: str, rows: slice, n_cols: int) -> torch.Tensor:
        # successive blocks of rows draw the same stream, in the same order, as one whole draw
        block = (rows.stop - rows.start, n_cols)
        return torch.rand(block, generator=engine.generator).to(engine.param(name).device)
