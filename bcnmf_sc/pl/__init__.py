"""Plots of a bcNMF fit (matplotlib).

Every function takes ``key`` (the ``key_added`` of :func:`bcnmf_sc.tl.bcnmf`) and follows scanpy's
contract: ``ax`` (draw into existing axes), ``show`` (``None``: in interactive mode and notebooks), ``save``
(a file path) and ``return_fig``. The shared helpers live in :mod:`bcnmf_sc.pl._utils`.
"""

from ._embedding import embedding
from ._history import history
from ._stability import stability
from ._sweep import sweep
from ._topic_genes import topic_genes
from ._usage import usage

__all__ = ["embedding", "history", "stability", "sweep", "topic_genes", "usage"]
