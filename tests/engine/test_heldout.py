"""Usages under fixed loadings: per-cell stopping, finished cells dropped from the batch."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bcnmf_sc.engine._batches import SparseBatch, _host_batch
from bcnmf_sc.engine._heldout import solve_batch, solve_usages
from bcnmf_sc.engine._updates import update_usages


def _counts(n_cells: int = 60, n_genes: int = 25, k: int = 3, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.gamma(0.5, 1.0, (n_genes, k))
    u = rng.gamma(1.0, 1.0, (n_cells, k)) * rng.choice([0.2, 5.0, 50.0], size=(n_cells, 1))  # uneven depths
    x = sp.csr_matrix(rng.poisson(u @ w.T).astype(np.float64))
    return x, w / w.sum(axis=0)


def _batch(x: sp.csr_matrix) -> SparseBatch:
    return _host_batch(x, transpose=False, pin=False, value_dtype=np.float64).to(torch.device("cpu"), torch.float64)


def _solve_all_rows(x, w, mask, *, likelihood, max_steps, tol):
    """The same rule with every row updated to the end (finished rows frozen, not dropped)."""
    k = w.shape[1]
    u = (x.sum(dim=1, keepdim=True).clamp_min(1e-6) / (k * w.sum(dim=0).mean())).expand(-1, k).clone()
    if mask is not None:
        u = u * mask
    done = torch.zeros(u.shape[0], dtype=torch.bool)
    for _ in range(0, max_steps, 10):
        new_u = update_usages(x, u, w, likelihood=likelihood, n_steps=10, mask=mask)
        change = (new_u - u).abs().sum(dim=1) / u.abs().sum(dim=1).clamp_min(1e-30)
        u = torch.where(done[:, None], u, new_u)
        done |= change < tol
    return u


def test_take_rows_matches_scipy_row_selection():
    x, _ = _counts()
    x = x.tolil()
    x[5] = 0  # an empty row
    x = x.tocsr()
    rows = np.array([0, 5, 6, 17, 59])
    taken = _batch(x).take_rows(torch.from_numpy(rows))
    expected = x[rows]
    assert taken.shape == expected.shape
    np.testing.assert_array_equal(taken.crow.numpy(), expected.indptr)
    np.testing.assert_array_equal(taken.col.numpy(), expected.indices)
    np.testing.assert_array_equal(taken.values.numpy(), expected.data)
    assert taken.sum_x == pytest.approx(expected.sum())
    assert taken.sum_sq == pytest.approx(expected.multiply(expected).sum())


@pytest.mark.parametrize("likelihood", ["poisson", "gaussian"])
@pytest.mark.parametrize("sparse", [True, False])
def test_dropping_finished_cells_changes_no_cell(likelihood, sparse):
    x, w = _counts()
    w_t = torch.from_numpy(w)
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    dense = torch.from_numpy(x.toarray())
    batch = _batch(x) if sparse else dense
    for topics in (None, mask):
        got = solve_batch(batch, w_t, topics, likelihood=likelihood, max_steps=300, tol=1e-4)
        want = _solve_all_rows(dense, w_t, topics, likelihood=likelihood, max_steps=300, tol=1e-4)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_cells_stop_at_different_steps():
    """The test above only means something if some cells finish long before others."""
    x, w = _counts()
    w_t = torch.from_numpy(w)
    dense = torch.from_numpy(x.toarray())
    early = _solve_all_rows(dense, w_t, None, likelihood="poisson", max_steps=20, tol=1e-4)
    late = _solve_all_rows(dense, w_t, None, likelihood="poisson", max_steps=300, tol=1e-4)
    moved = (early - late).abs().sum(dim=1) > 1e-9
    assert 0 < int(moved.sum()) < x.shape[0]


def test_solve_usages_is_the_same_for_every_batch_size_and_format():
    x, w = _counts(n_cells=90)
    reference = solve_usages(x, w, likelihood="poisson", batch_size=90, dtype=torch.float64)
    for batch_size in (1, 7, 32):
        for data in (x, x.toarray(), sp.csc_matrix(x)):
            got = solve_usages(data, w, likelihood="poisson", batch_size=batch_size, dtype=torch.float64)
            np.testing.assert_allclose(got, reference, rtol=1e-9, atol=1e-12)
