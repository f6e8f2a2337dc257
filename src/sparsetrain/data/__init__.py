"""Datasets registry (filled in by the data modules)."""
from .base import DataInfo, Splits  # noqa: F401
