"""Command line: thin wrappers over the library, one module per subcommand (see :mod:`.main`).
Library code never imports this package."""
from .main import main

__all__ = ["main"]
