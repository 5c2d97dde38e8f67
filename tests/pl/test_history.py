import numpy as np
import pytest

import bcnmf_sc as bc


def test_history_renders_curves_and_stages(fitted, tmp_path):
    path = tmp_path / "history.png"
    ax = bc.pl.history(fitted, show=False, save=path)
    assert path.stat().st_size > 5000
    table = fitted.uns["bcnmf"]["history"]
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"objective", "target loss", "background loss"}
    np.testing.assert_array_equal(lines["objective"].get_xdata(), table["epoch"])
    np.testing.assert_allclose(lines["objective"].get_ydata(), table["objective"])
    texts = {t.get_text() for t in ax.texts}
    assert set(table["stage"].unique()) <= texts  # each stage is named
    assert ax.get_yscale() == "log"  # all losses positive in the shared + target model
    assert ax.get_xlabel() == "epoch"


def test_history_linear_axis_when_asked(fitted):
    assert bc.pl.history(fitted, log=False, show=False).get_yscale() == "linear"


def test_history_errors(fitted):
    with pytest.raises(KeyError, match="no bcNMF result"):
        bc.pl.history(fitted, key="missing")
    fitted.uns["bcnmf"]["history"] = fitted.uns["bcnmf"]["history"].iloc[:0]
    with pytest.raises(ValueError, match="empty"):
        bc.pl.history(fitted)


def test_history_contrastive_fit_single_stage(fitted):
    bc.tl.bcnmf(
        fitted,
        background_key="condition",
        background="background",
        layer="counts",
        model="contrastive",
        likelihood="gaussian",
        alpha=1.0,
        n_topics=3,
        max_epochs=15,
        progress=False,
        key_added="contrast",
    )
    ax = bc.pl.history(fitted, key="contrast", show=False)
    objective = fitted.uns["contrast"]["history"]["objective"].to_numpy()
    assert ax.get_yscale() == ("log" if (objective > 0).all() else "linear")
    assert not ax.texts  # one stage only: nothing to mark
