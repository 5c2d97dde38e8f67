"""Small AnnData objects and helpers shared by the ``tl`` tests (imported as ``tl_helpers``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

import bcnmf_sc as bc

#: settings that keep a fit on the small data below a second or two: as many shared topics as the data has
#: shared programs (five) plus its two target programs, so the model is well specified.
FAST = dict(n_topics=7, n_target_topics=2, max_epochs=40, n_starts=1, progress=False)


def small_adata(random_state: int = 0, n_cells: int = 120) -> AnnData:
    """β-series counts: ``n_cells`` target and as many background cells × 100 genes; five shared programs
    on genes 0-59, two target programs on genes 60-79 (``var["program"]``) and weak shared variation, so a
    short fit finds the target programs."""
    adata = bc.datasets.beta_series(
        beta=0.1, n_target=n_cells, n_background=n_cells, n_genes=100, shared_block_size=12, target_block_size=10,
        random_state=random_state,
    )
    adata.X = sp.csr_matrix(adata.X)
    return adata


def _same(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where)
    elif sp.issparse(a):
        assert sp.issparse(b) and a.shape == b.shape and (a != b).nnz == 0, where
    elif isinstance(a, np.ndarray) and a.dtype.names:  # structured (rank_genes_groups) arrays
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
        for field in a.dtype.names:
            _same(np.asarray(a[field]), np.asarray(b[field]), f"{where}[{field!r}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert type(a) is type(b) and a == b, where


def assert_untouched(before: AnnData, after: AnnData) -> None:
    """``after`` equals the snapshot ``before`` in X, layers, obs, var, obsm, varm and uns."""
    assert after.shape == before.shape
    _same(before.X, after.X, "X")
    for slot in ("layers", "obsm", "varm", "uns"):
        _same(dict(getattr(before, slot)), dict(getattr(after, slot)), slot)
    pd.testing.assert_frame_equal(before.obs, after.obs)
    pd.testing.assert_frame_equal(before.var, after.var)
