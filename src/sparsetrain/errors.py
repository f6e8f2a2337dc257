"""Exceptions a user can cause. The CLI turns each into one line on stderr and exit code 2."""


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of ``e``'s message (at most ``limit`` characters), or its type's name when
    the message is empty (``EOFError()`` from a 0-byte file has none)."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else type(e).__name__


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


class RunLockedError(SparsetrainError):
    """Another process is training in the same run directory."""
