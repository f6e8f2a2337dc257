"""Exceptions a user can cause. The CLI turns each into one line on stderr and exit code 2."""


class SparsetrainError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class ConfigError(SparsetrainError, ValueError):
    """A bad configuration value, flag, method/model/dataset name or layer name."""


class DataError(SparsetrainError):
    """A missing or malformed dataset or data directory."""


class CheckpointError(SparsetrainError):
    """A truncated, foreign or incompatible checkpoint or run directory."""


class TrainingError(SparsetrainError):
    """Training cannot continue (e.g. the loss became NaN or infinite)."""
