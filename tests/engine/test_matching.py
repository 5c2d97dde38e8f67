"""Hungarian matching of topics by cosine similarity."""

from __future__ import annotations

import numpy as np

from bcnmf_sc.engine import match_topics
from bcnmf_sc.engine._matching import cosine_matrix


def test_recovers_a_permutation():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(50, 6))
    perm = np.array([3, 0, 5, 1, 4, 2])
    b = a[:, perm] * rng.uniform(0.5, 2.0, 6)  # column scale does not matter for cosine
    matched, similarity = match_topics(a, b)
    np.testing.assert_array_equal(perm[matched], np.arange(6))
    np.testing.assert_allclose(similarity, 1.0)


def test_matching_is_one_to_one_and_optimal():
    """Greedy would pair column 0 with its best match and leave column 1 a poor one; Hungarian maximises the sum."""
    ref = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    other = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    sims = cosine_matrix(ref, other)
    matched, similarity = match_topics(ref, other)
    assert sorted(matched.tolist()) == [0, 1]
    assert similarity.sum() == sims[[0, 1], matched].sum()
    assert similarity.sum() >= max(sims[0, 0] + sims[1, 1], sims[0, 1] + sims[1, 0]) - 1e-12


def test_cosine_matrix_values_and_zero_columns():
    a = np.array([[1.0, 0.0], [0.0, 0.0]])
    b = np.array([[1.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(cosine_matrix(a, b), [[1.0, 1 / np.sqrt(2)], [0.0, 0.0]])
    assert np.all(np.isfinite(cosine_matrix(np.zeros((3, 2)), b.repeat(2, axis=0)[:3])))


def test_more_topics_in_other():
    rng = np.random.default_rng(1)
    other = rng.uniform(size=(30, 5))
    ref = other[:, [4, 1]]
    matched, similarity = match_topics(ref, other)
    np.testing.assert_array_equal(matched, [4, 1])
    np.testing.assert_allclose(similarity, 1.0)
