"""CPU intra-op threads of a run: ``train.threads`` is explicit; the automatic choice for 0 is
the caller's (the CLI and the sweep worker use :func:`default_threads`), and a run puts the
process's setting back when it ends."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

#: below this many parameters the automatic thread choice is one thread: their matrix products
#: gain nothing from more, and spinning OpenMP threads on a busy machine cost a lot
SMALL_MODEL_PARAMS = 1_000_000


def model_parameters(cfg) -> int:
    """Parameters of the model ``cfg`` trains (after the method's adjustment, e.g. Small-Dense's
    width), counted on the meta device: no data is read and no memory allocated."""
    from ..data import dataset_info
    from ..models import build_model, count_parameters
    from ..registry import METHODS
    from ..sparsity import methods  # noqa: F401  (registers the built-in methods)
    from ..sparsity.run import adjusted_config

    info = dataset_info(cfg.data.name, **cfg.data.options)
    m = adjusted_config(METHODS.get(cfg.sparsity.method), cfg, info).model
    with torch.device("meta"):
        return count_parameters(build_model(m.name, info, width=m.width, **m.options))


def threads_for(cfg) -> int:
    """The automatic ``train.threads`` choice for running ``cfg``: the configured value when > 0;
    else, on CPU, one thread for models under :data:`SMALL_MODEL_PARAMS` parameters; else 0 (the
    process's setting). The CLI and the sweep worker apply it (:func:`default_threads`); the
    library never does on its own."""
    if cfg.train.threads > 0:
        return int(cfg.train.threads)
    on_gpu = cfg.train.device != "cpu" and torch.cuda.is_available()  # as resolve_device decides
    return 1 if not on_gpu and model_parameters(cfg) < SMALL_MODEL_PARAMS else 0


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(n)`` when ``n`` > 0 and restore the previous
    value after it (also on error); ``n`` = 0 leaves the process's setting alone."""
    if n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_threads(cfg) -> "contextlib.AbstractContextManager[None]":
    """:func:`intra_op_threads` with the automatic choice :func:`threads_for` of ``cfg``."""
    return intra_op_threads(threads_for(cfg))
