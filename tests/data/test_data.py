"""Datasets: registry contract, data-root resolution, real MNIST/Fashion-MNIST/PTB, and the CIFAR,
ImageFolder and WikiText loaders on tiny files written here in the real formats."""
from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsetrain.data import (
    DataInfo, Splits, canonical_name, dataset_info, default_data_root, get_dataset, load_dataset,
)
from sparsetrain.data.common import random_crop
from sparsetrain.errors import ConfigError, DataError
from sparsetrain.registry import DATASETS
from helpers import ROOT, cifar10_tree, write_pickle


def _real_data_root() -> Path:
    """shared/data beside the repository (CI layout), unless SPARSETRAIN_DATA says otherwise."""
    env = os.environ.get("SPARSETRAIN_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


REAL = _real_data_root()


def needs_real(sub: str):
    return pytest.mark.skipif(
        not (REAL / sub).is_dir(),
        reason=f"real dataset folder {REAL / sub} not found; set SPARSETRAIN_DATA to shared/data",
    )


# ---------------------------------------------------------------- registry and helpers


@pytest.mark.parametrize("name", DATASETS.names())
def test_registry_contract(name):
    spec = DATASETS.get(name)
    info = spec.info()
    assert isinstance(info, DataInfo) and info.name == name
    assert info.task in ("classification", "lm") and info.num_classes > 1
    load_params = inspect.signature(spec.load).parameters
    for arg in ("root", "download", "val_size", "augment", "seed"):
        assert arg in load_params, f"{name}.load lacks {arg}"
    standard = {"self", "root", "download", "val_size", "augment", "seed"}
    # the same options configure info() and load(), so a config can hand both the same dict
    assert set(inspect.signature(spec.info).parameters) == set(load_params) - standard


def test_expected_datasets_registered():
    expected = {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet", "ptb",
                "ptb_char", "wikitext2", "wikitext103"}
    assert expected <= set(DATASETS.names())


def test_name_normalisation_and_unknown_name():
    assert canonical_name("Fashion-MNIST") == "fashion_mnist"
    assert canonical_name("wikitext-2") == "wikitext2"
    assert canonical_name("PTB-char") == "ptb_char"
    assert get_dataset("FASHION-MNIST") is DATASETS.get("fashion_mnist")
    with pytest.raises(ConfigError, match="choose one of"):
        canonical_name("svhn")


def test_info_options():
    assert dataset_info("ptb", seq_len=70).input_shape == (70,)
    assert dataset_info("ptb").num_classes == 10_000
    assert dataset_info("ptb_char").input_shape == (100,)
    assert dataset_info("imagenet") == DataInfo("imagenet", (3, 224, 224), 1000)
    assert dataset_info("imagenet", image_size=128).input_shape == (3, 128, 128)
    with pytest.raises(ConfigError, match="seq_len"):
        dataset_info("ptb", seq_len=0)
    with pytest.raises(ConfigError, match="no option"):
        dataset_info("mnist", seq_len=5)
    with pytest.raises(ConfigError, match="no option"):
        load_dataset("digits", colour=True)


def test_default_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("SPARSETRAIN_DATA", raising=False)
    assert default_data_root() == Path("data")
    monkeypatch.setenv("SPARSETRAIN_DATA", str(tmp_path / "env"))
    assert default_data_root() == tmp_path / "env"
    assert default_data_root(tmp_path / "arg") == tmp_path / "arg"


def test_random_crop_is_a_shift_of_the_padded_image():
    torch.manual_seed(0)
    image = torch.arange(1, 17, dtype=torch.uint8).view(1, 4, 4)
    crops = {tuple(random_crop(image, 1).flatten().tolist()) for _ in range(200)}
    assert len(crops) == 9  # all 3x3 offsets of a 1-pixel padding occur
    assert tuple(image.flatten().tolist()) in crops
    # offset (0, 0): the top row and left column are padding zeros
    assert (0, 0, 0, 0, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11) in crops


# ---------------------------------------------------------------- digits (embedded)


def test_digits_shapes_split_and_standardisation():
    splits = load_dataset("digits")
    assert isinstance(splits, Splits) and splits.val is None
    assert (len(splits.train), len(splits.test)) == (1437, 360)
    assert splits.train.inputs.shape == (1437, 1, 8, 8) and splits.train.inputs.dtype == torch.float32
    assert splits.train.targets.dtype == torch.int64
    # stratified: every class has 35-37 of the 360 test images (sklearn class sizes are 174..183)
    counts = torch.bincount(splits.test.targets, minlength=10)
    assert counts.sum() == 360 and counts.min() >= 34 and counts.max() <= 38
    assert abs(splits.train.inputs.mean().item()) < 1e-5
    assert abs(splits.train.inputs.std(unbiased=False).item() - 1) < 1e-4
    again = load_dataset("digits", seed=123)  # the train/test split does not depend on the seed
    assert torch.equal(again.test.inputs, splits.test.inputs)


def test_digits_validation_split():
    full = load_dataset("digits")
    splits = load_dataset("digits", val_size=137, seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1300, 137, 360)
    train_idx, val_idx = set(splits.train.indices.tolist()), set(splits.val.indices.tolist())
    assert not train_idx & val_idx and train_idx | val_idx == set(range(1437))
    assert torch.equal(splits.val.inputs, full.train.inputs[splits.val.indices])
    other = load_dataset("digits", val_size=137, seed=2)
    assert not torch.equal(other.val.indices, splits.val.indices)
    with pytest.raises(ConfigError, match="val_size"):
        load_dataset("digits", val_size=1437)


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (real data)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist", REAL)


@needs_real("MNIST")
def test_mnist_shapes_labels_and_counts(mnist):
    assert mnist.info == DataInfo("mnist", (1, 28, 28), 10)
    assert (len(mnist.train), len(mnist.test)) == (60_000, 10_000)
    x, y = mnist.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and int(y) == 5  # first label is 5
    assert int(mnist.test[0][1]) == 7
    assert mnist.train.targets.min() == 0 and mnist.train.targets.max() == 9
    expected = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(mnist.train.targets).tolist() == expected
    # a background pixel (0) becomes (0 - 0.1307) / 0.3081 = -0.42421...
    assert mnist.train.inputs[0, 0, 0, 0].item() == pytest.approx(-0.4242129, abs=1e-6)
    assert mnist.train.inputs.max().item() == pytest.approx((1 - 0.1307) / 0.3081, abs=1e-5)


@needs_real("MNIST")
def test_mnist_validation_split(mnist):
    splits = load_dataset("mnist", REAL, val_size=5000, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55_000, 5_000, 10_000)
    train_idx, val_idx = splits.train.indices, splits.val.indices
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert len(train_idx) + len(val_idx) == 60_000
    assert torch.equal(splits.val.targets, mnist.train.targets[val_idx])
    assert torch.equal(splits.train.inputs[:100], mnist.train.inputs[train_idx[:100]])


@needs_real("FashionMNIST")
@pytest.mark.parametrize("name", ["fashion_mnist", "fashion-mnist"])
def test_fashion_mnist(name):
    splits = load_dataset(name, REAL)
    assert splits.info == DataInfo("fashion_mnist", (1, 28, 28), 10)
    assert (len(splits.train), len(splits.test)) == (60_000, 10_000)
    assert splits.train[0][0].shape == (1, 28, 28)
    assert torch.bincount(splits.train.targets).tolist() == [6000] * 10
    assert torch.bincount(splits.test.targets).tolist() == [1000] * 10


def test_mnist_missing_files_raise_data_error(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert "SPARSETRAIN_DATA" in message and "--data-dir" in message and "download=True" in message


def test_missing_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSETRAIN_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nowhere" / "FashionMNIST"))):
        load_dataset("fashion_mnist")


def _idx(magic, dims, payload):
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return head + bytes(payload)


def _write_mnist(root, n_images=3, labels=(1, 2, 3), image_magic=0x803, label_bytes=None):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(_idx(image_magic, (n_images, 28, 28), [7] * (n_images * 784)))
        data = label_bytes if label_bytes is not None else _idx(0x801, (len(labels),), labels)
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(data)


def test_mnist_reader_on_tiny_idx_files(tmp_path):
    _write_mnist(tmp_path)
    splits = load_dataset("mnist", tmp_path)
    assert len(splits.train) == 3 and splits.train.targets.tolist() == [1, 2, 3]
    assert splits.train[0][0].shape == (1, 28, 28)


@pytest.mark.parametrize("damage, words", [
    (dict(image_magic=0x1234), "bad header"),
    (dict(labels=(1, 2, 12)), "label 12"),
    (dict(label_bytes=b""), "bad header"),
    (dict(labels=(1, 2)), "2 labels but"),
    (dict(label_bytes=_idx(0x801, (5,), [1, 2])), "truncated"),
])
def test_corrupt_mnist_files_are_data_errors(tmp_path, damage, words):
    """Damaged IDX files (issue: bad magic, labels out of range, 0-byte labels, count mismatch)
    give a DataError naming the file, never a traceback from the parser."""
    _write_mnist(tmp_path, **damage)
    with pytest.raises(DataError, match=words) as err:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(err.value)


def test_non_utf8_corpus_is_a_data_error(tmp_path):
    folder = tmp_path / "ptb"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"ptb.{split}.txt").write_text(" the cat sat \n")
    (folder / "ptb.valid.txt").write_bytes(b" the \xff\xfe cat \n")
    with pytest.raises(DataError, match="ptb.valid.txt is not UTF-8"):
        load_dataset("ptb", tmp_path)


# ---------------------------------------------------------------- PTB (real data)


@needs_real("ptb")
def test_ptb_word_level():
    splits = load_dataset("ptb", REAL)
    assert splits.info == DataInfo("ptb", (35,), 10_000, task="lm")
    train = splits.train
    assert len(train.vocab) == 10_000 and "<eos>" in train.vocab and "<unk>" in train.vocab
    # README: 887,521 words + 42,068 line ends; valid 70,390 + 3,370; test 78,669 + 3,761
    assert len(train.tokens) == 929_589
    assert (len(splits.val.tokens), len(splits.test.tokens)) == (73_760, 82_430)
    assert int((train.tokens == train.vocab.index("<eos>")).sum()) == 42_068
    assert len(train) == (929_589 - 1) // 35
    x, y = train[3]
    assert x.shape == y.shape == (35,) and torch.equal(x[1:], y[:-1])
    assert torch.equal(y, train.tokens[3 * 35 + 1 : 4 * 35 + 1])
    assert [train.vocab[i] for i in train.tokens[:3]] == ["aer", "banknote", "berlitz"]


@needs_real("ptb")
def test_ptb_char_level():
    splits = load_dataset("ptb-char", REAL, seq_len=50)
    assert splits.info == DataInfo("ptb_char", (50,), 50, task="lm")
    assert dataset_info("ptb_char").num_classes == splits.info.num_classes
    train = splits.train
    # each line is " w1 w2 ... wn \n": bytes - 3 per line are the joined characters, + 1 <eos> per line
    assert len(train.tokens) == 5_101_618 - 3 * 42_068 + 42_068
    text = "".join(train.vocab[i] for i in train.tokens[:30])
    assert text.startswith("aer banknote berlitz")
    x, y = train[0]
    assert x.shape == (50,) and torch.equal(x[1:], y[:-1])
    with pytest.raises(ConfigError, match="val_size"):
        load_dataset("ptb_char", REAL, val_size=10)


def test_ptb_missing_raises_data_error(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "ptb" / "ptb.train.txt"))):
        load_dataset("ptb", tmp_path)


