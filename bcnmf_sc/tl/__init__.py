"""Tools: fit bcNMF on an AnnData and work with the result."""

from ._bcnmf import bcnmf
from ._consensus import consensus
from ._project import project
from ._sweep import bcnmf_sweep
from ._topic_genes import topic_genes

__all__ = ["bcnmf", "bcnmf_sweep", "consensus", "project", "topic_genes"]
