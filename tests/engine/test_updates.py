"""Multiplicative updates and per-batch statistics (dense and sparse kernels)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bcnmf_sc.engine._updates import SideStats, batch_loss, batch_stats, split_gradient, update_usages

LIKELIHOODS = ["poisson", "gaussian"]


def _problem(n=30, g=20, k=3, seed=0, sparse_fraction=0.5):
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.1, 1.0, (g, k))
    w /= w.sum(0)
    u = rng.uniform(1.0, 20.0, (n, k))
    x = rng.poisson(u @ w.T).astype(np.float64)
    x[rng.random(x.shape) < sparse_fraction] = 0
    w0 = rng.uniform(0.1, 1.0, (g, k))
    w0 /= w0.sum(0)
    u0 = rng.uniform(1.0, 10.0, (n, k))
    return torch.from_numpy(x), torch.from_numpy(u0), torch.from_numpy(w0)


def _reference_loss(x, u, w, likelihood):
    x, xhat = x.numpy(), (u @ w.T).numpy()
    if likelihood == "poisson":
        pos = x > 0
        return float(np.sum(x[pos] * np.log(x[pos] / xhat[pos])) - x.sum() + xhat.sum())
    return float(np.sum((x - xhat) ** 2))


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_loss_matches_its_definition(likelihood):
    x, u, w = _problem()
    expected = _reference_loss(x, u, w, likelihood)
    assert float(batch_loss(x, u, w, likelihood=likelihood)) == pytest.approx(expected, rel=1e-10)
    assert float(batch_stats(x, u, w, likelihood=likelihood).loss) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_usage_updates_never_increase_the_loss(likelihood):
    x, u, w = _problem(seed=1)
    losses = [float(batch_loss(x, u, w, likelihood=likelihood))]
    for _ in range(30):
        u = update_usages(x, u, w, likelihood=likelihood, n_steps=1, mask=None)
        losses.append(float(batch_loss(x, u, w, likelihood=likelihood)))
        assert torch.all(u > 0) and torch.all(torch.isfinite(u))
    assert np.all(np.diff(losses) <= 1e-9 * abs(losses[0]))
    assert losses[-1] < 0.9 * losses[0]


def test_mask_keeps_forbidden_topics_at_zero():
    x, u, w = _problem()
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    for likelihood in LIKELIHOODS:
        out = update_usages(x, u, w, likelihood=likelihood, n_steps=3, mask=mask)
        assert torch.all(out[:, 2] == 0) and torch.all(out[:, :2] > 0)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_statistics_add_up_over_batches(likelihood):
    """W's statistics are sums over cells: two halves give exactly the statistics of the whole."""
    x, u, w = _problem(n=40)
    whole = batch_stats(x, u, w, likelihood=likelihood)
    total = SideStats.zeros(w.shape[0], w.shape[1], likelihood, device="cpu")
    for rows in (slice(0, 13), slice(13, 40)):
        total.add(batch_stats(x[rows], u[rows], w, likelihood=likelihood))
    assert total.n_cells == 40
    torch.testing.assert_close(total.data, whole.data)
    torch.testing.assert_close(total.model, whole.model)
    torch.testing.assert_close(total.loss, whole.loss)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_full_data_w_update_decreases_the_target_loss(likelihood):
    """One exact MU step of W from the split gradient (target only, α = 0) does not increase the loss."""
    x, u, w = _problem(seed=2)
    before = float(batch_loss(x, u, w, likelihood=likelihood))
    numer, denom = split_gradient(w, [(batch_stats(x, u, w, likelihood=likelihood), 1.0 / len(x))], likelihood)
    w_new = w * numer / denom
    assert float(batch_loss(x, u, w_new, likelihood=likelihood)) <= before * (1 + 1e-12)


def test_split_gradient_signs():
    x, u, w = _problem()
    stats = batch_stats(x, u, w, likelihood="poisson")
    numer, denom = split_gradient(w, [(stats, 0.5)], "poisson")
    torch.testing.assert_close(numer, 0.5 * stats.data)
    torch.testing.assert_close(denom, 0.5 * stats.model.expand_as(w))
    # a negative weight (the contrastive background) swaps data and model terms
    numer, denom = split_gradient(w, [(stats, -0.25)], "poisson")
    torch.testing.assert_close(numer, 0.25 * stats.model.expand_as(w))
    torch.testing.assert_close(denom, 0.25 * stats.data)
    # a zero weight or an empty side contributes nothing
    numer, denom = split_gradient(w, [(stats, 0.0)], "poisson")
    assert torch.all(numer == 0) and torch.all(denom == 0)
    g_stats = batch_stats(x, u, w, likelihood="gaussian")
    numer, denom = split_gradient(w, [(g_stats, 1.0)], "gaussian")
    torch.testing.assert_close(numer, g_stats.data)
    torch.testing.assert_close(denom, w @ g_stats.model)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_sparse_kernels_match_dense(likelihood):
    """The sparse batch path (work ∝ nnz · K) gives the dense results."""
    batches = pytest.importorskip("bcnmf_sc.engine._batches")
    x, u, w = _problem(sparse_fraction=0.8, seed=3)
    x[4] = 0  # an empty cell
    host = batches._host_batch(sp.csr_matrix(x.numpy()), transpose=True, pin=False, value_dtype=np.float64)
    sparse = host.to(torch.device("cpu"), torch.float64)
    torch.testing.assert_close(
        update_usages(sparse, u, w, likelihood=likelihood, n_steps=5, mask=None),
        update_usages(x, u, w, likelihood=likelihood, n_steps=5, mask=None),
    )
    dense_stats = batch_stats(x, u, w, likelihood=likelihood)
    sparse_stats = batch_stats(sparse, u, w, likelihood=likelihood)
    torch.testing.assert_close(sparse_stats.data, dense_stats.data)
    torch.testing.assert_close(sparse_stats.model, dense_stats.model)
    torch.testing.assert_close(sparse_stats.loss, dense_stats.loss)
    torch.testing.assert_close(batch_loss(sparse, u, w, likelihood=likelihood), batch_loss(x, u, w, likelihood=likelihood))
