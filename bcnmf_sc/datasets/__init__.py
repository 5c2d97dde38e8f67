"""Datasets: the paper's simulations, a large sparse generator and small bundled real data.

=================================  ========================================================
:func:`beta_series`                the paper's β-series simulation (counts)
:func:`sparse_counts`              large sparse Poisson-NMF counts, streamed to h5ad if asked
:func:`kang_pbmc`                  600 PBMCs, control vs IFN-β (bundled, raw counts)
:func:`digits_on_textures`         the paper's digits-on-textures images (bundled)
:func:`mice_protein`               UCI Mice Protein Expression (from the shared data folder)
=================================  ========================================================
"""

from ._beta_series import beta_series
from ._digits_on_textures import digits_on_textures
from ._kang_pbmc import kang_pbmc
from ._mice_protein import mice_protein
from ._sparse_counts import sparse_counts

__all__ = ["beta_series", "digits_on_textures", "kang_pbmc", "mice_protein", "sparse_counts"]
