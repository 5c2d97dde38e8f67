"""AnnData-free numerical core of bcnmf_sc: the :class:`BCNMF` estimator and its data access."""

from ._alpha import ALPHA_SAFETY, alpha_star
from ._distributed import fit_distributed
from ._errors import CollapseError, UnsafeAlphaError
from ._matching import match_topics
from ._model import BCNMF
from ._source import RowSource

__all__ = ["ALPHA_SAFETY", "BCNMF", "CollapseError", "RowSource", "UnsafeAlphaError", "alpha_star", "fit_distributed",
           "match_topics"]
