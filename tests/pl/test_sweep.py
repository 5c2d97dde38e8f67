"""``pl.sweep`` and ``pl.stability``."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

import bcnmf_sc as bc

from ..tl.sweep_helpers import programs_adata

BASE = dict(background_key="condition", background="background", progress=False)


@pytest.fixture(scope="module")
def swept():
    adata = programs_adata(n_cells=80)
    bc.tl.bcnmf_sweep(adata, n_topics=[3, 5, 6], n_target_topics=[1, 2], n_seeds=2, max_epochs=60, **BASE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        bc.tl.bcnmf_sweep(
            adata,
            model="contrastive",
            n_topics=[2, 3],
            alpha=[0.0, 0.01, 100.0],
            n_seeds=2,
            max_epochs=30,
            key_added="contrastive_sweep",
            **BASE,
        )
    bc.tl.consensus(adata, n_topics=5, n_target_topics=2, n_starts=3, max_epochs=60, **BASE)
    return adata


def test_sweep_map_shared_target(swept, tmp_path):
    path = tmp_path / "sweep.png"
    axes = bc.pl.sweep(swept, show=False, save=path)
    assert path.stat().st_size > 20000
    assert len(axes) == 4
    assert axes[0].get_title().startswith("held-out target loss − best")
    table = swept.uns["bcnmf_sweep"]["table"]
    assert list(axes[0].get_xticks()) == sorted(table["n_topics"].unique())
    legend = [t.get_text() for t in axes[-1].get_legend().get_texts()]
    assert "recommended" in legend and "flagged" in legend and "target topics = 2" in legend
    fig = axes[0].figure
    assert "recommended K = 5" in fig._suptitle.get_text()
    # the leakage and stability thresholds are drawn
    params = swept.uns["bcnmf_sweep"]["params"]
    leakage_panel = axes[2]
    assert any(np.allclose(line.get_ydata(), params["max_leakage"]) for line in leakage_panel.get_lines())


def test_sweep_map_contrastive_marks_unsafe_settings(swept):
    fig = bc.pl.sweep(swept, key="contrastive_sweep", metrics=["target_excess", "leakage"], return_fig=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.01", "100"]
    # the unsafe α = 100 settings have no value: they are marked by crosses on the axis
    crosses = [c for c in ax.collections if len(c.get_offsets()) and np.allclose(c.get_offsets()[:, 0], 2)]
    assert crosses


def test_sweep_single_metric_into_given_axes(swept):
    _, ax = plt.subplots()
    out = bc.pl.sweep(swept, metrics="stability_min", ax=ax, show=False)
    assert out is ax
    with pytest.raises(ValueError, match="single panel"):
        bc.pl.sweep(swept, ax=ax, show=False)


def test_sweep_errors(swept):
    with pytest.raises(KeyError, match="no bcnmf_sweep result"):
        bc.pl.sweep(swept, key="bcnmf_consensus")
    with pytest.raises(ValueError, match="unknown metrics"):
        bc.pl.sweep(swept, metrics=["accuracy"])


def test_stability_of_a_consensus(swept, tmp_path):
    path = tmp_path / "stability.png"
    ax = bc.pl.stability(swept, show=False, save=path)
    assert path.stat().st_size > 10000
    table = swept.uns["bcnmf_consensus"]["consensus"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(table.index)
    heights = [patch.get_height() for patch in ax.patches]
    np.testing.assert_allclose(heights, table["stability"])
    assert "3 runs" in ax.get_title()


def test_stability_of_a_sweep_and_of_a_fit_with_starts(swept):
    ax = bc.pl.stability(swept, key="bcnmf_sweep", show=False)
    assert "seeds" in ax.get_title() and len(ax.patches) == 5
    adata = swept.copy()
    bc.tl.bcnmf(adata, n_topics=5, n_target_topics=2, n_starts=2, max_epochs=40, **BASE)
    ax = bc.pl.stability(adata, key="bcnmf", show=False)
    np.testing.assert_allclose([p.get_height() for p in ax.patches], adata.uns["bcnmf"]["enrichment"]["stability"])
    with pytest.raises(KeyError):
        bc.pl.stability(adata, key="nothing")
