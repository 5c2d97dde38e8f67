"""Out-of-core fitting: a backed h5ad (``read_h5ad(..., backed="r")``) is streamed in row chunks.

The backed fit must equal the in-memory fit (same batches, same arithmetic) and never read more than a
batch of cells at a time (the one validation pass reads blocks of at most 4,096 rows).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import bcnmf_sc as bc
from bcnmf_sc.engine import BCNMF, RowSource


def _counts_adata(n_cells: int = 240, n_genes: int = 50, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    k = 3
    w = rng.gamma(0.5, 1.0, (n_genes, k))
    u = rng.gamma(1.0, 2.0, (n_cells, k))
    is_target = rng.random(n_cells) < 0.5
    u[~is_target, 2] = 0  # the last program only in the target
    mean = u @ w.T
    x = sp.csr_matrix(rng.poisson(mean * (0.4 / mean.mean())).astype(np.float32))
    obs = pd.DataFrame({"condition": np.where(is_target, "stim", "ctrl")}, index=[f"c{i}" for i in range(n_cells)])
    obs["condition"] = obs["condition"].astype("category")
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


@pytest.fixture
def h5ad_pair(tmp_path):
    adata = _counts_adata()
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    yield adata, backed
    backed.file.close()


class _CountingSource(RowSource):
    """A real RowSource that records the number of rows of every read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: list[int] = []

    def read_csr(self, positions):
        self.reads.append(len(positions))
        return super().read_csr(positions)

    def read(self, positions):
        self.reads.append(len(positions))
        return super().read(positions)


@pytest.mark.parametrize("model", ["shared_target", "contrastive"])
def test_backed_fit_equals_in_memory_fit(h5ad_pair, model, w_update="epoch"):
    adata, backed = h5ad_pair
    is_target = (adata.obs["condition"] == "stim").to_numpy()
    rows_t, rows_b = np.flatnonzero(is_target), np.flatnonzero(~is_target)
    kwargs = dict(model=model, alpha=0.01, w_update=w_update, batch_size=40, max_epochs=15,
                  tol=0, random_state=0, n_starts=1)
    memory = BCNMF(3, **kwargs).fit(RowSource(adata.X, rows=rows_t), RowSource(adata.X, rows=rows_b))
    target = _CountingSource(backed.X, rows=rows_t, name="target")
    background = _CountingSource(backed.X, rows=rows_b, name="background")
    assert target.backed
    streamed = BCNMF(3, **kwargs).fit(target, background)
    np.testing.assert_allclose(streamed.loadings_, memory.loadings_, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(streamed.target_usages_, memory.target_usages_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(streamed.background_usages_, memory.background_usages_, rtol=1e-5, atol=1e-6)
    for source in (target, background):
        # one validation pass (≤ 4,096 rows per read), then every epoch reads its batches again (not cached)
        assert max(source.reads[1:]) <= 40
        assert len(source.reads) >= 15 * (source.n_rows // 40)


def test_backed_online_fit_equals_in_memory_online_fit(h5ad_pair):
    """Online updates use the same contiguous batches, visited in the same seeded order, in memory and backed."""
    adata, backed = h5ad_pair
    is_target = (adata.obs["condition"] == "stim").to_numpy()
    rows_t, rows_b = np.flatnonzero(is_target), np.flatnonzero(~is_target)
    kwargs = dict(w_update="online", batch_size=40, max_epochs=12, tol=0, random_state=0, n_starts=1)
    memory = BCNMF(3, **kwargs).fit(RowSource(adata.X, rows=rows_t), RowSource(adata.X, rows=rows_b))
    target = _CountingSource(backed.X, rows=rows_t, name="target")
    streamed = BCNMF(3, **kwargs).fit(target, RowSource(backed.X, rows=rows_b))
    assert max(target.reads[1:]) <= 40
    np.testing.assert_allclose(streamed.loadings_, memory.loadings_, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(streamed.target_usages_, memory.target_usages_, rtol=1e-5, atol=1e-6)


def test_tl_bcnmf_on_a_backed_anndata_matches_in_memory(h5ad_pair):
    adata, backed = h5ad_pair
    kwargs = dict(background_key="condition", background="ctrl", n_topics=3, n_target_topics=1, max_epochs=10,
                  batch_size=64, random_state=0, progress=False, n_starts=1)
    bc.tl.bcnmf(adata, **kwargs)
    bc.tl.bcnmf(backed, **kwargs)
    assert backed.isbacked
    np.testing.assert_allclose(backed.varm["bcnmf"], adata.varm["bcnmf"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(backed.obsm["bcnmf"], adata.obsm["bcnmf"], rtol=1e-4, atol=1e-5)


def test_backed_csc_is_refused_with_advice(tmp_path):
    adata = _counts_adata(n_cells=40, n_genes=12)
    adata.X = sp.csc_matrix(adata.X)
    path = tmp_path / "csc.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(ValueError, match="CSR"):
            RowSource(backed.X)
    finally:
        backed.file.close()

