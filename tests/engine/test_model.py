"""The :class:`BCNMF` estimator: recovery of planted programs, input formats, restarts, seeds, projection."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from bcnmf_sc.engine import BCNMF, CollapseError, RowSource, match_topics
from bcnmf_sc.engine._model import _Run

RECOVERY = {
    "shared_target": dict(n_target_topics=1, max_epochs=60),
    "contrastive": dict(alpha=0.1, max_epochs=150),
}


def _numeric_history(history) -> pd.DataFrame:
    return pd.DataFrame(history).drop(columns="seconds")


def _assert_valid_loadings(w: np.ndarray, n_genes: int, k: int) -> None:
    assert w.shape == (n_genes, k)
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("likelihood", ["poisson", "gaussian"])
@pytest.mark.parametrize("model", ["shared_target", "contrastive"])
def test_recovers_planted_programs(planted, model, likelihood):
    x, y, w_true = planted(likelihood=likelihood, seed=1)
    est = BCNMF(3, model=model, likelihood=likelihood, random_state=0, **RECOVERY[model]).fit(x, y)
    _assert_valid_loadings(est.loadings_, x.shape[1], 3)
    _, similarity = match_topics(w_true, est.loadings_)
    assert similarity.min() >= 0.95, similarity
    assert est.target_usages_.shape == (x.shape[0], 3)
    assert est.background_usages_.shape == (y.shape[0], 3)
    assert np.all(np.isfinite(est.target_usages_)) and np.all(est.target_usages_ >= 0)


def test_shared_target_puts_the_target_program_in_a_target_topic(planted):
    x, y, w_true = planted(seed=2)
    est = BCNMF(3, n_target_topics=1, max_epochs=60, random_state=0).fit(x, y)
    assert list(est.topic_kind_) == ["shared", "shared", "target"]
    matched, similarity = match_topics(w_true, est.loadings_)
    assert matched[2] == 2 and similarity[2] >= 0.95  # the planted target program → the target topic
    # the background may not use target topics
    assert np.all(est.background_usages_[:, 2] == 0)
    # and the target cells do use it (about a third of their counts in the simulation)
    assert est.target_usages_[:, 2].sum() > 0.2 * est.target_usages_.sum()


# ----------------------------------------------------------------------------------------- input formats
FORMATS = {
    "dense_int64": lambda m: m.astype(np.int64),
    "dense_int32": lambda m: m.astype(np.int32),
    "dense_uint16": lambda m: m.astype(np.uint16),
    "dense_float64": lambda m: m.astype(np.float64),
    "dense_float32": lambda m: m.astype(np.float32),
    "csr_matrix": lambda m: sp.csr_matrix(m),
    "csc_matrix": lambda m: sp.csc_matrix(m),
    "csr_array_int": lambda m: sp.csr_array(m.astype(np.int32)),
    "csc_array_float64": lambda m: sp.csc_array(m.astype(np.float64)),
    "np_matrix": lambda m: np.asmatrix(m),
}


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix, still handed over by old code
@pytest.mark.parametrize("model", ["shared_target", "contrastive"])
def test_dense_csr_csc_and_dtypes_give_the_same_fit(planted, model):
    x, y, _ = planted(n_target=60, n_background=50, n_genes=30, seed=3)
    kwargs = dict(model=model, alpha=0.1, max_epochs=15, tol=0, random_state=5)
    reference = BCNMF(3, **kwargs).fit(x, y)
    for name, convert in FORMATS.items():
        est = BCNMF(3, **kwargs).fit(convert(x), convert(y))
        np.testing.assert_allclose(est.loadings_, reference.loadings_, rtol=1e-6, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(est.target_usages_, reference.target_usages_, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(est.background_usages_, reference.background_usages_, rtol=1e-5, atol=1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("fmt", ["dense_int64", "dense_float64", "csr_matrix", "csc_matrix"])
def test_input_is_neither_modified_nor_converted(planted, fmt):
    x, y, _ = planted(n_target=50, n_background=50, n_genes=20)
    x, y = FORMATS[fmt](x), FORMATS[fmt](y)
    x_before = x.copy()
    dtype_before, type_before = x.dtype, type(x)
    BCNMF(2, max_epochs=5, random_state=0).fit(x, y)
    assert type(x) is type_before and x.dtype == dtype_before
    if sp.issparse(x):
        assert x.format == x_before.format
        x, x_before = x.toarray(), x_before.toarray()
    np.testing.assert_array_equal(x, x_before)


class _CountingSource(RowSource):
    """A real :class:`RowSource` that records how many rows each read densifies."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_sizes: list[int] = []

    def read(self, positions):
        self.read_sizes.append(len(positions))
        return super().read(positions)

    def read_csr(self, positions):  # the sparse path reads batches as CSR
        self.read_sizes.append(len(positions))
        return super().read_csr(positions)


