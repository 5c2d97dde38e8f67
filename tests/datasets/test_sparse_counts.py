import time
import tracemalloc

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from bcnmf_sc.datasets import sparse_counts


def test_shape_dtype_and_integer_counts():
    adata = sparse_counts(n_cells=3000, n_genes=500, chunk_size=700, random_state=0)
    assert adata.shape == (3000, 500)
    X = adata.X
    assert sp.isspmatrix_csr(X)
    assert X.dtype == np.float32
    assert X.has_sorted_indices
    assert np.all(X.data >= 1)
    assert np.array_equal(X.data, np.round(X.data))
    assert adata.obs["condition"].value_counts().to_dict() == {"target": 1500, "background": 1500}
    assert adata.obsm["true_usages"].shape == (3000, 10)
    assert adata.varm["true_loadings"].shape == (500, 10)
    np.testing.assert_allclose(adata.varm["true_loadings"].sum(axis=0), 1.0, rtol=1e-4)


@pytest.mark.parametrize("density", [0.02, 0.1, 0.3])
def test_realised_density_close_to_target(density):
    adata = sparse_counts(n_cells=4000, n_genes=1000, density=density, random_state=1)
    realised = adata.X.nnz / (adata.n_obs * adata.n_vars)
    assert abs(realised - density) < 0.1 * density
    assert adata.uns["simulation"]["realised_density"] == pytest.approx(realised)


def test_counts_follow_ground_truth_mean():
    adata = sparse_counts(n_cells=5000, n_genes=400, random_state=2)
    H, W = adata.obsm["true_usages"], adata.varm["true_loadings"]
    expected = H @ W.T
    X = adata.X
    # overall and per-gene means match the Poisson-NMF truth
    assert X.sum() == pytest.approx(expected.sum(), rel=0.01)
    gene_obs = np.asarray(X.mean(axis=0)).ravel()
    gene_exp = expected.mean(axis=0)
    assert np.corrcoef(gene_obs, gene_exp)[0, 1] > 0.99


def test_target_topics_only_in_target_cells():
    adata = sparse_counts(n_cells=2000, n_genes=300, n_topics=6, n_target_topics=2, target_fraction=0.3, random_state=3)
    bg = (adata.obs["condition"] == "background").to_numpy()
    assert (~bg).sum() == 600
    H = adata.obsm["true_usages"]
    assert np.all(H[bg, -2:] == 0)
    assert np.all(H[~bg, -2:].sum(axis=1) > 0)
    # the genes of the target topics' blocks are higher in target cells
    genes = adata.var["topic"].isin(["topic_4", "topic_5"]).to_numpy()
    X = adata.X
    assert X[~bg][:, genes].mean() > 2 * X[bg][:, genes].mean()


def test_determinism():
    kw = dict(n_cells=2500, n_genes=300, chunk_size=1000)
    a = sparse_counts(random_state=5, **kw)
    b = sparse_counts(random_state=5, **kw)
    c = sparse_counts(random_state=6, **kw)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["true_usages"], b.obsm["true_usages"])
    assert a.obs.equals(b.obs)
    assert (a.X != c.X).nnz > 0


def test_h5ad_path_roundtrip(tmp_path):
    kw = dict(n_cells=2300, n_genes=250, chunk_size=600, random_state=4)
    mem = sparse_counts(**kw)
    path = tmp_path / "sub" / "sim.h5ad"
    backed = sparse_counts(path=path, **kw)
    try:
        assert backed.isbacked
        assert backed.shape == mem.shape
        assert (backed.X[100:900] != mem.X[100:900]).nnz == 0
        assert backed.obs.equals(mem.obs)
        np.testing.assert_array_equal(backed.obsm["true_usages"], mem.obsm["true_usages"])
        np.testing.assert_array_equal(backed.varm["true_loadings"], mem.varm["true_loadings"])
    finally:
        backed.file.close()
    full = ad.read_h5ad(path)
    assert sp.issparse(full.X) and full.X.format == "csr"
    assert full.X.dtype == np.float32
    assert (full.X != mem.X).nnz == 0
    assert full.uns["simulation"]["nnz"] == mem.X.nnz
    assert [p.name for p in path.parent.iterdir()] == ["sim.h5ad"]  # no temporary file left


def test_invalid_arguments():
    with pytest.raises(ValueError):
        sparse_counts(n_cells=10, density=0.0)
    with pytest.raises(ValueError):
        sparse_counts(n_cells=10, density=0.95)
    with pytest.raises(ValueError):
        sparse_counts(n_cells=10, n_topics=3, n_target_topics=3)
    with pytest.raises(ValueError):
        sparse_counts(n_cells=10, n_genes=5, n_topics=10)
    with pytest.raises(ValueError):
        sparse_counts(n_cells=10, target_fraction=1.5)
    with pytest.raises(TypeError):
        sparse_counts(n_cells=10.0)


def test_large_no_dense_materialisation(tmp_path):
    # 50k x 2000 (a dense float32 copy would be 400 MB); memory must stay at about one chunk
    n_cells, n_genes = 50_000, 2000
    dense_bytes = n_cells * n_genes * 4
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        adata = sparse_counts(
            n_cells=n_cells, n_genes=n_genes, density=0.1, chunk_size=2000, path=tmp_path / "big.h5ad"
        )
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        nnz = adata.uns["simulation"]["nnz"]
        assert abs(nnz / (n_cells * n_genes) - 0.1) < 0.01
        assert peak < 0.25 * dense_bytes, f"peak traced memory {peak / 2**20:.0f} MiB"
        assert elapsed < 120  # about 3 s on one idle core; generous for loaded CI machines
    finally:
        adata.file.close()
