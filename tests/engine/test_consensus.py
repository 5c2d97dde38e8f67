"""Topic clustering, tracking and held-out evaluation of the engine (no AnnData)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bcnmf_sc.engine import RowSource
from bcnmf_sc.engine._consensus import cluster_topics, match_within, track_topics
from bcnmf_sc.engine._heldout import gene_folds, heldout_loss, solve_usages


def _loadings(n_genes: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Topics on disjoint gene blocks plus a little background: distinct, non-negative, columns sum to 1."""
    w = rng.gamma(0.3, 0.01, size=(n_genes, k))
    block = n_genes // k
    for topic in range(k):
        w[topic * block : (topic + 1) * block, topic] += rng.gamma(2.0, 1.0, size=block)
    return w / w.sum(axis=0)


def _noisy_copy(w: np.ndarray, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    copy = w * rng.lognormal(0.0, noise, size=w.shape)
    return copy / copy.sum(axis=0)


def test_cluster_topics_recovers_permuted_runs():
    rng = np.random.default_rng(0)
    truth = _loadings(200, 5, rng)
    perms = [rng.permutation(5) for _ in range(4)]
    runs = [_noisy_copy(truth, rng)[:, p] for p in perms]
    clusters = cluster_topics(runs)
    # each cluster holds the same true topic from every run
    reference_topic = perms[clusters.reference][np.arange(5)]
    for run, perm in enumerate(perms):
        np.testing.assert_array_equal(perm[clusters.members[run]], reference_topic)
    np.testing.assert_allclose(clusters.loadings.sum(axis=0), 1.0)
    cos = (clusters.loadings / np.linalg.norm(clusters.loadings, axis=0)).T @ (truth / np.linalg.norm(truth, axis=0))
    assert np.all(cos.max(axis=1) > 0.99)
    assert np.all(clusters.stability > 0.95)
    assert clusters.similarity.shape == (4, 5) and np.all(clusters.similarity > 0.95)


def test_cluster_topics_flags_a_topic_that_does_not_reproduce():
    rng = np.random.default_rng(1)
    truth = _loadings(300, 4, rng)
    runs = []
    for _ in range(5):
        run = _noisy_copy(truth, rng)
        run[:, 3] = rng.dirichlet(np.full(300, 0.2))  # a different random topic every run
        runs.append(run[:, rng.permutation(4)])
    clusters = cluster_topics(runs)
    assert np.sum(clusters.stability < 0.5) == 1
    assert np.sum(clusters.stability > 0.95) == 3


def test_matching_stays_within_kinds():
    rng = np.random.default_rng(2)
    w = _loadings(100, 4, rng)
    kinds = np.array(["shared", "shared", "target", "target"])
    other = w[:, [2, 3, 0, 1]]  # target topics now sit in the shared columns
    matched, _ = match_within(w, other, kinds)
    assert set(matched[:2]) == {0, 1} and set(matched[2:]) == {2, 3}
    free, sim = match_within(w, other)
    np.testing.assert_array_equal(free, [2, 3, 0, 1])
    np.testing.assert_allclose(sim, 1.0)


def test_track_topics_follows_columns_along_a_path():
    rng = np.random.default_rng(3)
    w = _loadings(150, 3, rng)
    p1, p2 = np.array([2, 0, 1]), np.array([1, 2, 0])
    path = [w, w[:, p1], w[:, p1][:, p2]]
    columns, similarity = track_topics(path)
    for step, fit in enumerate(path):
        np.testing.assert_allclose(fit[:, columns[step]], w)
    assert np.all(np.isnan(similarity[0]))
    np.testing.assert_allclose(similarity[1:], 1.0)


def test_cluster_topics_validates_input():
    with pytest.raises(ValueError, match="at least one run"):
        cluster_topics([])
    with pytest.raises(ValueError, match="same shape"):
        cluster_topics([np.ones((5, 2)), np.ones((5, 3))])
    with pytest.raises(ValueError, match="kinds"):
        cluster_topics([np.ones((5, 2))], kinds=np.array(["shared"]))


def test_solve_usages_recovers_exact_gaussian_usages_and_respects_the_topic_mask():
    rng = np.random.default_rng(4)
    w = _loadings(120, 4, rng)
    u = rng.gamma(2.0, 5.0, size=(30, 4))
    x = u @ w.T
    solved = solve_usages(x, w, likelihood="gaussian", max_steps=3000, tol=1e-9, dtype=torch.float64)
    np.testing.assert_allclose(solved, u, rtol=1e-2, atol=1e-2)
    masked = solve_usages(sp.csr_matrix(x), w, likelihood="poisson", topics=np.array([True, True, False, True]))
    assert np.all(masked[:, 2] == 0) and np.all(masked[:, [0, 1, 3]] > 0)


def test_heldout_loss_penalises_topics_that_only_fit_noise():
    rng = np.random.default_rng(5)
    w = _loadings(400, 3, rng)
    u = rng.gamma(2.0, 100.0, size=(150, 3))
    counts = rng.poisson(u @ w.T).astype(np.float32)
    noise_topics = rng.dirichlet(np.full(400, 0.3), size=6).T
    padded = np.hstack([w, noise_topics])
    true_loss = heldout_loss(RowSource(counts), w, likelihood="poisson", random_state=0)
    padded_loss = heldout_loss(RowSource(counts), padded, likelihood="poisson", random_state=0)
    assert padded_loss > true_loss
    # usages solved on all genes always prefer more topics: bi-cross-validation is what tells them apart
    in_sample = [
        float(np.sum(counts * np.log(np.maximum(counts, 1e-30) / (s @ m.T)) - counts + s @ m.T))
        for m in (w, padded)
        for s in [solve_usages(counts, m, likelihood="poisson", max_steps=500, tol=1e-8)]
    ]
    assert in_sample[1] < in_sample[0]


def test_gene_folds_are_balanced_and_seeded():
    folds = gene_folds(11, 2, random_state=0)
    assert sorted(np.bincount(folds)) == [5, 6]
    np.testing.assert_array_equal(folds, gene_folds(11, 2, random_state=0))
    with pytest.raises(ValueError):
        gene_folds(3, 1, random_state=0)
