"""What every dataset tells the rest of the system, without loading any data."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from torch.utils.data import Dataset


@dataclass(frozen=True)
class DataInfo:
    """Shape facts a model factory and the FLOPs counter need.

    ``input_shape`` is one example without the batch dim: (C, H, W) for images, (F,) for
    feature vectors, (seq_len,) token ids for language modelling. ``num_classes`` is the vocabulary
    size when ``task == "lm"``.
    """

    name: str
    input_shape: Tuple[int, ...]
    num_classes: int
    task: str = "classification"  # or "lm"


@dataclass
class Splits:
    """Loaded datasets. ``val`` is None unless a validation split was requested."""

    train: Dataset
    test: Dataset
    info: DataInfo
    val: Optional[Dataset] = None