@pytest.mark.parametrize("fmt", ["dense_int64", "csr_matrix", "sparse_csr"])
def test_only_one_minibatch_is_densified_at_a_time(planted, fmt):
    x, y, _ = planted(n_target=300, n_background=300, n_genes=20)
    if fmt == "sparse_csr":  # 5 % non-zeros: the sparse kernels' path
        rng = np.random.default_rng(0)
        x, y = x * (rng.random(x.shape) < 0.05), y * (rng.random(y.shape) < 0.05)
        fmt = "csr_matrix"
    target = _CountingSource(FORMATS[fmt](x), name="target")
    background = _CountingSource(FORMATS[fmt](y), name="background")
    est = BCNMF(2, batch_size=64, max_epochs=3, tol=0, random_state=0).fit(target, background)
    assert est.loadings_.shape == (20, 2)
    for source in (target, background):
        # batch_size counts target and background cells together: each side reads ≤ 64 rows per step;
        # only the single validation/summary pass (blocks of up to 4096 rows) may read more
        large = [n for n in source.read_sizes if n > 64]
        assert len(large) <= 1, source.read_sizes
        assert len(source.read_sizes) >= 10  # one per batch at least (sparse batches are kept between epochs)


def test_fit_transform_returns_the_fitted_usages(planted):
    x, y, _ = planted(n_target=60, n_background=60, n_genes=30)
    est = BCNMF(3, max_epochs=10, random_state=0)
    u_t, u_b = est.fit_transform(x, y)
    np.testing.assert_array_equal(u_t, est.target_usages_)
    np.testing.assert_array_equal(u_b, est.background_usages_)


# ------------------------------------------------------------------------------------------- projection
@pytest.mark.parametrize("model", ["shared_target", "contrastive"])
def test_transform_reproduces_fitted_target_usages(planted, model):
    x, y, _ = planted(seed=4)
    est = BCNMF(3, model=model, random_state=0, **RECOVERY[model]).fit(x, y)
    projected = est.transform(x)
    rel = np.abs(projected - est.target_usages_).sum() / est.target_usages_.sum()
    assert rel < 0.02, rel
    # sparse input projects identically
    np.testing.assert_allclose(est.transform(sp.csr_matrix(x)), projected, rtol=1e-6, atol=1e-6)


def test_transform_scales_with_the_cells_and_checks_genes(planted):
    x, y, _ = planted(n_target=60, n_background=60, n_genes=30)
    est = BCNMF(3, max_epochs=20, random_state=0).fit(x, y)
    one = est.transform(x[:10])
    two = est.transform(2 * x[:10])
    np.testing.assert_allclose(two, 2 * one, rtol=5e-3, atol=1e-3)  # Poisson usages are in count units
    with pytest.raises(ValueError, match="genes"):
        est.transform(x[:, :10])
    with pytest.raises(RuntimeError, match="not fitted"):
        BCNMF(3).transform(x)
    score = est.score(x)
    assert np.isfinite(score) and score >= 0
    assert est.score(x) < est.score(np.random.default_rng(0).permutation(x.ravel()).reshape(x.shape))


