"""Property-based tests (hypothesis) of the engine over random small inputs.

Shapes, sparsity, dtypes, formats (dense / CSR / CSC), group sizes, models and likelihoods are drawn at
random; the fits are tiny (a few epochs) so each property runs in seconds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcnmf_sc.engine import BCNMF, match_topics

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None,
                print_blob=False)
DTYPES = [np.int8, np.uint16, np.int32, np.int64, np.float32, np.float64]
FORMATS = {"dense": lambda m: m, "csr": sp.csr_matrix, "csc": sp.csc_matrix, "csr_array": sp.csr_array}


@st.composite
def problems(draw, *, max_cells=12, max_genes=8):
    """A random fitting problem whose parameters are valid (enough cells and genes for the topics)."""
    model = draw(st.sampled_from(["shared_target", "contrastive"]))
    likelihood = draw(st.sampled_from(["poisson", "gaussian"]))
    n_genes = draw(st.integers(2, max_genes))
    min_k = 2 if model == "shared_target" else 1
    k = draw(st.integers(min_k, max(min_k, min(4, n_genes))))
    n_target = draw(st.integers(k, max_cells))
    n_background = draw(st.integers(k, max_cells))
    density = draw(st.sampled_from([0.05, 0.3, 0.7, 1.0]))
    dtype = draw(st.sampled_from(DTYPES))
    fmt = draw(st.sampled_from(list(FORMATS)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 20.0, n_genes)

    def matrix(n):
        m = rng.poisson(scale, (n, n_genes)) * (rng.random((n, n_genes)) < density)
        if np.dtype(dtype).kind == "f" and likelihood == "gaussian":
            m = m * rng.uniform(0.5, 1.5, m.shape)  # continuous values
        return m.astype(dtype)

    x, y = matrix(n_target), matrix(n_background)
    alpha = draw(st.sampled_from([0.0, 0.05, 0.3, 3.0]))  # 3.0 is often unsafe: clipped with a warning
    params = dict(model=model, likelihood=likelihood, alpha=alpha, unsafe_alpha="clip", random_state=seed % 97,
                  batch_size=draw(st.sampled_from([3, 8, 4096])))
    return x, y, k, fmt, params


#: the documented refusals a random problem may legitimately meet (anything else is a failure)
REFUSALS = ("contains only zeros", "genes can be fitted, fewer than n_topics")


def _fit(x, y, k, params, **extra):
    """Fit, or check that the input is refused with one of the documented clear messages (returns None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # non-integer Poisson data, clipped α, torch beta notes
        try:
            return BCNMF(k, **params, **extra).fit(x, y)
        except ValueError as err:
            assert any(reason in str(err) for reason in REFUSALS), err
            if "only zeros" in str(err):
                assert (x != 0).sum() == 0
            else:  # Poisson contrastive: genes absent from the target are set aside, leaving fewer than k
                assert params["model"] == "contrastive" and ((x != 0).sum(axis=0) > 0).sum() < k
            return None


@settings(max_examples=25, **SETTINGS)
@given(problems())
def test_outputs_are_finite_non_negative_and_normalised(problem):
    x, y, k, fmt, params = problem
    est = _fit(FORMATS[fmt](x), FORMATS[fmt](y), k, params, max_epochs=8)
    if est is None:
        return
    n_genes = x.shape[1]
    assert est.loadings_.shape == (n_genes, k)
    for factor in (est.loadings_, est.target_usages_, est.background_usages_):
        assert np.all(np.isfinite(factor)), params
        assert np.all(factor >= 0), params
    # every column of W sums to 1 (genes set aside are zero rows)
    np.testing.assert_allclose(est.loadings_.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(est.loadings_[est.excluded_genes_], 0.0)
    assert est.target_usages_.shape == (x.shape[0], k) and est.background_usages_.shape == (y.shape[0], k)
    assert all(np.isfinite(h["objective"]) for h in est.history_)
    if params["model"] == "contrastive" and params["likelihood"] == "poisson":
        assert est.alpha_ < 0.5 * est.alpha_star_ or est.alpha_ == 0.0
    projected = est.transform(FORMATS[fmt](x))
    assert np.all(np.isfinite(projected)) and np.all(projected >= 0)


@settings(max_examples=20, **SETTINGS)
@given(problems())
def test_dense_and_sparse_input_give_the_same_fit(problem):
    x, y, k, fmt, params = problem
    dense = _fit(x, y, k, params, max_epochs=6, tol=0)
    if dense is None:
        return
    for convert in (sp.csr_matrix, sp.csc_matrix):
        sparse = _fit(convert(x), convert(y), k, params, max_epochs=6, tol=0)
        np.testing.assert_allclose(sparse.loadings_, dense.loadings_, rtol=1e-4, atol=1e-6)
        scale = max(1.0, float(np.abs(dense.target_usages_).max()))
        np.testing.assert_allclose(sparse.target_usages_, dense.target_usages_, rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(sparse.background_usages_, dense.background_usages_, rtol=1e-4, atol=1e-5 * scale)


@settings(max_examples=15, **SETTINGS)
@given(problems(), st.sampled_from([0.25, 4.0]))
def test_scaling_the_data_scales_the_usages_and_keeps_the_loadings(problem, factor):
    """Both losses are homogeneous in the data and the start is drawn relative to the data's size, so
    multiplying every value by a power of two (exact in floating point) multiplies the usages by it and
    leaves the loadings and α* unchanged."""
    x, y, k, fmt, params = problem
    x, y = x.astype(np.float64), y.astype(np.float64)
    if x.sum() == 0 or y.sum() == 0:
        return  # nothing to scale
    base = _fit(x, y, k, params, max_epochs=5, tol=0)
    scaled = _fit(factor * x, factor * y, k, params, max_epochs=5, tol=0)
    if base is None or scaled is None:
        assert base is None and scaled is None  # refused either way
        return
    assert scaled.alpha_star_ == pytest.approx(base.alpha_star_, rel=1e-9)
    np.testing.assert_allclose(scaled.loadings_, base.loadings_, rtol=1e-3, atol=1e-6)
    top = max(1.0, float(base.target_usages_.max()))
    np.testing.assert_allclose(scaled.target_usages_, factor * base.target_usages_, rtol=1e-3, atol=1e-4 * top * factor)


@settings(max_examples=8, **SETTINGS)
@given(
    n_target=st.integers(30, 60),
    n_background=st.integers(30, 60),
    model=st.sampled_from(["shared_target", "contrastive"]),
    likelihood=st.sampled_from(["poisson", "gaussian"]),
    seed=st.integers(0, 1000),
)
def test_target_usages_do_not_depend_on_the_order_of_background_cells(planted, n_target, n_background, model,
                                                                      likelihood, seed):
    """Reordering the background cells only reassigns their random starting usages (a seed effect): on data
    with a well-defined optimum the fit may come out with the topics in another order, but after matching
    topics the target usages agree to within 5 % of the largest usage. Measured: ≤ 0.2 % with 60 cells; up to
    2 % with 32 cells and squared error, where the optimum is flat and the difference stays after 3000 epochs
    (a seed effect, not order dependence: the same happens with another seed and the same order)."""
    x, y, _ = planted(n_target=n_target, n_background=n_background, n_genes=18, likelihood=likelihood, seed=seed)
    kwargs = dict(model=model, likelihood=likelihood, alpha=0.1, max_epochs=150, tol=1e-6, random_state=0)
    order = np.random.default_rng(seed).permutation(n_background)
    a = BCNMF(3, **kwargs).fit(x, y)
    b = BCNMF(3, **kwargs).fit(x, y[order])
    # the start may come out with the topics in another order: compare matched topics
    matched, similarity = match_topics(a.loadings_, b.loadings_)
    assert similarity.min() > 0.99
    if model == "shared_target":  # shared topics stay shared, target topics target
        assert list(b.topic_kind_[matched]) == list(a.topic_kind_)
    top = a.target_usages_.max()
    assert np.abs(a.target_usages_ - b.target_usages_[:, matched]).max() <= 0.05 * top
    np.testing.assert_allclose(b.background_usages_[:, matched], a.background_usages_[order],
                               atol=0.05 * a.background_usages_.max())
