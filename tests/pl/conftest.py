import matplotlib
import matplotlib.pyplot as plt
import pytest
import scanpy as sc

import bcnmf_sc as bc

matplotlib.use("Agg")  # never open windows or block in tests


@pytest.fixture(scope="session")
def _fitted():
    adata = bc.datasets.beta_series(
        beta=0.1,
        n_target=100,
        n_background=100,
        n_genes=200,
        shared_block_size=25,
        target_block_size=20,
        random_state=0,
    )
    bc.tl.bcnmf(
        adata,
        background_key="condition",
        background="background",
        layer="counts",
        n_topics=5,
        n_target_topics=2,
        max_epochs=25,
        progress=False,
    )
    sc.pp.pca(adata, n_comps=5)
    return adata


@pytest.fixture
def fitted(_fitted):
    """A small AnnData fitted with ``tl.bcnmf`` (key ``bcnmf``) and a PCA; a fresh copy per test."""
    return _fitted.copy()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")
