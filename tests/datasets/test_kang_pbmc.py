import numpy as np
import pytest
import scipy.sparse as sp

from bcnmf_sc.datasets import kang_pbmc
from bcnmf_sc.datasets._kang_pbmc import _build_kang_pbmc, _read_10x_like_h5
from bcnmf_sc.datasets._utils import shared_data_dir


def test_shape_and_annotations():
    adata = kang_pbmc()
    assert adata.shape == (600, 249)
    assert adata.obs["condition"].value_counts().to_dict() == {"ctrl": 300, "stim": 300}
    assert list(adata.obs["condition"].cat.categories) == ["ctrl", "stim"]
    assert adata.obs_names.is_unique and adata.var_names.is_unique
    assert all(name.startswith(f"{c}_") for name, c in zip(adata.obs_names, adata.obs["condition"]))


def test_raw_integer_counts():
    adata = kang_pbmc()
    assert sp.issparse(adata.X) and adata.X.format == "csr"
    assert adata.X.dtype == np.float32
    assert np.array_equal(adata.X.data, np.round(adata.X.data))
    assert adata.X.data.min() >= 1
    assert (adata.layers["counts"] != adata.X).nnz == 0


def test_interferon_genes_higher_in_stim():
    adata = kang_pbmc()
    isgs = [g for g in ("ISG15", "IFI6") if g in adata.var_names]
    assert isgs
    stim = (adata.obs["condition"] == "stim").to_numpy()
    for gene in isgs:
        x = adata[:, gene].X.toarray().ravel()
        assert x[stim].mean() > 5 * x[~stim].mean()


def test_fresh_copy_every_call():
    a = kang_pbmc()
    a.X.data[:] = 0
    a.obs["condition"] = "changed"
    b = kang_pbmc()
    assert b.X.sum() > 0
    assert set(b.obs["condition"]) == {"ctrl", "stim"}


def test_bundled_file_matches_source():
    folder = shared_data_dir() / "kang_pbmc_small"
    if not (folder / "ctrl.h5").is_file():
        pytest.skip("shared kang_pbmc_small files are not available")
    ctrl = _read_10x_like_h5(folder / "ctrl.h5")
    assert ctrl.shape == (300, 266)
    built = _build_kang_pbmc(folder / "ctrl.h5", folder / "stim.h5")
    bundled = kang_pbmc()
    assert list(built.var_names) == list(bundled.var_names)
    assert list(built.obs_names) == list(bundled.obs_names)
    assert (built.X != bundled.X).nnz == 0
