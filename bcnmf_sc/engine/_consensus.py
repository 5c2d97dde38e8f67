"""Clustering the topics of several fits into consensus topics, and tracking topics along a path of fits.

Every fit of the same setting (independent starts, seeds, data splits) returns ``K`` topics in an arbitrary
order. :func:`cluster_topics` groups them into ``K`` clusters of one topic per run by Hungarian matching on
cosine similarity (optionally only among topics of the same kind, e.g. shared with shared), averages each
cluster into a consensus topic and measures how reproducible it is. :func:`track_topics` matches the
topics of consecutive fits along a path (e.g. increasing α) so that each topic can be followed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._matching import cosine_matrix, match_topics

#: default stability threshold: a consensus topic whose members have a mean pairwise cosine similarity
#: below this is reported as unstable (cNMF-style filtering of topics that do not reproduce).
MIN_STABILITY = 0.8


@dataclass
class TopicClusters:
    """Result of :func:`cluster_topics`.

    Attributes
    ----------
    loadings
        Consensus loadings, genes × K, the mean of each cluster's members (columns sum to 1).
    members
        runs × K: column of each run that belongs to each cluster.
    similarity
        runs × K: cosine similarity of each member to its consensus topic.
    stability
        K: mean pairwise cosine similarity among a cluster's members (NaN with a single run).
    kinds
        K: kind of each consensus topic (``None`` when no kinds were given).
    reference
        Index of the run used as the initial reference (the medoid run).
    """

    loadings: np.ndarray
    members: np.ndarray
    similarity: np.ndarray
    stability: np.ndarray
    kinds: np.ndarray | None
    reference: int


def _normalise(loadings: np.ndarray) -> np.ndarray:
    loadings = np.clip(np.asarray(loadings, dtype=np.float64), 0.0, None)
    return loadings / np.maximum(loadings.sum(axis=0, keepdims=True), 1e-300)


def _blocks(kinds: np.ndarray | None, k: int) -> list[np.ndarray]:
    if kinds is None:
        return [np.arange(k)]
    return [np.flatnonzero(kinds == kind) for kind in dict.fromkeys(kinds.tolist())]


def match_within(
    reference: np.ndarray, other: np.ndarray, kinds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of the columns of ``other`` to those of ``reference``, within each kind.

    Returns, per column of ``reference``, the matched column of ``other`` and their cosine similarity.
    """
    k = reference.shape[1]
    matched = np.empty(k, dtype=np.int64)
    similarity = np.empty(k)
    for block in _blocks(kinds, k):
        idx, sim = match_topics(reference[:, block], other[:, block])
        matched[block] = block[idx]
        similarity[block] = sim
    return matched, similarity


def cluster_topics(runs: list[np.ndarray], *, kinds: np.ndarray | None = None, max_iter: int = 10) -> TopicClusters:
    """Cluster the topics of several runs of one setting into consensus topics.

    1. The *medoid run* — the run whose topics match those of the other runs best (largest sum of mean
       matched cosine similarity) — is the first reference.
    2. Every run's topics are matched one-to-one to the reference topics (Hungarian algorithm on cosine
       similarity, only among topics of the same kind when ``kinds`` is given).
    3. Each cluster's consensus topic is the mean of its members (each scaled to sum 1), rescaled to sum 1.
    4. Steps 2–3 repeat with the consensus topics as reference until the clusters no longer change.

    The stability of a consensus topic is the mean pairwise cosine similarity of its members.

    Parameters
    ----------
    runs
        Loadings of each run, genes × K (same genes and K for all runs).
    kinds
        Optional kind of each column (the same for every run), e.g. ``"shared"`` / ``"target"``.
    max_iter
        Most refinement rounds.
    """
    if len(runs) == 0:
        raise ValueError("cluster_topics needs at least one run.")
    runs = [_normalise(run) for run in runs]
    shape = runs[0].shape
    if any(run.shape != shape for run in runs):
        raise ValueError(f"all runs must have the same shape (genes × topics); got {[run.shape for run in runs]}.")
    kinds = None if kinds is None else np.asarray(kinds)
    if kinds is not None and kinds.shape != (shape[1],):
        raise ValueError(f"kinds must have one entry per topic ({shape[1]}), got shape {kinds.shape}.")
    n_runs, k = len(runs), shape[1]

    pair = np.zeros((n_runs, n_runs))
    for i in range(n_runs):
        for j in range(i + 1, n_runs):
            pair[i, j] = pair[j, i] = match_within(runs[i], runs[j], kinds)[1].mean()
    reference = int(np.argmax(pair.sum(axis=1)))

    centre = runs[reference]
    members = None
    for _ in range(max(1, max_iter)):
        new_members = np.stack([match_within(centre, run, kinds)[0] for run in runs])
        centre = _normalise(np.mean([run[:, cols] for run, cols in zip(runs, new_members)], axis=0))
        if members is not None and np.array_equal(members, new_members):
            break
        members = new_members

    similarity = np.stack([np.diag(cosine_matrix(run[:, cols], centre)) for run, cols in zip(runs, members)])
    stability = np.full(k, np.nan)
    if n_runs > 1:
        stacked = np.stack([run[:, cols] for run, cols in zip(runs, members)])  # runs × genes × K
        for topic in range(k):
            sims = cosine_matrix(stacked[:, :, topic].T, stacked[:, :, topic].T)
            stability[topic] = sims[np.triu_indices(n_runs, 1)].mean()
    return TopicClusters(centre, members, similarity, stability, kinds, reference)


def track_topics(path: list[np.ndarray], *, kinds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Follow topics along a path of fits (e.g. increasing α) by matching consecutive fits.

    Track ``t`` starts as column ``t`` of the first fit; at each later step it continues with the column
    matched (Hungarian on cosine similarity, within kinds) to its column at the previous step.

    Returns
    -------
    columns
        steps × K: column of each step that carries each track.
    similarity
        steps × K: cosine similarity of each track to itself at the previous step (NaN at step 0).
    """
    if len(path) == 0:
        raise ValueError("track_topics needs at least one fit.")
    k = path[0].shape[1]
    columns = np.empty((len(path), k), dtype=np.int64)
    similarity = np.full((len(path), k), np.nan)
    columns[0] = np.arange(k)
    for step in range(1, len(path)):
        previous = path[step - 1][:, columns[step - 1]]
        # matching within kinds keeps every track on topics of its own kind, so ``kinds`` applies by position
        matched, sim = match_within(previous, path[step], None if kinds is None else np.asarray(kinds))
        columns[step] = matched
        similarity[step] = sim
    return columns, similarity
