"""Starting loadings of the target topics from clusters of the target residuals."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bcnmf_sc.engine._batches import BatchPlan
from bcnmf_sc.engine._init import residual_topics
from bcnmf_sc.engine._source import as_source


def _two_programs(seed: int = 0):
    """Target cells: one shared program (genes 0–19) plus program A (20–39) or B (40–59)."""
    rng = np.random.default_rng(seed)
    n, g = 200, 60
    shared = np.zeros(g)
    shared[:20] = 1 / 20
    programs = np.zeros((g, 2))
    programs[20:40, 0] = programs[40:60, 1] = 1 / 20
    kind = rng.integers(0, 2, n)
    u_shared = rng.uniform(50, 100, n)
    rate = u_shared[:, None] * shared + rng.uniform(30, 60, n)[:, None] * programs[:, kind].T
    x = rng.poisson(rate).astype(np.float64)
    return x, u_shared[:, None], shared[:, None], kind


def _centres(x, u, w, *, sparse: bool, start: np.ndarray):
    data = sp.csr_matrix(x) if sparse else x
    plan = BatchPlan(as_source(data, name="X"), 3, device=torch.device("cpu"), dtype=torch.float64, sparse=sparse)
    centres, _ = residual_topics(plan.epoch, torch.from_numpy(u), torch.from_numpy(w), torch.from_numpy(start))
    return centres.numpy()


@pytest.mark.parametrize("sparse", [False, True])
def test_each_target_topic_starts_on_its_own_program(sparse):
    x, u, w, _ = _two_programs()
    start = 1.0 + 0.01 * np.random.default_rng(1).random((x.shape[1], 2))  # nearly identical centres
    centres = _centres(x, u, w, sparse=sparse, start=start)
    mass = np.stack([centres[20:40].sum(0), centres[40:60].sum(0)]) / centres.sum(0)
    # one centre on program A, the other on program B (the rest of their mass is the positive part of the
    # shared genes' counting noise), with next to nothing of the other program
    assert sorted(mass.argmax(axis=0).tolist()) == [0, 1]
    assert mass.max(axis=0).min() > 0.6
    assert mass.min(axis=0).max() < 0.02


def test_dense_and_sparse_batches_give_the_same_centres():
    x, u, w, _ = _two_programs(seed=2)
    start = 1.0 + 0.01 * np.random.default_rng(3).random((x.shape[1], 3))
    dense = _centres(x, u, w, sparse=False, start=start)
    sparse = _centres(x, u, w, sparse=True, start=start)
    np.testing.assert_allclose(dense, sparse, rtol=1e-9, atol=1e-9)


def test_one_topic_is_the_total_residual():
    x, u, w, _ = _two_programs(seed=4)
    centre = _centres(x, u, w, sparse=True, start=np.ones((x.shape[1], 1)))
    expected = np.clip(x - u @ w.T, 0, None).sum(0)
    np.testing.assert_allclose(centre[:, 0], expected, rtol=1e-9)


def test_the_starting_centres_are_not_modified():
    x, u, w, _ = _two_programs(seed=5)
    start = torch.ones((x.shape[1], 2), dtype=torch.float64) + 0.01 * torch.arange(2, dtype=torch.float64)
    before = start.clone()
    plan = BatchPlan(as_source(sp.csr_matrix(x), name="X"), 2, device=torch.device("cpu"), dtype=torch.float64,
                     sparse=True)
    residual_topics(plan.epoch, torch.from_numpy(u), torch.from_numpy(w), start)
    assert torch.equal(start, before)


def test_cluster_sizes_count_every_target_cell_once():
    x, u, w, kind = _two_programs(seed=6)
    plan = BatchPlan(as_source(x, name="X"), 4, device=torch.device("cpu"), dtype=torch.float64, sparse=False)
    start = 1.0 + 0.01 * np.random.default_rng(7).random((x.shape[1], 2))
    _, sizes = residual_topics(plan.epoch, torch.from_numpy(u), torch.from_numpy(w), torch.from_numpy(start))
    assert sizes.sum() == len(x)
    assert sorted(sizes.tolist()) == sorted(np.bincount(kind).tolist())  # the clusters are the programs
