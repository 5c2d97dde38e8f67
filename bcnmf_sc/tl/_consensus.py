"""``tl.consensus``: consensus topics over many starts (or a sweep's seeds), unstable topics dropped."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..engine import BCNMF
from ..engine._consensus import MIN_STABILITY, cluster_topics
from ..engine._device import resolve_device
from ..engine._heldout import solve_usages
from ._bcnmf import topic_names
from ._enrichment import enrichment_table
from ._groups import (
    data_matrix,
    default_mask_var,
    resolve_genes,
    resolve_groups,
    source,
)

logger = logging.getLogger(__name__)

_DEFAULT = "default"


def consensus(
    adata: AnnData,
    *,
    background_key: str | None = None,
    background: Any | Sequence[Any] | None = None,
    target: Any | Sequence[Any] | None = None,
    n_topics: int = 10,
    n_target_topics: int | None = None,
    model: Literal["shared_target", "contrastive"] = "shared_target",
    alpha: float = 1.0,
    likelihood: Literal["poisson", "gaussian"] = "poisson",
    layer: str | None = None,
    mask_var: str | np.ndarray | None = _DEFAULT,
    n_starts: int = 10,
    min_stability: float = MIN_STABILITY,
    sweep_key: str | None = None,
    batch_size: int = 2048,
    usage_steps: int = 2,
    w_update: Literal["epoch", "online"] = "epoch",
    max_epochs: int = 200,
    tol: float = 1e-4,
    unsafe_alpha: Literal["raise", "clip"] = "raise",
    device: str = "auto",
    random_state: int = 0,
    progress: bool = True,
    key_added: str = "bcnmf_consensus",
    copy: bool = False,
) -> AnnData | None:
    """Consensus topics: cluster the topics of many fits, drop those that do not reproduce, refit usages.

    The runs are either ``n_starts`` independent starts of one setting, fitted here on all target and
    background cells, or — with ``sweep_key`` — the seeds of the setting recommended by
    :func:`bcnmf_sc.tl.bcnmf_sweep` (no fitting; groups, genes, data and likelihood are taken from the
    sweep). The topics of all runs are clustered (``bcnmf_sc.engine._consensus.cluster_topics``):
    every run's topics are matched one-to-one (Hungarian algorithm on cosine similarity, shared topics
    with shared, target with target) to a reference — first the medoid run, then the consensus itself
    until the clusters settle — and each cluster is averaged into a consensus topic. A topic's *stability*
    is the mean pairwise cosine similarity of its members across runs; consensus topics with stability
    below ``min_stability`` (default 0.8) are dropped. Usages of every cell are then solved with the
    consensus loadings fixed and all kept topics available (as :func:`bcnmf_sc.tl.bcnmf` does for
    background cells), and the per-topic enrichment table is recomputed on them.

    Parameters
    ----------
    adata
        Cells × genes, as for :func:`bcnmf_sc.tl.bcnmf`.
    background_key, background, target, n_topics, n_target_topics, model, alpha, likelihood, layer, mask_var
        The setting to fit, as in :func:`bcnmf_sc.tl.bcnmf` (ignored with ``sweep_key``).
    n_starts
        Number of independent starts to cluster (at least 2; ignored with ``sweep_key``).
    min_stability
        Consensus topics whose members have a mean pairwise cosine similarity below this are dropped.
    sweep_key
        Use the seeds' loadings of the recommended setting of the sweep stored under this key.
    batch_size, usage_steps, w_update, max_epochs, tol, unsafe_alpha, device
        Engine settings, as in :func:`bcnmf_sc.tl.bcnmf`.
    random_state
        Seed of the starts and of the enrichment permutations.
    progress
        Show a progress bar while fitting.
    key_added
        Key under which results are written.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with

    ``adata.obsm[key_added]``
        Usages of every cell on the kept consensus topics (cells × kept topics, float64).
    ``adata.varm[key_added]``
        Consensus loadings of the kept topics, genes × kept topics, columns summing to 1; zero rows for genes
        outside ``mask_var``.
    ``adata.uns[key_added]``
        ``params`` (the setting, ``n_runs``, ``min_stability``, source ``"starts"`` or ``"sweep"``, versions),
        ``topics`` (names of the kept topics, in column order), ``consensus`` (DataFrame, one row per
        consensus topic including dropped ones: ``kind``, ``stability``, ``similarity_mean`` and
        ``similarity_min`` (members' cosine similarity to the consensus), ``kept``), ``similarity``
        (runs × all consensus topics: each member's cosine similarity to its consensus topic), ``history``
        (the best start's per-epoch history; empty with ``sweep_key``) and ``enrichment`` (as
        :func:`bcnmf_sc.tl.bcnmf`, for the kept topics; ``stability`` is the consensus stability).
    """
    if not 0 <= min_stability <= 1:
        raise ValueError(f"min_stability must be between 0 and 1, got {min_stability!r}.")
    history = pd.DataFrame()
    if sweep_key is not None:
        sweep = adata.uns.get(sweep_key)
        if not isinstance(sweep, dict) or "recommended" not in sweep:
            raise KeyError(f"no bcnmf_sweep result under adata.uns[{sweep_key!r}]; run tl.bcnmf_sweep first.")
        setting = sweep["recommended"]
        if setting is None or sweep.get("loadings") is None:
            raise ValueError(
                f"the sweep under {sweep_key!r} recommended no setting: nothing to build a consensus from."
            )
        runs_full = [np.asarray(w, dtype=np.float64) for w in sweep["loadings"]]
        if len(runs_full) < 2:
            raise ValueError(
                "the recommended setting has fewer than two successful seeds; a consensus needs at least two runs."
            )
        kinds = np.asarray(sweep["kinds"], dtype=str)
        background_key, background, target = setting["background_key"], setting["background"], setting.get("target")
        model, likelihood, layer = setting["model"], setting["likelihood"], setting["layer"]
        mask_var = setting["mask_var"]
        n_topics = int(setting["n_topics"])
        n_target_topics = setting.get("n_target_topics")
        alpha = setting.get("alpha", alpha)
        batch_size, device = setting["batch_size"], setting["device"]
    groups = resolve_groups(adata, background_key=background_key, background=background, target=target)
    if isinstance(mask_var, str) and mask_var == _DEFAULT:
        mask_var = default_mask_var(adata)
    genes = resolve_genes(adata, mask_var)
    matrix = data_matrix(adata, layer)
    target_source = source(matrix, groups.target, genes, name="target cells")
    background_source = source(matrix, groups.background, genes, name="background cells")

    if sweep_key is not None:
        runs = [w[genes] for w in runs_full]
        origin = "sweep"
    else:
        if not isinstance(n_starts, (int, np.integer)) or n_starts < 2:
            raise ValueError(f"n_starts must be at least 2 to build a consensus, got {n_starts!r}.")
        estimator = BCNMF(
            n_topics,
            model=model,
            n_target_topics=n_target_topics,
            alpha=alpha,
            likelihood=likelihood,
            w_update=w_update,
            batch_size=batch_size,
            usage_steps=usage_steps,
            max_epochs=max_epochs,
            tol=tol,
            n_starts=n_starts,
            unsafe_alpha=unsafe_alpha,
            device=device,
            random_state=random_state,
            progress=progress,
        )
        estimator.fit(target_source, background_source)
        kept_genes = np.setdiff1d(np.arange(len(genes)), estimator.excluded_genes_)
        runs = []
        for w in estimator.start_loadings_:  # over the genes the engine kept (all but excluded_genes_)
            if w.shape[0] == len(genes):
                runs.append(np.asarray(w, dtype=np.float64))
                continue
            full = np.zeros((len(genes), n_topics))
            full[kept_genes] = w
            runs.append(full)
        if len(runs) < 2:
            raise ValueError(f"only {len(runs)} of {n_starts} starts did not collapse; a consensus needs at least two.")
        kinds = np.asarray(estimator.topic_kind_, dtype=str)
        n_target_topics = estimator.n_target_topics_
        history = pd.DataFrame(estimator.history_)
        origin = "starts"

    clusters = cluster_topics(runs, kinds=kinds)
    all_names = topic_names(kinds)
    keep = clusters.stability >= min_stability
    for name, stab in zip(all_names, clusters.stability):
        logger.info("consensus topic %s: stability %.3f%s", name, stab, "" if stab >= min_stability else " (dropped)")
    if not keep.any():
        raise ValueError(
            f"no consensus topic reaches min_stability={min_stability} (best: {np.nanmax(clusters.stability):.3f}); "
            "lower min_stability, fit more starts or choose another setting (see tl.bcnmf_sweep)."
        )
    if (kinds == "target").any() and not (keep & (kinds == "target")).any():
        warnings.warn(
            "every target topic was dropped as unstable; the consensus keeps only shared topics.",
            UserWarning,
            stacklevel=2,
        )
    loadings = clusters.loadings[:, keep]

    usages = np.zeros((adata.n_obs, int(keep.sum())))
    solve_kw = dict(likelihood=likelihood, batch_size=batch_size, device=resolve_device(device))
    for rows, data in ((groups.target, target_source), (groups.background, background_source)):
        usages[rows] = solve_usages(data, loadings, **solve_kw)
    if len(groups.other):
        usages[groups.other] = solve_usages(
            source(matrix, groups.other, genes, name="other cells"), loadings, **solve_kw
        )

    names = [n for n, k in zip(all_names, keep) if k]
    enrichment = enrichment_table(
        usages[groups.target], usages[groups.background], names, kinds[keep], random_state=random_state
    )
    enrichment["stability"] = clusters.stability[keep]
    table = pd.DataFrame(
        {
            "kind": pd.Categorical(kinds),
            "stability": clusters.stability,
            "similarity_mean": clusters.similarity.mean(axis=0),
            "similarity_min": clusters.similarity.min(axis=0),
            "kept": keep,
        },
        index=pd.Index(all_names, name="topic"),
    )
    full_loadings = np.zeros((adata.n_vars, loadings.shape[1]))
    full_loadings[genes] = loadings
    params = dict(
        background_key=background_key,
        background=_plain(background),
        target=_plain(target),
        model=model,
        n_topics=int(n_topics),
        n_target_topics=int(n_target_topics or 0),
        alpha=float(alpha),
        likelihood=likelihood,
        layer=layer,
        mask_var=mask_var if isinstance(mask_var, str) or mask_var is None else "<mask>",
        n_runs=len(runs),
        source=origin,
        sweep_key=sweep_key,
        min_stability=float(min_stability),
        n_kept=int(keep.sum()),
        random_state=random_state,
        versions={pkg: version(pkg) for pkg in ("bcnmf-sc", "anndata", "numpy", "scipy")}
        | {"torch": str(torch.__version__)},
    )
    results = dict(
        params=params,
        topics=np.array(names),
        consensus=table,
        similarity=clusters.similarity,
        history=history,
        enrichment=enrichment,
    )

    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = usages
    adata.varm[key_added] = full_loadings
    adata.uns[key_added] = results
    return adata if copy else None


def _plain(value):
    if value is None or isinstance(value, (str, int, float, bool, np.generic)):
        return value
    return np.asarray(list(value))
