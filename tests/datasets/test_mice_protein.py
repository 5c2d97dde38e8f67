import numpy as np
import pytest

from bcnmf_sc.datasets import mice_protein
from bcnmf_sc.datasets._utils import SHARED_DATA_ENV, shared_data_dir

CSV = shared_data_dir() / "mice_protein" / "Data_Cortex_Nuclear.csv"
needs_file = pytest.mark.skipif(not CSV.is_file(), reason="shared mice_protein CSV is not available")


@needs_file
def test_shape_and_cleaning():
    adata = mice_protein()
    assert adata.shape == (1080, 77)
    assert adata.X.dtype == np.float32
    assert np.isfinite(adata.X).all()
    assert adata.X.min() == 0.0
    assert adata.uns["mice_protein"]["n_missing_filled_with_column_mean"] == 1396
    assert adata.uns["mice_protein"]["n_negative_clipped_to_zero"] == 1
    assert int(adata.layers["missing"].sum()) == 1396
    assert adata.var_names[0] == "DYRK1A_N" and adata.var["protein"].iloc[0] == "DYRK1A"


@needs_file
def test_missing_filled_with_column_mean():
    import pandas as pd

    raw = pd.read_csv(CSV, encoding="utf-8-sig")
    adata = mice_protein()
    miss = adata.layers["missing"].astype(bool)
    j = int(np.flatnonzero(miss.any(axis=0))[0])
    col = raw[adata.var_names[j]]
    np.testing.assert_allclose(adata.X[miss[:, j], j], np.float32(col.mean()), rtol=1e-6)


@needs_file
def test_obs():
    adata = mice_protein()
    for col in ("MouseID", "Genotype", "Treatment", "Behavior", "class"):
        assert adata.obs[col].dtype == "category"
    assert set(adata.obs["Genotype"]) == {"Control", "Ts65Dn"}
    assert adata.obs["mouse"].nunique() == 72
    assert adata.obs["condition"].value_counts().to_dict() == {"other": 675, "target": 270, "background": 135}
    tgt = adata.obs[adata.obs["condition"] == "target"]
    assert tgt["Genotype"].value_counts().to_dict() == {"Control": 135, "Ts65Dn": 135}


@needs_file
def test_path_and_env(monkeypatch):
    a = mice_protein(path=CSV)
    b = mice_protein(path=CSV.parent.parent)
    np.testing.assert_array_equal(a.X, b.X)
    monkeypatch.setenv(SHARED_DATA_ENV, str(CSV.parent.parent))
    np.testing.assert_array_equal(mice_protein().X, a.X)


def test_missing_file_message(tmp_path, monkeypatch):
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=SHARED_DATA_ENV):
        mice_protein()
    with pytest.raises(FileNotFoundError):
        mice_protein(path=tmp_path / "nope.csv")
