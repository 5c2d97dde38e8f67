import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from bcnmf_sc.datasets import beta_series

SMALL = dict(n_target=200, n_background=150, n_genes=1600)


def test_default_shape_and_annotations():
    adata = beta_series(beta=8, random_state=0)
    assert adata.shape == (2000, 3000)
    assert sp.isspmatrix_csr(adata.X)
    assert adata.X.dtype == np.float32
    assert adata.obs["condition"].value_counts().to_dict() == {"target": 1000, "background": 1000}
    sub = adata.obs.loc[adata.obs["condition"] == "target", "subtype"].value_counts()
    assert sub["A"] == 500 and sub["B"] == 500
    assert (adata.obs.loc[adata.obs["condition"] == "background", "subtype"] == "none").all()
    assert list(adata.obs["shared_class"].cat.categories) == [f"shared_{k}" for k in range(5)]
    assert adata.var_names[0] == "g0000" and adata.var_names.is_unique
    counts = adata.var["program"].value_counts()
    assert all(counts[f"shared_{k}"] == 250 for k in range(5))
    assert counts["target_0"] == 120 and counts["target_1"] == 120
    assert counts["none"] == 3000 - 5 * 250 - 2 * 120
    assert adata.varm["true_loadings"].shape == (3000, 7)
    assert adata.uns["simulation"]["beta"] == 8.0


def test_counts_are_integers_and_layer_matches():
    adata = beta_series(beta=2, random_state=1, **SMALL)
    X = adata.X
    assert np.all(X.data >= 0)
    assert np.array_equal(X.data, np.round(X.data))
    counts = adata.layers["counts"]
    assert counts is not X
    assert (counts != X).nnz == 0


def test_same_seed_identical_different_seed_differs():
    a = beta_series(beta=4, random_state=7, **SMALL)
    b = beta_series(beta=4, random_state=7, **SMALL)
    c = beta_series(beta=4, random_state=8, **SMALL)
    assert (a.X != b.X).nnz == 0
    assert a.obs.equals(b.obs)
    np.testing.assert_array_equal(a.varm["true_loadings"], b.varm["true_loadings"])
    assert (a.X != c.X).nnz > 0


def test_generator_random_state():
    a = beta_series(beta=1, random_state=np.random.default_rng(3), **SMALL)
    b = beta_series(beta=1, random_state=np.random.default_rng(3), **SMALL)
    assert (a.X != b.X).nnz == 0


@pytest.mark.parametrize("beta", [0.0, 8.0])
def test_block_structure(beta):
    adata = beta_series(beta=beta, random_state=0)
    X = adata.X
    program = adata.var["program"].to_numpy()
    sub = adata.obs["subtype"].to_numpy()
    bg = adata.obs["condition"].to_numpy() == "background"
    for prog, own, other in (("target_0", "A", "B"), ("target_1", "B", "A")):
        genes = program == prog
        mean_own = X[sub == own][:, genes].mean()
        mean_bg = X[bg][:, genes].mean()
        mean_other = X[sub == other][:, genes].mean()
        # 0.15 * Gamma(2, 0.9) (mean 0.27) on top of the shared background level
        assert mean_own > mean_bg + 0.15
        assert mean_own > mean_other + 0.15
    # shared block genes follow the shared class, in target and background alike
    if beta > 0:
        cls = adata.obs["shared_class"].to_numpy()
        genes = program == "shared_0"
        for cond in (~bg, bg):
            assert X[cond & (cls == "shared_0")][:, genes].mean() > 5 * X[cond & (cls != "shared_0")][:, genes].mean()


def test_beta_scales_shared_signal():
    low = beta_series(beta=1, random_state=0, **SMALL)
    high = beta_series(beta=16, random_state=0, **SMALL)
    genes = (low.var["program"] == "shared_0").to_numpy()
    assert high.X[:, genes].mean() > 8 * low.X[:, genes].mean()


def test_h5ad_roundtrip(tmp_path):
    adata = beta_series(beta=2, random_state=0, **SMALL)
    path = tmp_path / "beta.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert (back.X != adata.X).nnz == 0
    assert back.obs.equals(adata.obs)
    assert back.uns["simulation"]["beta"] == 2.0
    assert back.uns["simulation"]["random_state"] == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (dict(beta=-1.0), ValueError),
        (dict(beta=float("nan")), ValueError),
        (dict(beta=1.0, n_genes=1000), ValueError),
        (dict(beta=1.0, n_target=0), ValueError),
        (dict(beta=1.0, n_background=2.5), TypeError),
        (dict(beta=1.0, random_state="seed"), TypeError),
    ],
)
def test_invalid_arguments(kwargs, error):
    with pytest.raises(error):
        beta_series(**kwargs)


def test_small_blocks():
    adata = beta_series(beta=1, n_target=21, n_background=10, n_genes=60, shared_block_size=8, target_block_size=5)
    assert adata.shape == (31, 60)
    assert (adata.obs["subtype"] == "A").sum() == 11
    assert (adata.var["program"] == "target_1").sum() == 5
