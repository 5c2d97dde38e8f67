"""Tools: fit bcNMF on an AnnData and work with the result."""

from ._bcnmf import bcnmf
from ._project import project
from ._topic_genes import topic_genes

__all__ = ["bcnmf", "project", "topic_genes"]
