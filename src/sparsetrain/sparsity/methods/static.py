"""Static sparse training: a random exact-count mask fixed for the whole run."""
from ...registry import METHODS
from .base import Method


@METHODS.register("static")
class Static(Method):
    """Random mask at init, never updated (the 'Static' baseline of Evci et al., ICML 2020;
    layer densities from the chosen distribution)."""

    name = "static"
    runs_on_compressed = True
