import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PathCollection, PolyCollection

import bcnmf_sc as bc


def test_usage_renders_groups_and_statistics(fitted, tmp_path):
    path = tmp_path / "usage.png"
    axes = bc.pl.usage(fitted, show=False, save=path)
    assert path.stat().st_size > 5000
    enrichment = fitted.uns["bcnmf"]["enrichment"]
    assert len(axes) == len(enrichment)
    for ax in axes:
        topic = ax.get_title().split()[0]
        row = enrichment.loc[topic]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["background\n(background)", "target\n(target)"]
        (stats,) = [t.get_text() for t in ax.texts]
        assert f"AUROC {row['auroc']:.2f}" in stats and f"leakage {row['leakage']:.2f}" in stats
        assert ax.get_ylabel() == "usage (log1p)"
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2  # a violin per group


def test_usage_medians_match_the_groups(fitted):
    _, ax = plt.subplots()
    assert bc.pl.usage(fitted, topics="target_1", log=False, ax=ax, show=False) is ax
    column = list(fitted.uns["bcnmf"]["enrichment"].index).index("target_1")
    is_target = (fitted.obs["condition"] == "target").to_numpy()
    medians = [np.asarray(c.get_offsets())[0, 1] for c in ax.collections if isinstance(c, PathCollection)]
    usage = fitted.obsm["bcnmf"][:, column]
    np.testing.assert_allclose(medians, [np.median(usage[~is_target]), np.median(usage[is_target])])
    assert ax.get_ylabel() == "usage"


def test_usage_after_h5ad_round_trip(fitted, tmp_path):
    fitted.write_h5ad(tmp_path / "fit.h5ad")
    import anndata as ad

    back = ad.read_h5ad(tmp_path / "fit.h5ad")
    axes = bc.pl.usage(back, topics=[0, 1], show=False)
    assert len(axes) == 2


def test_usage_errors(fitted):
    with pytest.raises(KeyError, match="no bcNMF result"):
        bc.pl.usage(fitted, key="missing")
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="single panel"):
        bc.pl.usage(fitted, ax=ax)
