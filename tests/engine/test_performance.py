"""The sparse batch path: same numbers as the dense path, exact minibatching, prepared batches reused.

Fast checks only; the speed ratios themselves are measured by ``benchmarks/bench_speed.py`` and
``benchmarks/bench_regression.py`` (a CPU-time ratio smoke test is marked slow here).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import bcnmf_sc.engine._batches as batches_module
from bcnmf_sc.engine import BCNMF, RowSource
from bcnmf_sc.engine._batches import BatchPlan, SparseBatch, _host_batch
from bcnmf_sc.engine._updates import batch_loss, batch_stats, update_usages


def _sparse_counts(n_cells: int, n_genes: int, density: float, seed: int, k: int = 3) -> sp.csr_matrix:
    """Counts with a low-rank mean, thinned to about ``density`` non-zeros."""
    rng = np.random.default_rng(seed)
    w = rng.gamma(0.5, 1.0, (n_genes, k))
    u = rng.gamma(1.0, 1.0, (n_cells, k))
    mean = u @ w.T
    mean *= -np.log1p(-density) / mean.mean()  # P(x > 0) ≈ density
    return sp.csr_matrix(rng.poisson(mean))


def _batch(x: sp.csr_matrix, dtype=torch.float64) -> SparseBatch:
    return _host_batch(x, transpose=True, pin=False, value_dtype=np.float64).to(torch.device("cpu"), dtype)


@pytest.fixture
def groups():
    x = _sparse_counts(150, 40, 0.15, seed=1)
    y = _sparse_counts(130, 40, 0.15, seed=2)
    return x, y


# ------------------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("likelihood", ["poisson", "gaussian"])
def test_sparse_kernels_equal_dense_kernels(likelihood):
    keep = np.ones(50)
    keep[3] = 0  # an empty cell
    x = sp.csr_matrix(sp.diags(keep) @ _sparse_counts(50, 30, 0.2, seed=0).astype(np.float64))
    x.eliminate_zeros()
    rng = np.random.default_rng(0)
    u = torch.from_numpy(rng.uniform(0.5, 2.0, (50, 4)))
    w = torch.from_numpy(rng.uniform(0.1, 1.0, (30, 4)))
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    dense, sparse = torch.from_numpy(x.toarray()), _batch(x)
    for m in (None, mask):
        np.testing.assert_allclose(
            update_usages(sparse, u, w, likelihood=likelihood, n_steps=3, mask=m),
            update_usages(dense, u, w, likelihood=likelihood, n_steps=3, mask=m), rtol=1e-10, atol=1e-12,
        )
    s, d = batch_stats(sparse, u, w, likelihood=likelihood), batch_stats(dense, u, w, likelihood=likelihood)
    np.testing.assert_allclose(s.data, d.data, rtol=1e-10)
    np.testing.assert_allclose(s.model, d.model, rtol=1e-10)
    np.testing.assert_allclose(float(s.loss), float(d.loss), rtol=1e-9)
    assert s.n_cells == d.n_cells == 50
    np.testing.assert_allclose(float(batch_loss(sparse, u, w, likelihood=likelihood)),
                               float(batch_loss(dense, u, w, likelihood=likelihood)), rtol=1e-9)
    np.testing.assert_allclose(sparse.sum(dim=1), dense.sum(dim=1))
    np.testing.assert_allclose(sparse.sum(dim=0), dense.sum(dim=0))


def test_prepared_batch_drops_explicit_zeros_and_sorts_without_touching_the_input():
    indptr = np.array([0, 3, 5])
    indices = np.array([4, 1, 2, 3, 0])
    data = np.array([2.0, 0.0, 5.0, 1.0, 3.0])  # an explicit zero, unsorted columns
    x = sp.csr_matrix((data.copy(), indices.copy(), indptr.copy()), shape=(2, 6))
    batch = _batch(x)
    np.testing.assert_array_equal(batch.to_dense().numpy(), x.toarray())
    assert batch.nnz == 4
    np.testing.assert_array_equal(x.data, data)  # input untouched
    np.testing.assert_array_equal(x.indices, indices)
    # the transpose holds the same non-zeros in column-major order
    np.testing.assert_array_equal(batch.csr_t().to_dense().numpy(), x.toarray().T)


# ------------------------------------------------------------------------------------------- fits
@pytest.mark.parametrize("likelihood", ["poisson", "gaussian"])
@pytest.mark.parametrize("model", ["shared_target", "contrastive"])
def test_sparse_path_fits_like_the_dense_path(groups, monkeypatch, model, likelihood):
    x, y = groups
    if likelihood == "gaussian":  # dense batches are read as float32: use values float32 holds exactly
        x, y = (m.log1p().astype(np.float32).astype(np.float64) for m in (x, y))
    kwargs = dict(model=model, likelihood=likelihood, alpha=0.005, max_epochs=15, tol=0, dtype=torch.float64,
                  random_state=0, batch_size=64, n_starts=1)
    sparse_fit = BCNMF(3, **kwargs).fit(x, y)
    monkeypatch.setattr(batches_module, "SPARSE_MAX_DENSITY", 0.0)  # every batch dense
    dense_fit = BCNMF(3, **kwargs).fit(x, y)
    np.testing.assert_allclose(sparse_fit.loadings_, dense_fit.loadings_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(sparse_fit.target_usages_, dense_fit.target_usages_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose([h["objective"] for h in sparse_fit.history_],
                               [h["objective"] for h in dense_fit.history_], rtol=1e-9)


@pytest.mark.parametrize("model", ["shared_target", "contrastive"])
def test_epoch_updates_do_not_depend_on_batch_size(groups, model):
    """W is updated once per pass from sums over cells, so the partition into batches is irrelevant."""
    x, y = groups
    kwargs = dict(model=model, alpha=0.005, max_epochs=12, tol=0, random_state=0, w_update="epoch", n_starts=1)
    fits = [BCNMF(3, batch_size=b, **kwargs).fit(x, y) for b in (16, 100, 10_000)]
    for other in fits[1:]:
        np.testing.assert_allclose(other.loadings_, fits[0].loadings_, rtol=2e-4, atol=1e-7)
        np.testing.assert_allclose(other.target_usages_, fits[0].target_usages_, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("w_update", ["epoch", "online"])
def test_sparse_fits_are_deterministic_for_a_seed(groups, w_update):
    x, y = groups
    kwargs = dict(w_update=w_update, max_epochs=8, tol=0, batch_size=40, n_starts=1)
    a, b = BCNMF(3, random_state=5, **kwargs).fit(x, y), BCNMF(3, random_state=5, **kwargs).fit(x, y)
    np.testing.assert_array_equal(a.loadings_, b.loadings_)
    np.testing.assert_array_equal(a.target_usages_, b.target_usages_)
    c = BCNMF(3, random_state=6, **kwargs).fit(x, y)
    assert not np.allclose(a.loadings_, c.loadings_)


@pytest.mark.parametrize("fmt", ["csr_int64", "csc", "csr_array_float32", "dense"])
def test_input_formats_give_the_same_sparse_fit(groups, fmt):
    x, y = groups
    convert = {
        "csr_int64": lambda m: sp.csr_matrix(m, dtype=np.int64),
        "csc": lambda m: sp.csc_matrix(m),
        "csr_array_float32": lambda m: sp.csr_array(m, dtype=np.float32),
        "dense": lambda m: m.toarray(),
    }[fmt]
    kwargs = dict(max_epochs=10, tol=0, random_state=0, batch_size=64, n_starts=1)
    reference = BCNMF(3, **kwargs).fit(x, y)
    x_in, y_in = convert(x), convert(y)
    before = x_in.copy()
    fit = BCNMF(3, **kwargs).fit(x_in, y_in)
    np.testing.assert_allclose(fit.loadings_, reference.loadings_, rtol=1e-5, atol=1e-8)
    after = x_in.toarray() if sp.issparse(x_in) else x_in
    np.testing.assert_array_equal(after, before.toarray() if sp.issparse(before) else before)


# ------------------------------------------------------------------------------------- batch plans
class _CountingSource(RowSource):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.csr_reads: list[int] = []

    def read_csr(self, positions):
        self.csr_reads.append(len(positions))
        return super().read_csr(positions)


def test_prepared_batches_are_read_once_per_fit_and_stay_small(groups):
    x, y = groups
    target, background = _CountingSource(x, name="t"), _CountingSource(y, name="b")
    BCNMF(3, batch_size=50, max_epochs=6, tol=0, n_starts=2, random_state=0).fit(target, background)
    n_steps = -(-(x.shape[0] + y.shape[0]) // 50)
    for source in (target, background):
        summary_reads = 1  # the validation/summary pass reads blocks of up to 4096 rows
        assert len(source.csr_reads) == summary_reads + n_steps, source.csr_reads
        assert max(source.csr_reads[summary_reads:]) <= 50


def test_plan_splits_exactly_and_contiguous_views_share_memory():
    x = _sparse_counts(23, 10, 0.3, seed=0).astype(np.float32)
    source = RowSource(x)
    plan = BatchPlan(source, 5, device=torch.device("cpu"), dtype=torch.float32, sparse=True)
    assert [len(p) for p in plan.positions] == [5, 5, 5, 4, 4]
    assert np.array_equal(np.concatenate(plan.positions), np.arange(23))
    view = source.read_csr(plan.positions[1])
    assert np.shares_memory(view.data, x.data)  # a row range of an in-memory CSR is not copied
    many = BatchPlan(source, 30, device=torch.device("cpu"), dtype=torch.float32, sparse=True)
    assert len(many) == 30 and sum(len(p) for p in many.positions) == 23  # empty batches allowed
    assert len(list(many.epoch())) == 23
    random = BatchPlan(source, 4, device=torch.device("cpu"), dtype=torch.float32, sparse=True,
                       rng=np.random.default_rng(0), random_membership=True)
    assert np.array_equal(np.sort(np.concatenate(random.positions)), np.arange(23))
    assert all(np.all(np.diff(p) > 0) for p in random.positions)


@pytest.mark.parametrize("n_genes", [10, 40_000])
def test_cached_batches_keep_compact_indices_and_deliver_the_same_batch(n_genes):
    x = sp.random(60, n_genes, density=2.0 / n_genes * 5, format="csr", random_state=0, dtype=np.float32)
    x.data = np.ceil(x.data * 5)
    rows = np.arange(0, 60, 2)  # gathered rows: the row-major copy is cached too
    plan = BatchPlan(RowSource(x, rows=rows), 3, device=torch.device("cpu"), dtype=torch.float32, sparse=True,
                     expected_nnz=x.nnz)
    for i, positions in enumerate(plan.positions):
        delivered = plan.get(i)
        cached = plan._cached[i]
        compact = torch.int16 if n_genes <= 32_767 else torch.int32
        assert cached.col.dtype == compact and cached.t_row.dtype == torch.int16  # batches of ≤ 32,767 cells
        assert delivered.col.dtype == delivered.t_row.dtype == torch.int32  # what the sparse kernels take
        expected = x[rows[positions]].toarray()
        np.testing.assert_array_equal(delivered.to_dense().numpy(), expected)
        np.testing.assert_array_equal(delivered.csr_t().to_dense().numpy(), expected.T)


@pytest.mark.parametrize("w_update", ["epoch", "online"])
def test_compact_indices_give_exactly_the_int32_fit(groups, monkeypatch, w_update):
    x, y = groups
    order = np.random.default_rng(0).permutation(x.shape[0] + y.shape[0])
    mixed = sp.csr_matrix(sp.vstack([x, y], format="csr")[order])
    is_target = order < x.shape[0]

    def fit():
        target = RowSource(mixed, rows=np.flatnonzero(is_target))  # gathered: both copies compact
        background = RowSource(mixed, rows=np.flatnonzero(~is_target))
        return BCNMF(4, batch_size=40, max_epochs=8, tol=0, n_starts=1, w_update=w_update, random_state=3).fit(
            target, background)

    compact = fit()
    monkeypatch.setattr(batches_module, "COMPACT_INDEX_MAX", -1)
    wide = fit()
    np.testing.assert_array_equal(compact.loadings_, wide.loadings_)
    np.testing.assert_array_equal(compact.target_usages_, wide.target_usages_)


def test_summary_of_sparse_data_matches_dense_computation():
    x = _sparse_counts(40, 12, 0.3, seed=3)
    summary = RowSource(x, rows=np.arange(3, 37)).summarize(batch_size=7)
    dense = x.toarray()[3:37].astype(np.float64)
    np.testing.assert_allclose(summary.col_sums, dense.sum(axis=0))
    np.testing.assert_allclose(summary.row_sums, dense.sum(axis=1))
    positive = dense[dense > 0]
    assert summary.nnz == positive.size
    np.testing.assert_allclose(summary.sum_xlogx, np.sum(positive * np.log(positive)))
    r = dense.sum(axis=1)
    np.testing.assert_allclose(summary.sum_rlogr, np.sum(r[r > 0] * np.log(r[r > 0])))


# ------------------------------------------------------------------------------------------ speed
@pytest.mark.slow
def test_sparse_pass_is_much_cheaper_than_the_dense_pass(monkeypatch):
    """CPU time per pass at 10 % density: the sparse kernels beat dense batches several times over."""
    x = _sparse_counts(4000, 1000, 0.1, seed=0).astype(np.float32)
    y = _sparse_counts(4000, 1000, 0.1, seed=1).astype(np.float32)
    kwargs = dict(model="contrastive", alpha=0.0, usage_steps=1, tol=0, random_state=0, n_starts=1)

    def cpu_per_pass() -> float:
        BCNMF(5, max_epochs=2, **kwargs).fit(x, y)  # warm-up
        start = time.process_time()
        BCNMF(5, max_epochs=12, **kwargs).fit(x, y)
        middle = time.process_time()
        BCNMF(5, max_epochs=2, **kwargs).fit(x, y)
        return ((middle - start) - (time.process_time() - middle)) / 10

    sparse = cpu_per_pass()
    monkeypatch.setattr(batches_module, "SPARSE_MAX_DENSITY", 0.0)
    dense = cpu_per_pass()
    assert dense / sparse > 3.0, (dense, sparse)


# ------------------------------------------------------------------------------------------- online
@pytest.mark.parametrize("likelihood", ["poisson", "gaussian"])
def test_incremental_statistics_follow_a_rescaling_of_the_factors(likelihood):
    """Moving a column scale from W into U leaves the fit unchanged; the stored statistics must follow."""
    from bcnmf_sc.engine._online import IncrementalStats

    x = _batch(_sparse_counts(40, 25, 0.3, seed=4).astype(np.float64))
    rng = np.random.default_rng(1)
    u = torch.from_numpy(rng.uniform(0.5, 2.0, (40, 3)))
    w = torch.from_numpy(rng.uniform(0.1, 1.0, (25, 3)))
    scale = torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64)
    inc = IncrementalStats(1, 25, 3, likelihood, torch.device("cpu"))
    inc.replace(0, batch_stats(x, u, w, likelihood=likelihood), w)
    inc.rescale(scale)
    expected = batch_stats(x, u * scale, w / scale, likelihood=likelihood)
    got = inc.at(w / scale)
    np.testing.assert_allclose(got.data, expected.data, rtol=1e-6)
    np.testing.assert_allclose(got.model, expected.model, rtol=1e-12)


@pytest.mark.slow  # 600 float64 epochs: minutes on a loaded 2-core machine
def test_online_and_epoch_updates_reach_the_same_loss(groups):
    """Incremental statistics give every batch equal weight: same fixed points as the exact update."""
    x, y = groups
    kwargs = dict(model="shared_target", tol=0, random_state=0, n_starts=1, batch_size=50, dtype=torch.float64)
    online = BCNMF(3, w_update="online", max_epochs=150, **kwargs).fit(x, y)
    exact = BCNMF(3, w_update="epoch", max_epochs=600, **kwargs).fit(x, y)
    assert online.history_[-1]["objective"] == pytest.approx(exact.history_[-1]["objective"], rel=2e-3)
    # and online gets close sooner: after 20 passes it is nearer the end point than the exact update
    final = exact.history_[-1]["objective"]
    fit_epochs = [h["objective"] for h in online.history_ if h["stage"] == "fit"]
    exact_epochs = [h["objective"] for h in exact.history_ if h["stage"] == "fit"]
    assert fit_epochs[19] - final <= exact_epochs[19] - final
