"""Adapters for trainers that own the training loop, and the CLI's optional trackers.

Each module imports its third-party library on import and names the extra to install when it is
missing: :mod:`.lightning` (``sparsetrain[lightning]``), :mod:`.huggingface` (``sparsetrain[hf]``),
:mod:`.trackers` (``sparsetrain[trackers]``). :mod:`.driver` is what the adapters share: the
engine's two hooks mapped onto "before the optimizer step" and "after it".
"""
