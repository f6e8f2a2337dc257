"""ImageNet (ILSVRC-2012) or any dataset in the same ImageFolder layout.

Expected layout: ``<root>/imagenet/{train,val}/<class>/<image>``; ``root`` may also be the folder that
holds ``train/`` and ``val/`` directly. The official validation images come flat and must first be
sorted into one folder per class (the usual ``valprep.sh`` step). ImageNet cannot be downloaded
automatically, so ``download`` is ignored. ``val`` is used as the test split; ``val_size`` carves a
validation split out of ``train``.

Transforms are the standard ResNet ones (He et al. 2016; Goyal et al. 2017): training images get
RandomResizedCrop(s) + horizontal flip, evaluation images Resize(s·256/224) + CenterCrop(s), with
s = ``image_size`` (224), then the usual ImageNet mean/std normalisation.

Reference: Russakovsky et al., "ImageNet Large Scale Visual Recognition Challenge", IJCV 2015.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple


from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .base import DataInfo, Splits
from .common import TransformedSubset, carve_indices, default_data_root, import_optional, missing_data_error

log = logging.getLogger(__name__)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ImageNet:
    """Registry entry ``"imagenet"``: ImageFolder images, input (3, s, s); classes = sub-folders."""

    name = "imagenet"

    def info(self, image_size: int = 224, num_classes: int = 1000) -> DataInfo:
        """Shape facts without reading data (1000 classes unless told otherwise)."""
        _check_size(image_size)
        return DataInfo(self.name, (3, image_size, image_size), int(num_classes))

    def load(
        self,
        root: Optional[str] = None,
        *,
        download: bool = False,
        val_size: int = 0,
        augment: bool = True,
        seed: int = 0,
        image_size: int = 224,
        num_classes: Optional[int] = None,
    ) -> Splits:
        """Train/test ImageFolders; ``num_classes``, if given, must match the class folders found."""
        _check_size(image_size)
        train_dir, test_dir = find_folders(default_data_root(root))
        folder_cls = import_optional("torchvision.datasets").ImageFolder
        train_eval, test_eval = transforms(image_size)
        train_all = _image_folder(folder_cls, train_dir, None)
        test = _image_folder(folder_cls, test_dir, test_eval)
        _check_classes(train_all.classes, test.classes, num_classes, train_dir, test_dir)
        keep, held = carve_indices(len(train_all), val_size, seed)
        train = TransformedSubset(train_all, keep, train_eval if augment else test_eval)
        val = TransformedSubset(train_all, held, test_eval) if val_size else None
        info = DataInfo(self.name, (3, image_size, image_size), len(train_all.classes))
        log.info("%s: %d train / %d test / %d val, %d classes", self.name, len(train), len(test),
                 len(val or ()), info.num_classes)
        return Splits(train=train, test=test, info=info, val=val)


def find_folders(root: Path) -> Tuple[Path, Path]:
    """(train, val) directories under ``root/imagenet`` or directly under ``root``."""
    for base in (root / "imagenet", root):
        if (base / "train").is_dir() and (base / "val").is_dir():
            return base / "train", base / "val"
    expected = root / "imagenet" / "train"
    raise missing_data_error(
        "imagenet", expected, downloadable=False,
        note=f" The layout is {root / 'imagenet'}/{{train,val}}/<class>/<image>; ImageNet must be "
             "obtained from image-net.org (no automatic download).",
    )


def transforms(image_size: int):
    """(train, eval) torchvision transform pipelines for square images of side ``image_size``."""
    t = import_optional("torchvision.transforms")
    normalise = [t.ToTensor(), t.Normalize(MEAN, STD)]
    train = t.Compose([t.RandomResizedCrop(image_size), t.RandomHorizontalFlip(), *normalise])
    resize = int(round(image_size * 256 / 224))  # 256 for 224, same ratio for other sizes
    evaluate = t.Compose([t.Resize(resize), t.CenterCrop(image_size), *normalise])
    return train, evaluate


def _image_folder(folder_cls, path: Path, transform):
    try:
        return folder_cls(str(path), transform=transform)
    except (FileNotFoundError, OSError) as exc:  # e.g. a class folder without images
        raise DataError(f"imagenet: cannot index {path}: {exc}. Each class needs its own "
                        "sub-folder holding image files.") from exc


def _check_classes(train, test, expected: Optional[int], train_dir: Path, test_dir: Path) -> None:
    if list(train) != list(test):
        raise DataError(f"imagenet: class folders differ between {train_dir} ({len(train)}) and "
                        f"{test_dir} ({len(test)}); sort the validation images into the same classes")
    if expected is not None and int(expected) != len(train):
        raise ConfigError(f"imagenet: num_classes={expected} but {train_dir} has {len(train)} class "
                          "folders; drop the option or fix the data")


def _check_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"imagenet: image_size={image_size!r} must be an integer >= 8")


DATASETS.register("imagenet")(ImageNet())
