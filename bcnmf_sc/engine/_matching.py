"""Matching topics across fits by cosine similarity (Hungarian algorithm)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity between the columns of ``a`` (genes × K1) and ``b`` (genes × K2)."""
    a = a / np.maximum(np.linalg.norm(a, axis=0, keepdims=True), 1e-30)
    b = b / np.maximum(np.linalg.norm(b, axis=0, keepdims=True), 1e-30)
    return a.T @ b


def match_topics(reference: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each column of ``reference``, the matched column of ``other`` and their cosine similarity."""
    similarity = cosine_matrix(reference, other)
    ref_idx, other_idx = linear_sum_assignment(-similarity)
    order = np.argsort(ref_idx)
    return other_idx[order], similarity[ref_idx[order], other_idx[order]]
