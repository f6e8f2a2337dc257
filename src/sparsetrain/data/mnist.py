"""MNIST and Fashion-MNIST through torchvision, loaded whole into one normalised tensor per split.

torchvision's datasets turn every item into a PIL image on access, which dominates the time of a small
model on a CPU. Here torchvision only downloads (when asked) and parses the IDX files; its ``.data``
(uint8, N x 28 x 28) and ``.targets`` are normalised once into float tensors and served by an
:class:`~sparsetrain.data.common.ArrayDataset`. No augmentation is used for these datasets.

- MNIST: LeCun, Cortes & Burges, http://yann.lecun.com/exdb/mnist/ (mean 0.1307, std 0.3081).
- Fashion-MNIST: Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747 (mean 0.2860, std 0.3530).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..errors import DataError
from ..registry import DATASETS
from .base import DataInfo, Splits
from .common import ArrayDataset, carve_indices, default_data_root, import_optional, require_files

log = logging.getLogger(__name__)

# torchvision reads the uncompressed IDX files from <root>/<Class>/raw/ when download=False.
RAW_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class MnistLike:
    """A 28x28 grey, 10-class dataset in torchvision's MNIST layout: ``<root>/<folder>/raw/``."""

    def __init__(self, name: str, folder: str, mean: float, std: float):
        self.name, self.folder, self.mean, self.std = name, folder, mean, std

    def info(self) -> DataInfo:
        """Shape facts; no data is read."""
        return DataInfo(self.name, (1, 28, 28), 10)

    def load(
        self,
        root: Optional[str] = None,
        *,
        download: bool = False,
        val_size: int = 0,
        augment: bool = True,
        seed: int = 0,
    ) -> Splits:
        """60k train / 10k test (val carved from train if ``val_size``); ``augment`` is ignored."""
        start = time.perf_counter()
        base = default_data_root(root)
        train, test = self._split(base, True, download), self._split(base, False, download)
        val = None
        if val_size:
            keep, held = carve_indices(len(train), val_size, seed)
            train, val = train.subset(keep), train.subset(held)
        log.info("%s: loaded %d train / %d test / %d val in %.2fs", self.name, len(train),
                 len(test), len(val or ()), time.perf_counter() - start)
        return Splits(train=train, test=test, info=self.info(), val=val)

    def _split(self, base: Path, train: bool, download: bool) -> ArrayDataset:
        images, labels = self._read(base, train, download)
        # x = (pixel/255 - mean)/std, computed once for the whole split, in place.
        x = images.unsqueeze(1).to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)
        return ArrayDataset(x, labels.to(torch.int64))

    def _read(self, base: Path, train: bool, download: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels. torchvision only downloads (when asked); the IDX files are
        parsed and checked here, so a damaged file is a DataError naming it, not a traceback."""
        raw = base / self.folder / "raw"
        if download:
            tv_datasets = import_optional("torchvision.datasets")
            try:
                getattr(tv_datasets, self.folder)(str(base), train=train, download=True)
            except (RuntimeError, OSError) as exc:
                raise DataError(f"{self.name}: could not download to {base / self.folder}: {exc}; "
                                "check the connection or place the files there by hand") from exc
        require_files(self.name, raw, RAW_FILES[train], downloadable=True)
        image_file, label_file = (raw / n for n in RAW_FILES[train])
        images = read_idx(image_file, IMAGE_MAGIC, (28, 28), self.name)
        labels = read_idx(label_file, LABEL_MAGIC, (), self.name)
        if len(labels) != len(images):
            raise DataError(f"{self.name}: {label_file} holds {len(labels)} labels but {image_file} holds "
                            f"{len(images)} images; the files do not belong together: {FIX}")
        if len(labels) and int(labels.max()) >= 10:
            raise DataError(f"{self.name}: {label_file} has label {int(labels.max())}, outside 0..9; {FIX}")
        return images, labels


#: IDX magic numbers (LeCun et al.'s format: two zero bytes, type 0x08 = uint8, number of dims)
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
FIX = "delete the file and download it again (download=True), or restore it from a good copy"


def read_idx(path: Path, magic: int, item_shape: Tuple[int, ...], dataset: str) -> torch.Tensor:
    """A uint8 IDX file as an (N, *item_shape) tensor, after checking its header and size."""
    data = path.read_bytes()
    n_dims = 1 + len(item_shape)
    header = 4 + 4 * n_dims
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise DataError(f"{dataset}: {path} is not an IDX file of the expected kind (bad header, "
                        f"{len(data)} bytes); {FIX}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(n_dims))
    if dims[1:] != item_shape:
        raise DataError(f"{dataset}: {path} holds items of shape {dims[1:]}, expected {item_shape}; {FIX}")
    count = dims[0] * math.prod(item_shape)
    if len(data) - header != count:
        raise DataError(f"{dataset}: {path} has {len(data) - header} bytes of data, its header announces "
                        f"{count}: the file is truncated or damaged; {FIX}")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


DATASETS.register("mnist")(MnistLike("mnist", "MNIST", 0.1307, 0.3081))
DATASETS.register("fashion_mnist")(MnistLike("fashion_mnist", "FashionMNIST", 0.2860, 0.3530))
