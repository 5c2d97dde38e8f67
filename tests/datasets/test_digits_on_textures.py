import numpy as np

from bcnmf_sc.datasets import digits_on_textures
from bcnmf_sc.datasets._utils import DATA_DIR


def test_shape_and_labels():
    adata = digits_on_textures()
    assert adata.shape == (350, 784)
    assert isinstance(adata.X, np.ndarray) and adata.X.dtype == np.float32
    assert adata.X.min() >= 0 and adata.X.max() <= 1
    cond = adata.obs["condition"].to_numpy()
    assert (cond[:200] == "target").all() and (cond[200:] == "background").all()
    digit = adata.obs["digit"]
    assert digit.value_counts().to_dict() == {"0": 100, "1": 100, "none": 150}
    assert (digit[cond == "background"] == "none").all()
    assert adata.var_names[0] == "pixel_0" and adata.var_names[-1] == "pixel_783"
    assert adata.var["row"].max() == 27 and adata.var["col"].max() == 27


def test_digits_differ_on_average():
    adata = digits_on_textures()
    d = adata.obs["digit"].to_numpy()
    mean0, mean1 = adata.X[d == "0"].mean(axis=0), adata.X[d == "1"].mean(axis=0)
    assert np.abs(mean0 - mean1).max() > 0.1


def test_fresh_copy_and_small_file():
    a = digits_on_textures()
    a.X[:] = 0
    assert digits_on_textures().X.max() > 0
    assert (DATA_DIR / "digits_on_textures.npz").stat().st_size < 1.5 * 2**20