# ----------------------------------------------------------------------------------- restarts, stability
def test_n_starts_keeps_the_best_target_fit_and_reports_stability(planted):
    x, y, _ = planted(n_target=80, n_background=80, n_genes=30, seed=5)
    est = BCNMF(3, n_starts=3, max_epochs=20, random_state=0).fit(x, y)
    losses = est.start_target_losses_
    assert losses.shape == (3,) and np.all(np.isfinite(losses))
    assert est.collapsed_starts_ == [None, None, None]
    assert est.best_start_ == int(np.argmin(losses))
    assert est.history_[-1]["target_loss"] == pytest.approx(losses.min())
    np.testing.assert_allclose(est.loadings_, est.start_loadings_[est.best_start_])
    # stability: mean matched cosine of each kept topic to the other starts
    others = [w for i, w in enumerate(est.start_loadings_) if i != est.best_start_]
    expected = np.mean([match_topics(est.loadings_, w)[1] for w in others], axis=0)
    np.testing.assert_allclose(est.topic_stability_, expected, rtol=1e-10)
    assert est.topic_stability_.shape == (3,)
    assert np.all(est.topic_stability_ > 0.9) and np.all(est.topic_stability_ <= 1 + 1e-9)
    # starts differ (they would all be identical if the seeds were not used)
    assert not np.allclose(est.start_loadings_[0], est.start_loadings_[1])


def test_single_start_has_undefined_stability(planted):
    x, y, _ = planted(n_target=40, n_background=40, n_genes=20)
    est = BCNMF(2, max_epochs=5, random_state=0).fit(x, y)
    assert np.all(np.isnan(est.topic_stability_))


def _fake_runs(est: BCNMF, losses, collapsed):
    """Runs as ``_fit_start`` returns them, with chosen final target losses and collapse flags."""
    runs = []
    rng = np.random.default_rng(0)
    for loss, reason in zip(losses, collapsed):
        w = torch.from_numpy(rng.uniform(size=(len(est._kept_genes), est.n_topics)))
        w = w / w.sum(dim=0)
        run = _Run(w, torch.ones(4, est.n_topics), torch.ones(3, est.n_topics), collapsed=reason)
        run.history = [dict(epoch=1, stage="fit", objective=loss, target_loss=loss, background_loss=1.0, seconds=0.0)]
        runs.append(run)
    return runs


def test_selection_skips_collapsed_starts_even_with_a_lower_loss(planted):
    x, y, _ = planted(n_target=40, n_background=40, n_genes=20)
    est = BCNMF(2, model="contrastive", alpha=0.1, max_epochs=3, random_state=0).fit(x, y)
    runs = _fake_runs(est, [5.0, 1.0, 3.0, 2.0], [None, "non-finite values", None, None])
    est._select(runs)
    assert est.best_start_ == 3  # loss 1.0 collapsed; 2.0 is the best among the rest
    np.testing.assert_array_equal(est.loadings_, runs[3].w.numpy())
    assert est.collapsed_starts_ == [None, "non-finite values", None, None]
    assert np.isnan(est.start_target_losses_[1])
    assert len(est.start_loadings_) == 3


def test_all_starts_collapsed_raises_collapse_error(planted):
    x, y, _ = planted(n_target=40, n_background=40, n_genes=20)
    est = BCNMF(2, model="contrastive", alpha=0.1, max_epochs=3, random_state=0).fit(x, y)
    loadings_before = est.loadings_.copy()
    runs = _fake_runs(est, [1.0, 2.0], ["loadings at the floor", "non-finite values"])
    with pytest.raises(CollapseError, match=r"all 2 start\(s\) collapsed.*loadings at the floor.*α\*"):
        est._select(runs)
    np.testing.assert_array_equal(est.loadings_, loadings_before)  # no garbage written on the estimator