def test_wikitext_reader_on_tiny_files(tmp_path):
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    (folder / "wiki.train.tokens").write_text(" = Title = \n\n the cat sat <unk> \n")
    (folder / "wiki.valid.tokens").write_text(" the dog sat \n")
    (folder / "wiki.test.tokens").write_text(" cat sat \n")
    splits = load_dataset("wikitext-2", tmp_path, seq_len=2)
    vocab = splits.train.vocab
    assert vocab == ["=", "Title", "<eos>", "the", "cat", "sat", "<unk>"]
    assert splits.train.tokens.tolist() == [0, 1, 0, 2, 2, 3, 4, 5, 6, 2]
    assert splits.val.tokens.tolist() == [3, 6, 5, 2]  # "dog" is not in train -> <unk>
    assert splits.info.num_classes == 7 and len(splits.train) == 4
    with pytest.raises(DataError, match="wiki.test.tokens"):
        load_dataset("wikitext2", tmp_path, seq_len=3)  # test has 3 tokens: no (x, y) pair fits
    (folder / "wiki.train.tokens").write_text(" the cat \n")  # no <unk>: an unseen word is an error
    with pytest.raises(DataError, match="dog"):
        load_dataset("wikitext2", tmp_path)


# ---------------------------------------------------------------- CIFAR on tiny real-format files


