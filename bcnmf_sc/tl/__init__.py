"""Tools: fit bcNMF on an AnnData and work with the result."""

from ._bcnmf import bcnmf

__all__ = ["bcnmf"]