# ----------------------------------------------------------------------------------- seeds and global RNG
@pytest.mark.parametrize("model", ["shared_target", "contrastive"])
def test_same_seed_identical_different_seed_different(planted, model):
    x, y, _ = planted(n_target=60, n_background=60, n_genes=30)
    kwargs = dict(model=model, alpha=0.1, max_epochs=15, n_starts=2)
    a = BCNMF(3, random_state=7, **kwargs).fit(x, y)
    b = BCNMF(3, random_state=7, **kwargs).fit(x, y)
    c = BCNMF(3, random_state=8, **kwargs).fit(x, y)
    np.testing.assert_array_equal(a.loadings_, b.loadings_)
    np.testing.assert_array_equal(a.target_usages_, b.target_usages_)
    np.testing.assert_array_equal(a.background_usages_, b.background_usages_)
    pd.testing.assert_frame_equal(_numeric_history(a.history_), _numeric_history(b.history_))
    assert not np.allclose(a.loadings_, c.loadings_)


@pytest.mark.parametrize("w_update", ["epoch", "online"])
def test_no_global_rng_side_effects_and_no_global_rng_dependence(planted, w_update):
    x, y, _ = planted(n_target=50, n_background=50, n_genes=20)
    kwargs = dict(w_update=w_update, max_epochs=8, n_starts=2, random_state=3, batch_size=32)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    first = BCNMF(3, **kwargs).fit(x, y)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state
    # changing the global seeds does not change the fit
    torch.manual_seed(999)
    np.random.seed(999)
    second = BCNMF(3, **kwargs).fit(x, y)
    np.testing.assert_array_equal(first.loadings_, second.loadings_)


# -------------------------------------------------------------------------------------------- warm start
def test_init_loadings_warm_start_and_validation(planted):
    x, y, w_true = planted(seed=6)
    est = BCNMF(3, n_target_topics=1, max_epochs=5, random_state=0).fit(x, y, init_loadings=w_true)
    _, similarity = match_topics(w_true, est.loadings_)
    assert similarity.min() > 0.98
    with pytest.raises(ValueError, match="init_loadings"):
        BCNMF(3).fit(x, y, init_loadings=w_true[:, :2])
    with pytest.raises(ValueError, match="init_loadings"):
        BCNMF(3).fit(x, y, init_loadings=-w_true)


