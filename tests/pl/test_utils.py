import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bcnmf_sc.pl._utils import finish, interactive, panels, select_topics, topic_order
from bcnmf_sc.pl._utils import fitted as fit_result


def test_panels_grid_removes_unused_cells():
    fig, axes = panels(5, ncols=3)
    assert len(axes) == 5
    assert len(fig.axes) == 5  # the sixth grid cell was removed


def test_panels_uses_the_callers_axes():
    fig, ax = plt.subplots()
    got_fig, axes = panels(1, ax=ax)
    assert got_fig is fig and axes == [ax]
    with pytest.raises(ValueError, match="single panel"):
        panels(2, ax=ax)


def test_finish_contract(tmp_path):
    fig, axes = panels(1)
    assert finish(fig, axes, show=False) is axes[0]
    assert isinstance(finish(fig, axes, show=False, return_fig=True), Figure)
    assert finish(fig, axes, show=True) is None  # Agg: show() does not block
    # show=None: not interactive under Agg in tests, so nothing is shown and the axes come back
    assert isinstance(finish(fig, axes), Axes)
    fig, axes = panels(3)
    assert finish(fig, axes, show=False) == axes


def test_interactive_follows_matplotlib():
    assert not interactive()  # Agg backend, interactive mode off: show=None never blocks here
    plt.ion()
    try:
        assert interactive()
    finally:
        plt.ioff()


def test_finish_saves_png_and_adds_suffix(tmp_path):
    fig, axes = panels(1)
    axes[0].plot([0, 1], [0, 1])
    finish(fig, axes, show=False, save=tmp_path / "sub" / "plot")
    path = tmp_path / "sub" / "plot.png"
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finish(fig, axes, show=False, save=str(tmp_path / "plot.pdf"))
    assert (tmp_path / "plot.pdf").read_bytes()[:4] == b"%PDF"


def test_fitted_result_and_missing_key(fitted):
    assert set(fit_result(fitted, "bcnmf")) >= {"params", "topics", "history", "enrichment"}
    with pytest.raises(KeyError, match="run bcnmf_sc.tl.bcnmf"):
        fit_result(fitted, "nope")
    del fitted.obsm["bcnmf"]
    with pytest.raises(KeyError, match="no bcNMF result"):
        fit_result(fitted, "bcnmf")


def test_select_topics(fitted):
    enrichment = fitted.uns["bcnmf"]["enrichment"]
    order = topic_order(enrichment)
    assert sorted(order) == list(range(len(enrichment)))
    flags = enrichment["enriched"].to_numpy()[order]
    assert not np.any(np.diff(flags.astype(int)) > 0)  # enriched topics come first
    np.testing.assert_array_equal(select_topics(fitted, "bcnmf", None), order)
    assert list(select_topics(fitted, "bcnmf", "target_1")) == [list(enrichment.index).index("target_1")]
    assert list(select_topics(fitted, "bcnmf", [0, -1])) == [0, len(enrichment) - 1]
    with pytest.raises(KeyError, match="not a topic"):
        select_topics(fitted, "bcnmf", "topic_9")
    with pytest.raises(IndexError):
        select_topics(fitted, "bcnmf", 99)
    with pytest.raises(ValueError, match="no topic"):
        select_topics(fitted, "bcnmf", [])


def test_plots_leave_adata_untouched(fitted):
    import bcnmf_sc as bc

    before = fitted.copy()
    bc.pl.topic_genes(fitted, show=False)
    bc.pl.usage(fitted, show=False)
    bc.pl.history(fitted, show=False)
    bc.pl.embedding(fitted, basis="pca", show=False)
    assert list(fitted.uns) == list(before.uns) and list(fitted.obsm) == list(before.obsm)
    assert list(fitted.obs.columns) == list(before.obs.columns)
    np.testing.assert_array_equal(fitted.obsm["bcnmf"], before.obsm["bcnmf"])
    assert fitted.uns["bcnmf"]["enrichment"].equals(before.uns["bcnmf"]["enrichment"])
