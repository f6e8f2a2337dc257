"""The warning when the masks are denser than asked (issue #13): figures are not rounded away and
the rule that caused it is named."""
import logging

import torch.nn as nn

import sparsetrain


def _engine(sparsity, distribution):
    model = nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
    optimizer = __import__("torch").optim.SGD(model.parameters(), lr=0.1)
    return sparsetrain.Static(model, optimizer, sparsity=sparsity, distribution=distribution, total_steps=10)


def test_near_total_sparsity_names_the_one_weight_minimum(caplog):
    with caplog.at_level(logging.WARNING):
        _engine(0.9999, "erk")
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "requested sparsity 0.9999," in msg and "1.000" not in msg
    assert "every layer keeps at least one weight" in msg and "capped" not in msg


def test_dense_first_layer_is_named(caplog):
    with caplog.at_level(logging.WARNING):
        _engine(0.99, "uniform")
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "dense first/last layer" in msg and "requested sparsity 0.99," in msg