# ------------------------------------------------------------------------------------- parameter checks
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(model="pca"), "model"),
        (dict(likelihood="nb"), "likelihood"),
        (dict(w_update="sometimes"), "w_update"),
        (dict(n_topics=0), "n_topics"),
        (dict(n_topics=True), "n_topics"),
        (dict(batch_size=0), "batch_size"),
        (dict(max_epochs=2.5), "max_epochs"),
        (dict(n_starts=0), "n_starts"),
        (dict(tol=-1.0), "tol"),
        (dict(n_topics=3, n_target_topics=3), "n_target_topics"),
        (dict(n_topics=3, n_target_topics=0), "n_target_topics"),
        (dict(model="contrastive", alpha=-1.0), "alpha"),
        (dict(model="contrastive", alpha=float("nan")), "alpha"),
        (dict(model="contrastive", unsafe_alpha="ignore", alpha=100.0), "unsafe_alpha"),
    ],
)
def test_invalid_parameters_are_refused(planted, kwargs, match):
    x, y, _ = planted(n_target=30, n_background=30, n_genes=20)
    kwargs = {"n_topics": 3, "max_epochs": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        BCNMF(**kwargs).fit(x, y)


def test_mismatched_genes_and_cuda_request_are_refused(planted):
    x, y, _ = planted(n_target=30, n_background=30, n_genes=20)
    with pytest.raises(ValueError, match="different numbers of genes"):
        BCNMF(2).fit(x, y[:, :10])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            BCNMF(2, device="cuda").fit(x, y)


def test_all_zero_genes_and_cells_give_finite_output(planted):
    x, y, _ = planted(n_target=50, n_background=50, n_genes=24)
    x, y = x.copy(), y.copy()
    x[:, :3] = 0
    y[:, :3] = 0  # genes zero everywhere
    x[:5] = 0
    y[:5] = 0  # empty cells in both groups
    for model in ("shared_target", "contrastive"):
        for likelihood in ("poisson", "gaussian"):
            est = BCNMF(3, model=model, likelihood=likelihood, alpha=0.1, max_epochs=15, random_state=0).fit(x, y)
            _assert_valid_loadings(est.loadings_, 24, 3)
            for u in (est.target_usages_, est.background_usages_, est.transform(x)):
                assert np.all(np.isfinite(u)) and np.all(u >= 0)
            assert np.all(est.target_usages_[:5] < 1e-6)  # nothing to explain in an empty cell
            assert np.all(est.loadings_[:3] < 1e-6)  # nothing loads on an unexpressed gene


# ------------------------------------------------------------------------------- extreme settings (load)
@pytest.mark.parametrize(("model", "likelihood"), [("shared_target", "poisson"), ("contrastive", "poisson"),
                                                   ("contrastive", "gaussian")])
def test_one_hundred_topics_on_small_data(planted, model, likelihood):
    x, y, _ = planted(n_target=110, n_background=110, n_genes=110, likelihood=likelihood)
    est = BCNMF(100, model=model, likelihood=likelihood, alpha=0.1, max_epochs=6, random_state=0).fit(x, y)
    _assert_valid_loadings(est.loadings_, 110, 100)
    assert np.all(np.isfinite(est.target_usages_)) and np.all(np.isfinite(est.background_usages_))
    assert est.collapsed_starts_ == [None]


def test_alpha_just_below_the_safe_limit(planted):
    x, y, _ = planted(n_target=80, n_background=80, n_genes=30)
    a_star = BCNMF(3, model="contrastive", alpha=0.0, max_epochs=1).fit(x, y).alpha_star_
    est = BCNMF(3, model="contrastive", alpha=0.4999 * a_star, max_epochs=200, random_state=0).fit(x, y)
    assert est.alpha_ == pytest.approx(0.4999 * a_star)
    _assert_valid_loadings(est.loadings_, 30, 3)
    assert est.loadings_.max() < 0.5 and est.converged_


@pytest.mark.parametrize("fraction", [0.7, 0.99])
def test_alpha_below_alpha_star_never_collapses_even_past_the_margin(planted, monkeypatch, fraction):
    """Below α* the objective is bounded: with the safety margin switched off the fit still terminates with
    finite, normalised factors (the margin guards the flat edge, it is not what keeps the fit sane)."""
    import bcnmf_sc.engine._alpha as alpha_module

    monkeypatch.setattr(alpha_module, "ALPHA_SAFETY", 1e6)
    x, y, _ = planted(n_target=80, n_background=80, n_genes=30)
    a_star = BCNMF(3, model="contrastive", alpha=0.0, max_epochs=1).fit(x, y).alpha_star_
    est = BCNMF(3, model="contrastive", alpha=fraction * a_star, max_epochs=300, random_state=1).fit(x, y)
    _assert_valid_loadings(est.loadings_, 30, 3)
    assert np.all(np.isfinite(est.target_usages_))


@pytest.mark.parametrize("w_update", ["epoch", "online"])
@pytest.mark.parametrize("batch_size", [1, 10**6])
def test_batch_size_one_and_larger_than_the_data(planted, w_update, batch_size):
    x, y, _ = planted(n_target=40, n_background=30, n_genes=20)
    est = BCNMF(3, w_update=w_update, batch_size=batch_size, max_epochs=10, random_state=0).fit(x, y)
    _assert_valid_loadings(est.loadings_, 20, 3)
    assert np.all(np.isfinite(est.target_usages_)) and np.all(np.isfinite(est.background_usages_))
    assert np.all(np.isfinite(est.transform(sp.csr_matrix(x))))
    assert all(np.isfinite(h["objective"]) for h in est.history_)
