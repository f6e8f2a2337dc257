"""Recurrent language models (LSTM / GRU) mapping token ids (B, T) to next-token logits (B, T, vocab)."""
from __future__ import annotations

from typing import Sequence, Union

from torch import Tensor, nn

from ..data.base import DataInfo
from ..errors import ConfigError
from ..registry import MODELS
from .common import check_prob, check_task, positive_ints, scaled


class RNNLanguageModel(nn.Module):
    """Embedding -> dropout -> LSTM/GRU -> dropout -> [Linear -> ReLU] * len(proj) -> Linear readout.

    With ``tied`` the readout reuses the embedding matrix (Press & Wolf 2017; Inan et al. 2017):
    ``readout.weight is embedding.weight``, so the last readout input size must equal ``embed``.
    """

    def __init__(self, cell: str, vocab: int, embed: int, hidden: int, layers: int,
                 proj: Sequence[int], dropout: float, tied: bool):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.drop = nn.Dropout(dropout)
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(embed, hidden, num_layers=layers, batch_first=True,
                           dropout=dropout if layers > 1 else 0.0)
        modules: list[nn.Module] = []
        prev = hidden
        for size in proj:
            modules += [nn.Linear(prev, size), nn.ReLU(inplace=True)]
            prev = size
        self.proj = nn.Sequential(*modules)
        self.readout = nn.Linear(prev, vocab)
        if tied:
            self.readout.weight = self.embedding.weight

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.rnn(self.drop(self.embedding(tokens)))
        return self.readout(self.proj(self.drop(out)))


def _build(cell: str, info: DataInfo, width: float, embed, hidden, layers, proj, dropout, tied, model: str):
    check_task(info, "lm", model)
    (embed_n,) = positive_ints(embed, "embed", model)
    (hidden_n,) = positive_ints(hidden, "hidden", model)
    (layers_n,) = positive_ints(layers, "layers", model)
    proj_sizes = [scaled(p, width) for p in positive_ints(proj or (), "proj", model)]
    embed_n, hidden_n = scaled(embed_n, width), scaled(hidden_n, width)
    if not isinstance(tied, bool):
        raise ConfigError(f"model '{model}': tied must be true or false, got {tied!r}")
    readout_in = proj_sizes[-1] if proj_sizes else hidden_n
    if tied and readout_in != embed_n:
        raise ConfigError(
            f"model '{model}': tied=true needs the readout input size ({readout_in}, the last proj size or "
            f"hidden) to equal embed ({embed_n}); set proj to end with {embed_n} or use tied=false")
    p = check_prob(dropout, "dropout", model)
    return RNNLanguageModel(cell, info.num_classes, embed_n, hidden_n, layers_n, proj_sizes, p, tied)


Sizes = Union[int, Sequence[int], None]


@MODELS.register("lstm_lm")
def lstm_lm(info: DataInfo, width: float = 1.0, *, embed: int = 128, hidden: int = 256, layers: int = 1,
            proj: Sizes = None, dropout: float = 0.0, tied: bool = False) -> RNNLanguageModel:
    """LSTM language model (Hochreiter & Schmidhuber 1997; Zaremba et al., "Recurrent Neural Network
    Regularization", 2014). Vocabulary size is ``info.num_classes``; input (B, T) int64 token ids.

    ``proj``: sizes of optional ReLU projection layers between the LSTM and the readout (int or list).
    ``tied``: share readout and embedding weights. ``width`` scales embed, hidden and proj sizes.
    """
    return _build("lstm", info, width, embed, hidden, layers, proj, dropout, tied, "lstm_lm")


@MODELS.register("gru_lm")
def gru_lm(info: DataInfo, width: float = 1.0, *, embed: int = 128, hidden: int = 256, layers: int = 1,
           proj: Sizes = None, dropout: float = 0.0, tied: bool = False) -> RNNLanguageModel:
    """GRU language model (Cho et al. 2014), options as ``lstm_lm``.

    The RigL paper's character-level model (Evci et al., ICML 2020, App. I: embedding 128, GRU 512,
    readout 256 -> 128, vocabulary 256) is ``gru_lm`` with ``embed=128, hidden=512, proj=(256, 128)``
    on a 256-symbol dataset; add ``tied=True`` to share the 128-wide embedding with the readout.
    """
    return _build("gru", info, width, embed, hidden, layers, proj, dropout, tied, "gru_lm")