def _normalised(row: np.ndarray, mean, std) -> torch.Tensor:
    image = torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32) / 255.0)
    return (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def test_cifar10_loader_without_augmentation(tmp_path):
    data = cifar10_tree(tmp_path)
    splits = load_dataset("cifar10", tmp_path, augment=False)
    assert splits.info == DataInfo("cifar10", (3, 32, 32), 10)
    assert (len(splits.train), len(splits.test)) == (20, 4)
    assert splits.train.classes[3] == "cat"
    x, y = splits.train[5]  # second image of data_batch_2: label (1 + 1) % 10
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and int(y) == 2
    assert torch.allclose(x, _normalised(data[5], CIFAR10_MEAN, CIFAR10_STD), atol=1e-6)
    assert torch.allclose(splits.test[0][0], _normalised(data[20], CIFAR10_MEAN, CIFAR10_STD), atol=1e-6)


def _crop_flip_candidates(plain: torch.Tensor):
    """All 81 crops of the 4-padded image, each with and without horizontal flip."""
    padded = torch.nn.functional.pad(plain, (4, 4, 4, 4))
    for top in range(9):
        for left in range(9):
            crop = padded[:, top : top + 32, left : left + 32]
            yield crop
            yield crop.flip(-1)


def test_cifar10_augmentation_is_crop_and_flip(tmp_path):
    data = cifar10_tree(tmp_path)
    splits = load_dataset("cifar10", tmp_path, augment=True)
    torch.manual_seed(0)
    raw = torch.from_numpy(data[7].reshape(3, 32, 32))
    candidates = list(_crop_flip_candidates(raw))
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    seen = set()
    for _ in range(40):
        x, _ = splits.train[7]
        assert x.shape == (3, 32, 32)
        raw_x = ((x * std + mean) * 255).round().to(torch.uint8)  # undo the normalisation
        matches = [k for k, c in enumerate(candidates) if torch.equal(c, raw_x)]
        assert matches, "augmented image is not a padded crop (+ flip) of the original"
        seen.add(matches[0])
    assert len(seen) > 5  # the augmentation is random


def test_cifar10_validation_split_is_not_augmented(tmp_path):
    data = cifar10_tree(tmp_path)
    splits = load_dataset("cifar10", tmp_path, val_size=5, seed=3, augment=True)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 4)
    assert splits.train.augment and not splits.val.augment and not splits.test.augment
    assert not set(splits.train.indices.tolist()) & set(splits.val.indices.tolist())
    for i, source in enumerate(splits.val.indices.tolist()):
        expected = _normalised(data[source], CIFAR10_MEAN, CIFAR10_STD)
        assert torch.allclose(splits.val[i][0], expected, atol=1e-6)


