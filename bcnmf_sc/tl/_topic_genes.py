"""``tl.topic_genes``: genes ranked per topic by specificity, in scanpy's ``rank_genes_groups`` layout."""

from __future__ import annotations

import numpy as np
from anndata import AnnData

#: pseudo-loading added to both sides of the log-ratio, as a fraction of the mean loading 1 / n_genes;
#: keeps genes whose loadings sit at the numerical floor from getting huge ratios
PSEUDO = 1e-2


def specificity(loadings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per gene and topic: ``(score, log2 ratio)`` of the loading against the mean of the other topics.

    ``ratio = log2((w_gk + ε) / (m_gk + ε))`` with ``m_gk`` the mean loading of gene ``g`` in the other
    topics (the uniform ``1 / n_genes`` when there is a single topic) and ``ε = PSEUDO / n_genes``;
    ``score = w_gk · ratio``. Since every column sums to 1, the scores of a topic sum (up to ``ε``) to the
    KL divergence, in bits, of its gene distribution from the mean of the other topics: each gene's score
    is its share of what makes the topic distinct.
    """
    n_genes, n_topics = loadings.shape
    if n_topics > 1:
        others = (loadings.sum(axis=1, keepdims=True) - loadings) / (n_topics - 1)
    else:
        others = np.full_like(loadings, 1.0 / n_genes)
    eps = PSEUDO / n_genes
    ratio = np.log2((loadings + eps) / (np.maximum(others, 0.0) + eps))
    return loadings * ratio, ratio


def fitted_genes(loadings: np.ndarray) -> np.ndarray:
    """Indices of the genes the fit used: the rows of ``varm[key]`` that are not all zero."""
    return np.flatnonzero(np.any(loadings != 0, axis=1))


def rank_topic_genes(
    loadings: np.ndarray, var_names, topics, *, n_genes: int | None, key: str, layer: str | None
) -> dict:
    """The ``rank_genes_groups``-style dict for loadings (all genes × topics; zero rows = genes not fitted)."""
    genes = fitted_genes(loadings)
    scores, ratio = specificity(np.asarray(loadings, dtype=np.float64)[genes])
    n_keep = len(genes) if n_genes is None else min(n_genes, len(genes))
    order = np.argsort(-scores, axis=0, kind="stable")[:n_keep]  # genes × topics
    names = np.asarray(var_names)[genes]
    topics = [str(t) for t in topics]

    def table(values: np.ndarray, dtype) -> np.recarray:
        return np.rec.fromarrays([np.asarray(values[:, k], dtype=dtype) for k in range(len(topics))], names=topics)

    ranked_scores = np.take_along_axis(scores, order, axis=0)
    ranked_ratio = np.take_along_axis(ratio, order, axis=0)
    nan = np.full(order.shape, np.nan)
    return dict(
        params=dict(groupby=key, reference="rest", method="specificity", use_raw=False, layer=layer,
                    corr_method="none", pseudo=PSEUDO),
        names=table(names[order], object),
        scores=table(ranked_scores, np.float64),
        logfoldchanges=table(ranked_ratio, np.float64),
        pvals=table(nan, np.float64),
        pvals_adj=table(nan, np.float64),
    )


def topic_genes(
    adata: AnnData,
    *,
    key: str = "bcnmf",
    n_genes: int | None = 100,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Rank the genes of every topic of a bcNMF fit by how specific they are to it.

    :func:`bcnmf_sc.tl.bcnmf` calls this itself; call it again for more genes or another key. The
    result uses the layout of :func:`scanpy.tl.rank_genes_groups` (one group per topic, in the topic
    order of ``obsm[key]``), so :func:`scanpy.pl.rank_genes_groups` and
    :func:`scanpy.get.rank_genes_groups_df` work on it unchanged.

    **Score.** Raw loadings favour genes that are highly expressed everywhere (``B2M``, ``MALAT1``).
    Each gene ``g`` of topic ``k`` is instead scored by its loading times the log-ratio of the loading to
    the gene's mean loading in the other topics::

        score_gk = w_gk · log2((w_gk + ε) / (mean_{j≠k} w_gj + ε)),   ε = 0.01 / n_genes

    Every loading column sums to 1, so a topic's scores add up to the KL divergence (in bits) of its
    gene distribution from the average of the other topics: the top genes are those that carry the
    topic's distinctness, weighted by how much of the topic they make up. Genes below their average
    elsewhere get negative scores. With a single topic the comparison is the uniform distribution.

    Parameters
    ----------
    adata
        AnnData with a fit of :func:`bcnmf_sc.tl.bcnmf` under ``key``.
    key
        ``key_added`` of the fit.
    n_genes
        Genes kept per topic; ``None`` keeps every fitted gene. Genes outside the fit (``mask_var``,
        zero rows of ``varm[key]``) are never ranked.
    key_added
        Where to write; default ``f"{key}_genes"``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with

    ``adata.uns[key_added]`` (default ``f"{key}_genes"``)
        ``params`` (``groupby=key``, ``reference="rest"``, ``method="specificity"``, ``use_raw``,
        ``layer``, ``corr_method``, ``pseudo``) and structured arrays with one field per topic, genes
        ranked by decreasing score: ``names``, ``scores`` (above), ``logfoldchanges`` (the log2 ratio
        in the score) and ``pvals``, ``pvals_adj`` (all NaN: this is no test, the fields exist so
        scanpy's readers work).
    """
    if key not in adata.varm or not isinstance(adata.uns.get(key), dict) or "topics" not in adata.uns[key]:
        raise KeyError(
            f"no bcNMF result under key {key!r}: run bcnmf_sc.tl.bcnmf(adata, ..., key_added={key!r}) first."
        )
    if n_genes is not None and (isinstance(n_genes, bool) or not isinstance(n_genes, (int, np.integer)) or n_genes < 1):
        raise ValueError(f"n_genes must be a positive integer or None, got {n_genes!r}.")
    fit = adata.uns[key]
    loadings = np.asarray(adata.varm[key])
    topics = list(np.asarray(fit["topics"]).astype(str))
    if loadings.shape[1] != len(topics):
        raise ValueError(f"adata.varm[{key!r}] has {loadings.shape[1]} columns but {len(topics)} topics are named.")
    ranked = rank_topic_genes(
        loadings, adata.var_names, topics, n_genes=n_genes, key=key, layer=fit.get("params", {}).get("layer")
    )
    adata = adata.copy() if copy else adata
    adata.uns[key_added or f"{key}_genes"] = ranked
    return adata if copy else None
