"""bcnmf_sc: background-contrastive NMF for single-cell data in AnnData."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bcnmf-sc")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from . import datasets, pl, tl
from .engine import BCNMF, CollapseError, UnsafeAlphaError  # noqa: E402

__all__ = ["BCNMF", "CollapseError", "UnsafeAlphaError", "datasets", "pl", "tl", "__version__"]