def test_cifar100_loader(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    fine = [0, 17, 42, 99, 5, 63]
    write_pickle(folder / "train", {"data": train, "fine_labels": fine, "coarse_labels": [0] * 6,
                                     "filenames": ["a.png"] * 6, "batch_label": "training batch"})
    write_pickle(folder / "test", {"data": train[:2], "fine_labels": [99, 0],
                                    "coarse_labels": [0, 0], "filenames": ["b.png"] * 2})
    write_pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)],
                                    "coarse_label_names": [f"s{i}" for i in range(20)]})
    splits = load_dataset("cifar100", tmp_path, val_size=2)
    assert splits.info == DataInfo("cifar100", (3, 32, 32), 100)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 2, 2)
    labels = sorted(int(splits.train[i][1]) for i in range(4)) + [int(splits.val[i][1]) for i in range(2)]
    assert sorted(labels) == sorted(fine)
    assert splits.train[0][0].shape == (3, 32, 32) and splits.test.classes[99] == "c99"


def test_cifar_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "cifar-10-batches-py" / "data_batch_1"))):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DataError, match="cifar-100-python"):
        load_dataset("cifar100", tmp_path)
    cifar10_tree(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


# ---------------------------------------------------------------- ImageFolder / ImageNet layout


def _image_tree(base: Path, classes=("ant", "bee", "cat"), per_class: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for name in classes:
            (base / split / name).mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, size=(20 + k, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(base / split / name / f"{k}.png")


def test_imagefolder_loader(tmp_path):
    _image_tree(tmp_path / "imagenet")
    splits = load_dataset("imagenet", tmp_path, image_size=16, val_size=2, seed=0)
    assert splits.info == DataInfo("imagenet", (3, 16, 16), 3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (7, 2, 9)
    for dataset in (splits.train, splits.val, splits.test):
        x, y = dataset[0]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= y < 3
    assert not set(splits.train.indices.tolist()) & set(splits.val.indices.tolist())
    assert torch.equal(splits.val[0][0], splits.val[0][0])  # eval transform is deterministic
    direct = load_dataset("imagenet", tmp_path / "imagenet", image_size=16, augment=False)
    assert direct.info.num_classes == 3 and torch.equal(direct.train[0][0], direct.train[0][0])
    with pytest.raises(ConfigError, match="num_classes"):
        load_dataset("imagenet", tmp_path, image_size=16, num_classes=1000)


def test_imagefolder_missing_and_mismatched(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "imagenet" / "train"))):
        load_dataset("imagenet", tmp_path)
    _image_tree(tmp_path / "imagenet")
    (tmp_path / "imagenet" / "val" / "dog").mkdir()
    (tmp_path / "imagenet" / "val" / "cat" / "0.png").rename(tmp_path / "imagenet" / "val" / "dog" / "0.png")
    with pytest.raises(DataError, match="class folders differ"):
        load_dataset("imagenet", tmp_path, image_size=16)
