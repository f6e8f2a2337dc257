"""scikit-learn's handwritten digits: the embedded quick-start dataset (no files, no download).

1797 grey 8x8 images of the digits 0-9 with values 0..16 (the UCI "Optical Recognition of Handwritten
Digits" test set, Alpaydin & Kaynak 1995). A fixed stratified split (seed 0) gives 1437 train / 360 test
images; pixels are scaled to [0, 1] and then standardised with the mean and standard deviation of all
training pixels (one scalar each, like the usual MNIST normalisation).
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

from ..registry import DATASETS
from .base import DataInfo, Splits
from .common import ArrayDataset, carve_indices, import_optional

log = logging.getLogger(__name__)

TEST_SIZE = 360
SPLIT_SEED = 0  # the train/test split is part of the dataset definition, not of the run seed


class Digits:
    """Registry entry ``"digits"``: 8x8 digits, input (1, 8, 8), 10 classes. Needs no data root."""

    name = "digits"

    def info(self) -> DataInfo:
        """Shape facts; no data is read."""
        return DataInfo(self.name, (1, 8, 8), 10)

    def load(
        self,
        root: Optional[str] = None,
        *,
        download: bool = False,
        val_size: int = 0,
        augment: bool = True,
        seed: int = 0,
    ) -> Splits:
        """Train/test (and optional val carved from train) as in-memory tensors.

        ``root`` and ``download`` are ignored (the data ships with scikit-learn); ``augment`` is ignored
        (no augmentation is defined for 8x8 digits).
        """
        x_train, x_test, y_train, y_test = _fixed_split()
        mean, std = float(x_train.mean()), float(x_train.std())
        train = ArrayDataset(_to_images(x_train, mean, std), torch.from_numpy(y_train))
        test = ArrayDataset(_to_images(x_test, mean, std), torch.from_numpy(y_test))
        val = None
        if val_size:
            keep, held = carve_indices(len(train), val_size, seed)
            train, val = train.subset(keep), train.subset(held)
        log.info("digits: %d train / %d test / %d val", len(train), len(test), len(val or ()))
        return Splits(train=train, test=test, info=self.info(), val=val)


def _fixed_split():
    """Stratified 1437/360 split of the 1797 images, values scaled to [0, 1]."""
    datasets = import_optional("sklearn.datasets")
    selection = import_optional("sklearn.model_selection")
    bunch = datasets.load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    return selection.train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )


def _to_images(x: np.ndarray, mean: float, std: float) -> torch.Tensor:
    return torch.from_numpy((x - mean) / std).reshape(-1, 1, 8, 8).float()


DATASETS.register("digits")(Digits())
