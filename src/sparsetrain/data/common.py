"""Pieces shared by the dataset loaders.

Data-root resolution, file checks that turn a missing dataset into a :class:`DataError` saying how to
fix it, seeded validation carving, and two in-memory datasets: :class:`ArrayDataset` (already
normalised float tensors, e.g. MNIST) and :class:`ImageTensorDataset` (uint8 images normalised per item,
with the cheap tensor-only random-crop + flip augmentation used for CIFAR).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from ..errors import ConfigError, DataError

ENV_VAR = "SPARSETRAIN_DATA"
PathLike = Union[str, "os.PathLike[str]"]


def default_data_root(root: Optional[PathLike] = None) -> Path:
    """The data directory: ``root`` if given, else ``$SPARSETRAIN_DATA``, else ``./data``."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR, "")
    return Path(env).expanduser() if env else Path("data")


def missing_data_error(dataset: str, path: Path, *, downloadable: bool, note: str = "") -> DataError:
    """The one error message every loader gives for absent files: what is missing and how to fix it."""
    fix = f"pass --data-dir DIR or set {ENV_VAR}=DIR to the folder that holds the dataset"
    if downloadable:
        fix += ", or use download=True when online"
    return DataError(f"{dataset}: expected {path} but it does not exist. Fix: {fix}.{note}")


def require_files(dataset: str, folder: Path, names: Iterable[str], *, downloadable: bool) -> None:
    """Raise :class:`DataError` naming the first of ``folder/name`` that is not a file."""
    for name in names:
        if not (folder / name).is_file():
            raise missing_data_error(dataset, folder / name, downloadable=downloadable)


def import_optional(module: str, extra: str = "data"):
    """Import an optional dependency or raise :class:`DataError` saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DataError(
            f"this dataset needs the '{module}' package: pip install 'sparsetrain[{extra}]'"
        ) from exc


def carve_indices(n: int, val_size: int, seed: int) -> Tuple[Tensor, Tensor]:
    """Split ``range(n)`` into (train, val) index tensors; val is ``val_size`` seeded-random picks.

    Both are returned sorted so the kept training examples stay in their original order.
    """
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 <= val_size < n:
        raise ConfigError(
            f"val_size={val_size!r} must be an integer in [0, {n}) for a training set of {n} examples"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


class ArrayDataset(TensorDataset):
    """(inputs, targets) tensors held in memory; items are ``(inputs[i], targets[i])``.

    ``indices`` records which examples of the original split these are (None = all, in order), so a
    validation carve is auditable.
    """

    def __init__(self, inputs: Tensor, targets: Tensor, indices: Optional[Tensor] = None):
        super().__init__(inputs, targets)
        self.indices = indices

    @property
    def inputs(self) -> Tensor:
        return self.tensors[0]

    @property
    def targets(self) -> Tensor:
        return self.tensors[1]

    def subset(self, indices: Tensor) -> "ArrayDataset":
        """A new dataset of the selected rows (copied: contiguous for fast batching)."""
        return ArrayDataset(self.inputs[indices], self.targets[indices], self._absolute(indices))

    def _absolute(self, indices: Tensor) -> Tensor:
        return indices if self.indices is None else self.indices[indices]


def random_crop(image: Tensor, padding: int) -> Tensor:
    """Zero-pad ``padding`` pixels on each side, then take a uniformly placed crop of the original size."""
    h, w = image.shape[-2:]
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    padded = F.pad(image, (padding, padding, padding, padding))
    return padded[..., top : top + h, left : left + w]


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) and int64 targets, normalised per item with per-channel mean/std.

    With ``augment`` each item gets the standard CIFAR augmentation (He et al. 2016, "Deep Residual
    Learning", §4.2): random crop after 4-pixel zero padding, and a horizontal flip with probability
    1/2. Padding happens before normalisation, as with torchvision's RandomCrop → ToTensor → Normalize.
    Randomness comes from torch's global generator (seeded per DataLoader worker by PyTorch).
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        augment: bool = False,
        padding: int = 4,
        indices: Optional[Tensor] = None,
        classes: Sequence[str] = (),
    ):
        self.images, self.targets, self.classes = images, targets, list(classes)
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment, self.padding, self.indices = augment, padding, indices
        self._mean = torch.tensor(self.mean).view(-1, 1, 1)
        self._std = torch.tensor(self.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        image = self.images[i]
        if self.augment:
            image = random_crop(image, self.padding)
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
        return (image.float() / 255.0 - self._mean) / self._std, self.targets[i]

    def subset(self, indices: Tensor, *, augment: bool) -> "ImageTensorDataset":
        """The selected examples, with augmentation switched on or off."""
        absolute = indices if self.indices is None else self.indices[indices]
        return ImageTensorDataset(
            self.images[indices], self.targets[indices], self.mean, self.std,
            augment=augment, padding=self.padding, indices=absolute, classes=self.classes,
        )


class TransformedSubset(Dataset):
    """Items ``indices`` of ``dataset`` with ``transform`` applied to the input (e.g. PIL → tensor)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Callable):
        self.dataset, self.indices, self.transform = dataset, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.dataset[int(self.indices[i])]
        return self.transform(x), y
