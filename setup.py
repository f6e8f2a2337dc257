"""Build of the optional native CSR kernels; everything else is declared in pyproject.toml.

The extension is ``optional``: where no C compiler is available the install still succeeds and
the sparse backend uses torch's kernels (``kernel="mkl"``); ``kernel="native"`` then says so.
"""
import sys

from setuptools import Extension, setup

# OpenMP on Linux (gcc, clang with libgomp): the module then shares torch's OpenMP runtime (see
# _native.c); elsewhere plain threads
unix = sys.platform.startswith("linux")
setup(ext_modules=[Extension(
    "sparsetrain.sparsity.storage.csr._native",
    sources=["src/sparsetrain/sparsity/storage/csr/_native.c"],
    extra_compile_args=(["-O3", "-pthread"] + (["-fopenmp"] if unix else [])) if sys.platform != "win32" else ["/O2"],
    extra_link_args=(["-pthread"] + (["-fopenmp"] if unix else [])) if sys.platform != "win32" else [],
    optional=True,
)])
