import numpy as np
import pytest

import bcnmf_sc as bc


def test_embedding_renders_each_topic(fitted, tmp_path):
    path = tmp_path / "embedding.png"
    axes = bc.pl.embedding(fitted, basis="pca", ncols=3, show=False, save=path)
    assert path.stat().st_size > 5000
    assert len(axes) == fitted.obsm["bcnmf"].shape[1]
    for ax in axes:
        (points,) = ax.collections
        column = list(fitted.uns["bcnmf"]["enrichment"].index).index(ax.get_title().split()[0])
        usage = fitted.obsm["bcnmf"][:, column]
        np.testing.assert_allclose(np.sort(points.get_array()), np.sort(usage))  # coloured by that topic
        assert np.all(np.diff(points.get_array()) >= 0)  # highest usage drawn last
        assert points.get_clim() == (0.0, pytest.approx(np.percentile(usage, 99)))
        assert ax.get_xlabel() == "PCA1"


def test_embedding_full_obsm_key_and_vmax(fitted):
    fitted.obsm["X_umap"] = fitted.obsm["X_pca"][:, :2]
    ax = bc.pl.embedding(fitted, topics="target_1", vmax=None, show=False)
    assert ax.get_xlabel() == "UMAP1"
    (points,) = ax.collections
    assert points.get_clim()[1] == pytest.approx(points.get_array().max())
    ax = bc.pl.embedding(fitted, basis="X_pca", topics=0, vmax=3.0, show=False)
    assert ax.collections[0].get_clim() == (0.0, 3.0)


def test_embedding_errors(fitted):
    with pytest.raises(KeyError, match="no embedding 'umap'"):
        bc.pl.embedding(fitted)
    with pytest.raises(ValueError, match="vmax"):
        bc.pl.embedding(fitted, basis="pca", vmax="top")
    with pytest.raises(KeyError, match="no bcNMF result"):
        bc.pl.embedding(fitted, key="missing", basis="pca")
