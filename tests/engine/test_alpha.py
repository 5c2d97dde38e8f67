"""α*, the safety rule for α, excluded genes and collapse detection of the Poisson contrastive objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bcnmf_sc.engine._alpha as alpha_module
from bcnmf_sc.engine import ALPHA_SAFETY, BCNMF, CollapseError, UnsafeAlphaError, alpha_star
from bcnmf_sc.engine._alpha import check_alpha

# Hand-made example (2 target cells, 4 background cells, 5 genes):
#   gene            g0   g1   g2   g3   g4
#   target total     4    2    0    6    0      mean over 2 cells: 2, 1, 0, 3, 0
#   background tot.  4    8    4    0    0      mean over 4 cells: 1, 2, 1, 0, 0
# g2 has zero target total but background counts → set aside (it alone would make α* = 0);
# g3, g4 are not expressed in the background → no limit; α* = min(2/1, 1/2) = 0.5.
HAND_X = np.array([[2, 1, 0, 3, 0], [2, 1, 0, 3, 0]])
HAND_Y = np.array([[1, 2, 1, 0, 0]] * 4)
HAND_ALPHA_STAR = 0.5


def test_alpha_star_by_hand():
    kept = np.array([0, 1, 3, 4])
    assert alpha_star(HAND_X.sum(0)[kept], HAND_Y.sum(0)[kept], 2, 4) == pytest.approx(HAND_ALPHA_STAR)
    # without setting g2 aside every α > 0 would be unsafe
    assert alpha_star(HAND_X.sum(0), HAND_Y.sum(0), 2, 4) == 0.0
    # nothing expressed in the background: no limit
    assert alpha_star(np.array([1.0, 2.0]), np.zeros(2), 3, 3) == float("inf")


def test_alpha_star_is_scale_free():
    """Duplicating the background cells (n_b doubles, same profile) leaves α* unchanged."""
    y2 = np.vstack([HAND_Y, HAND_Y])
    kept = np.array([0, 1, 3, 4])
    assert alpha_star(HAND_X.sum(0)[kept], y2.sum(0)[kept], 2, 8) == pytest.approx(HAND_ALPHA_STAR)


def test_engine_computes_alpha_star_and_sets_zero_target_genes_aside():
    est = BCNMF(2, model="contrastive", alpha=0.2, max_epochs=5, random_state=0).fit(HAND_X, HAND_Y)
    assert est.alpha_star_ == pytest.approx(HAND_ALPHA_STAR)
    assert est.alpha_ == 0.2
    np.testing.assert_array_equal(est.excluded_genes_, [2])
    np.testing.assert_array_equal(est.loadings_[2], 0.0)
    np.testing.assert_allclose(est.loadings_.sum(axis=0), 1.0, atol=1e-6)
    assert np.all(np.isfinite(est.target_usages_)) and np.all(np.isfinite(est.background_usages_))
    # projection ignores the set-aside gene
    np.testing.assert_allclose(est.transform(HAND_X), est.transform(HAND_X * [1, 1, 0, 1, 1]), rtol=1e-6)


def test_no_genes_set_aside_for_alpha_zero_gaussian_or_shared_target():
    for kwargs in (dict(model="contrastive", alpha=0.0), dict(model="contrastive", likelihood="gaussian", alpha=0.3),
                   dict(model="shared_target", n_target_topics=1)):
        est = BCNMF(2, max_epochs=3, random_state=0, **kwargs).fit(HAND_X, HAND_Y)
        assert len(est.excluded_genes_) == 0, kwargs


def test_gaussian_accepts_any_alpha(planted):
    x, y, _ = planted(n_target=60, n_background=60, n_genes=30, likelihood="gaussian")
    est = BCNMF(3, model="contrastive", likelihood="gaussian", alpha=50.0, max_epochs=20).fit(x, y)
    assert est.alpha_star_ == float("inf") and est.alpha_ == 50.0  # squared error is bounded for every α
    assert np.all(np.isfinite(est.loadings_))
    np.testing.assert_allclose(est.loadings_.sum(axis=0), 1.0, atol=1e-6)


def test_identical_cells_are_not_mistaken_for_a_collapse():
    """Regression: when every cell of a group is the same, the rank-one reference loss is 0 and the collapse
    checks (loss far above that reference) fired on float32 round-off."""
    for kwargs in (dict(model="contrastive", alpha=0.2), dict(model="contrastive", alpha=0.0),
                   dict(model="contrastive", likelihood="gaussian", alpha=0.3), dict(model="shared_target")):
        est = BCNMF(2, max_epochs=30, random_state=0, **kwargs).fit(HAND_X, HAND_Y)
        assert est.collapsed_starts_ == [None], kwargs
        assert np.all(np.isfinite(est.loadings_))


@pytest.mark.parametrize("alpha", [0.25, 0.3, 5.0])
def test_alpha_at_or_above_the_safe_limit_is_refused(alpha):
    with pytest.raises(UnsafeAlphaError, match=r"safe limit 0\.25 .*α\* = 0\.5"):
        BCNMF(2, model="contrastive", alpha=alpha, max_epochs=3).fit(HAND_X, HAND_Y)


def test_check_alpha_rule():
    assert ALPHA_SAFETY == 0.5
    assert check_alpha(0.0, 0.0, on_unsafe="raise") == 0.0  # α = 0 is plain NMF, always safe
    assert check_alpha(0.49, 1.0, on_unsafe="raise") == 0.49
    with pytest.raises(UnsafeAlphaError):
        check_alpha(0.5, 1.0, on_unsafe="raise")
    with pytest.warns(UserWarning, match="Clipping alpha"):
        clipped = check_alpha(3.0, 1.0, on_unsafe="clip")
    assert clipped < 0.5 and clipped == pytest.approx(0.5)
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            check_alpha(bad, 1.0, on_unsafe="raise")
    with pytest.raises(ValueError, match="unsafe_alpha"):
        check_alpha(3.0, 1.0, on_unsafe="ignore")


# ------------------------------------------------------------------------------- the No-collapse requirement
def test_alpha_ten_times_alpha_star_raises(planted):
    x, y, _ = planted(n_target=80, n_background=80, n_genes=30)
    a_star = BCNMF(3, model="contrastive", alpha=0.0, max_epochs=1).fit(x, y).alpha_star_
    assert np.isfinite(a_star) and a_star > 0
    with pytest.raises(UnsafeAlphaError, match="unbounded"):
        BCNMF(3, model="contrastive", alpha=10 * a_star, max_epochs=10, unsafe_alpha="raise").fit(x, y)


def test_alpha_ten_times_alpha_star_clipped_gives_finite_normalised_factors(planted):
    x, y, _ = planted(n_target=80, n_background=80, n_genes=30)
    a_star = BCNMF(3, model="contrastive", alpha=0.0, max_epochs=1).fit(x, y).alpha_star_
    with pytest.warns(UserWarning, match="Clipping alpha"):
        est = BCNMF(3, model="contrastive", alpha=10 * a_star, max_epochs=60, unsafe_alpha="clip",
                    random_state=0).fit(x, y)
    assert est.alpha_star_ == pytest.approx(a_star)
    assert est.alpha_ < ALPHA_SAFETY * a_star and est.alpha_ == pytest.approx(ALPHA_SAFETY * a_star)
    assert est.collapsed_starts_ == [None]
    for factor in (est.loadings_, est.target_usages_, est.background_usages_):
        assert np.all(np.isfinite(factor)) and np.all(factor >= 0)
    np.testing.assert_allclose(est.loadings_.sum(axis=0), 1.0, atol=1e-6)
    assert est.loadings_.max() < 1.0  # no loading blew up (the published objective reaches ~1e18)
    history = np.array([h["target_loss"] for h in est.history_])
    assert np.all(np.isfinite(history))


def test_alpha_star_matches_the_data(planted):
    x, y, _ = planted(n_target=80, n_background=60, n_genes=30)
    est = BCNMF(3, model="contrastive", alpha=0.0, max_epochs=1).fit(x, y)
    mean_x, mean_y = x.sum(0) / 80, y.sum(0) / 60
    expressed = (mean_y > 0) & (mean_x > 0)
    assert est.alpha_star_ == pytest.approx(np.min(mean_x[expressed] / mean_y[expressed]))


def test_collapse_is_detected_and_raised_when_the_guard_is_bypassed(planted, monkeypatch, caplog):
    """With the safety rule switched off, α = 10·α* makes the objective unbounded: the fit must stop with
    CollapseError and a clear message instead of returning loadings of 0 and 1e18."""
    x, y, _ = planted(n_target=80, n_background=80, n_genes=30)
    monkeypatch.setattr(alpha_module, "ALPHA_SAFETY", 1e6)
    a_star = BCNMF(3, model="contrastive", alpha=0.0, max_epochs=1).fit(x, y).alpha_star_
    est = BCNMF(3, model="contrastive", alpha=10 * a_star, max_epochs=200, tol=0, n_starts=2, random_state=0)
    with pytest.raises(CollapseError, match=r"all 2 start\(s\) collapsed.*lower alpha or use model='shared_target'"):
        est.fit(x, y)
    assert not hasattr(est, "loadings_")  # nothing half-fitted is left to be used
    assert "collapsed at epoch" in caplog.text
    # detected early, not after running all epochs on garbage
    epochs = [int(r.getMessage().split("epoch ")[1].split(":")[0]) for r in caplog.records if "collapsed at" in r.getMessage()]
    assert epochs and max(epochs) < 50


def test_alpha_just_above_alpha_star_collapses_or_stays_finite(planted, monkeypatch):
    """Between α* and 2α* the fit either reports a collapse or returns finite, normalised factors."""
    x, y, _ = planted(n_target=80, n_background=80, n_genes=30)
    monkeypatch.setattr(alpha_module, "ALPHA_SAFETY", 1e6)
    a_star = BCNMF(3, model="contrastive", alpha=0.0, max_epochs=1).fit(x, y).alpha_star_
    try:
        est = BCNMF(3, model="contrastive", alpha=1.5 * a_star, max_epochs=80, random_state=0).fit(x, y)
    except CollapseError as err:
        assert "collapsed" in str(err)
    else:
        assert np.all(np.isfinite(est.loadings_)) and np.all(np.isfinite(est.target_usages_))
        np.testing.assert_allclose(est.loadings_.sum(axis=0), 1.0, atol=1e-6)


def test_collapse_reason_flags_non_finite_factors(planted):
    x, y, _ = planted(n_target=40, n_background=40, n_genes=20)
    est = BCNMF(2, model="contrastive", alpha=0.1, max_epochs=3, random_state=0).fit(x, y)
    from bcnmf_sc.engine._model import _Run

    w = torch.full((20, 2), 0.05, dtype=torch.float64)
    healthy = _Run(w, torch.ones(40, 2), torch.ones(40, 2))
    assert est._collapse_reason(healthy, est._null_target, est._null_background, 5) is None
    broken = _Run(w.clone(), torch.ones(40, 2), torch.ones(40, 2))
    broken.u_target[0, 0] = float("nan")
    assert "non-finite" in est._collapse_reason(broken, 1.0, 1.0, 5)
    huge = 100 * (est._null_target + est._scale_target)
    assert "rose far above" in est._collapse_reason(healthy, huge, est._null_background, 5)
    assert est._collapse_reason(healthy, huge, est._null_background, 1) is None  # not in the first epochs
    assert "exploded" in est._collapse_reason(healthy, est._null_target, 100 * (est._null_background + 1) * 50, 5)
    floor = _Run(torch.full((20, 2), 1e-20, dtype=torch.float64), torch.ones(40, 2), torch.ones(40, 2))
    assert "floor" in est._collapse_reason(floor, est._null_target, est._null_background, 5)


@pytest.mark.parametrize("likelihood", ["poisson", "gaussian"])
def test_genes_absent_from_the_target_do_not_trigger_a_false_collapse(planted, likelihood):
    """Regression: with genes set aside, the rank-one reference losses were computed on all genes and the
    background loss looked 'exploded', so an ordinary fit raised CollapseError."""
    x, y, _ = planted(n_target=60, n_background=60, n_genes=30, seed=3)
    x = x.astype(np.float64)
    x[:, :5] = 0  # five genes only the background expresses
    est = BCNMF(3, model="contrastive", likelihood=likelihood, alpha=0.1, max_epochs=30,
                random_state=0).fit(x, y.astype(np.float64))
    assert est.collapsed_starts_ == [None]
    if likelihood == "poisson":
        np.testing.assert_array_equal(est.excluded_genes_, np.arange(5))
        np.testing.assert_array_equal(est.loadings_[:5], 0.0)
        mean_x, mean_y = x.sum(0) / 60, y.sum(0) / 60
        assert est.alpha_star_ == pytest.approx(np.min(mean_x[5:] / mean_y[5:]))
    np.testing.assert_allclose(est.loadings_.sum(axis=0), 1.0, atol=1e-6)
