"""Per-topic enrichment of usage in target versus background cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

#: a topic is marked ``enriched`` when all three hold
MIN_LOG2FC = 1.0
MIN_ACTIVE_SHARE = 0.2
MAX_PVALUE = 0.05
#: a target cell is "active" in a topic when its usage exceeds this quantile of the background's
ACTIVE_QUANTILE = 0.95


def auroc(target: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of each column separating target (positive) from background rows."""
    n_t, n_b = len(target), len(background)
    ranks = rankdata(np.vstack([target, background]), axis=0)
    return (ranks[:n_t].sum(axis=0) - n_t * (n_t + 1) / 2) / (n_t * n_b)


def active_share(target: np.ndarray, background: np.ndarray, *, quantile: float = ACTIVE_QUANTILE) -> np.ndarray:
    """Fraction of target rows above the background's ``quantile`` in each column.

    Unlike the AUROC it does not depend on how the target cells *without* the program compare with the
    background, so a program active in a subpopulation (a third of the target cells, say) scores that
    third; ``1 − quantile`` is what a topic used alike in both groups scores.
    """
    threshold = np.quantile(background, quantile, axis=0)
    # usages at the floor (1e-20) are zero: a background of zeros does not make every positive usage "active"
    threshold = np.maximum(threshold, 1e-6 * np.maximum(np.abs(target).mean(axis=0), 1e-300))
    return (target > threshold).mean(axis=0)


def permutation_pvalue(
    target: np.ndarray, background: np.ndarray, *, n_permutations: int, max_cells: int, rng: np.random.Generator
) -> np.ndarray:
    """One-sided p-value of ``mean(target) − mean(background)`` per column under label permutation.

    Each group is subsampled to ``max_cells`` rows so the cost does not grow with the data.
    """
    if len(target) > max_cells:
        target = target[rng.choice(len(target), max_cells, replace=False)]
    if len(background) > max_cells:
        background = background[rng.choice(len(background), max_cells, replace=False)]
    pooled = np.vstack([target, background])
    n_t = len(target)
    observed = target.mean(axis=0) - background.mean(axis=0)
    exceed = np.zeros(pooled.shape[1])
    for _ in range(n_permutations):
        order = rng.permutation(len(pooled))
        diff = pooled[order[:n_t]].mean(axis=0) - pooled[order[n_t:]].mean(axis=0)
        exceed += diff >= observed
    return (1.0 + exceed) / (1.0 + n_permutations)


def enrichment_table(
    target_usages: np.ndarray,
    background_usages: np.ndarray,
    topic_names: list[str],
    topic_kind: np.ndarray,
    *,
    n_permutations: int = 999,
    max_cells: int = 5000,
    random_state: int = 0,
) -> pd.DataFrame:
    """Per topic: mean usage in target and background cells, log2 fold change, AUROC, ``active_share`` (the
    fraction of target cells above the background's 95th percentile, see :func:`active_share`),
    background-leakage share (the background's part of the per-cell mean usage, ``bg / (target + bg)``),
    a permutation p-value and ``enriched`` (log2fc ≥ 1, active share ≥ 0.2, p < 0.05).

    The active share, not the AUROC, enters ``enriched``: a program used by half of the target cells and
    by no background cell has an AUROC anywhere from 0.5 to 0.75, depending only on whether the other
    half sits a hair above or below the background's near-zero usage.
    """
    rng = np.random.default_rng(random_state)
    target_mean = target_usages.mean(axis=0)
    background_mean = background_usages.mean(axis=0)
    pseudo = 1e-3 * max(float(np.mean(np.concatenate([target_mean, background_mean]))), 1e-12)
    log2fc = np.log2((target_mean + pseudo) / (background_mean + pseudo))
    area = auroc(target_usages, background_usages)
    active = active_share(target_usages, background_usages)
    leakage = background_mean / np.maximum(target_mean + background_mean, 1e-300)
    pvalue = permutation_pvalue(
        target_usages, background_usages, n_permutations=n_permutations, max_cells=max_cells, rng=rng
    )
    table = pd.DataFrame(
        {
            "kind": pd.Categorical(topic_kind),
            "target_mean": target_mean,
            "background_mean": background_mean,
            "log2fc": log2fc,
            "auroc": area,
            "active_share": active,
            "leakage": leakage,
            "pval": pvalue,
            "enriched": (log2fc >= MIN_LOG2FC) & (active >= MIN_ACTIVE_SHARE) & (pvalue < MAX_PVALUE),
        },
        index=pd.Index(topic_names, name="topic"),
    )
    return table


def most_enriched_topic(table: pd.DataFrame) -> str:
    """Name of the most target-enriched topic: enriched topics first, then the largest log2 fold change
    (the order in which :mod:`bcnmf_sc.pl` shows topics)."""
    order = np.lexsort((-table["log2fc"].to_numpy(dtype=float), ~table["enriched"].to_numpy(dtype=bool)))
    return str(table.index[order[0]])
