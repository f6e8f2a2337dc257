"""CIFAR-10 and CIFAR-100 from the python (pickle) version, read straight into uint8 tensors.

Files are the ones torchvision downloads and extracts: ``<root>/cifar-10-batches-py/{data_batch_1..5,
test_batch, batches.meta}`` and ``<root>/cifar-100-python/{train, test, meta}``. torchvision is used only
to download (``download=True``); reading is done here because torchvision's reader insists on the
official md5s and converts every item to PIL. Training examples get random crop (pad 4) + horizontal
flip when ``augment`` (see :class:`~sparsetrain.data.common.ImageTensorDataset`); the validation carve
and the test split never do.

Reference: Alex Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", Tech. Report,
University of Toronto, 2009 — https://www.cs.toronto.edu/~kriz/cifar.html
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import DataError
from ..registry import DATASETS
from .base import DataInfo, Splits
from .common import ImageTensorDataset, carve_indices, default_data_root, import_optional, require_files

log = logging.getLogger(__name__)


class Cifar:
    """One CIFAR variant: its folder, batch files, label key and normalisation statistics."""

    def __init__(self, name: str, num_classes: int, folder: str, train_files: Sequence[str],
                 test_file: str, meta: Tuple[str, str], label_key: str,
                 mean: Sequence[float], std: Sequence[float], torchvision_class: str):
        self.name, self.num_classes, self.folder = name, num_classes, folder
        self.train_files, self.test_file = tuple(train_files), test_file
        self.meta_file, self.names_key = meta
        self.label_key, self.mean, self.std = label_key, tuple(mean), tuple(std)
        self.torchvision_class = torchvision_class

    def info(self) -> DataInfo:
        """Shape facts; no data is read."""
        return DataInfo(self.name, (3, 32, 32), self.num_classes)

    def load(
        self,
        root: Optional[str] = None,
        *,
        download: bool = False,
        val_size: int = 0,
        augment: bool = True,
        seed: int = 0,
    ) -> Splits:
        """Train (augmented if ``augment``), test, and a non-augmented val carved from train."""
        folder = default_data_root(root) / self.folder
        if download:
            self._download(folder.parent)
        require_files(self.name, folder, (*self.train_files, self.test_file, self.meta_file),
                      downloadable=True)
        classes = self._class_names(folder)
        train = self._dataset(folder, self.train_files, augment, classes)
        test = self._dataset(folder, (self.test_file,), False, classes)
        val = None
        if val_size:
            keep, held = carve_indices(len(train), val_size, seed)
            train, val = train.subset(keep, augment=augment), train.subset(held, augment=False)
        log.info("%s: %d train / %d test / %d val", self.name, len(train), len(test), len(val or ()))
        return Splits(train=train, test=test, info=self.info(), val=val)

    def _dataset(self, folder: Path, files: Sequence[str], augment: bool,
                 classes: Sequence[str]) -> ImageTensorDataset:
        parts = [self._read_batch(folder / f) for f in files]
        images = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
        return ImageTensorDataset(images, labels, self.mean, self.std, augment=augment,
                                  classes=classes)

    def _read_batch(self, path: Path) -> Tuple[torch.Tensor, torch.Tensor]:
        """One pickle: ``data`` is N x 3072 uint8, channel-major (R plane, G plane, B plane)."""
        batch = _unpickle(path, self.name)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch[self.label_key], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise DataError(f"{self.name}: {path} is not a CIFAR batch ({exc}); re-download it") from exc
        if len(data) != len(labels) or not np.all((labels >= 0) & (labels < self.num_classes)):
            raise DataError(f"{self.name}: {path} has inconsistent images/labels; re-download it")
        return torch.from_numpy(data.copy()), torch.from_numpy(labels)

    def _class_names(self, folder: Path) -> List[str]:
        return list(_unpickle(folder / self.meta_file, self.name).get(self.names_key, []))

    def _download(self, base: Path) -> None:
        tv_datasets = import_optional("torchvision.datasets")
        try:
            getattr(tv_datasets, self.torchvision_class)(str(base), train=True, download=True)
        except (RuntimeError, OSError) as exc:
            raise DataError(f"{self.name}: download into {base} failed: {exc}. Check the network "
                            "connection or place the extracted files there yourself.") from exc


def _unpickle(path: Path, name: str) -> Dict[str, object]:
    """Load a CIFAR pickle (written by Python 2: latin1 decoding), keys as ``str``.

    Pickle can run code: only point this at files from the official archive.
    """
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{name}: cannot read {path} ({exc}); re-download it") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{name}: {path} is not a CIFAR pickle (expected a dict); re-download it")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


CIFAR10 = Cifar(
    "cifar10", 10, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
    ("batches.meta", "label_names"), "labels",
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), torchvision_class="CIFAR10",
)
CIFAR100 = Cifar(
    "cifar100", 100, "cifar-100-python", ["train"], "test", ("meta", "fine_label_names"),
    "fine_labels", mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    torchvision_class="CIFAR100",
)
DATASETS.register("cifar10")(CIFAR10)
DATASETS.register("cifar100")(CIFAR100)
