"""``pl.topic_genes``: the top-ranked genes of each topic."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..tl._topic_genes import rank_topic_genes
from ._utils import BACKGROUND_COLOR, TARGET_COLOR, finish, fitted, panels, select_topics, topic_title

_KIND_COLORS = {"target": TARGET_COLOR, "shared": "0.55", "contrastive": BACKGROUND_COLOR}


def topic_genes(
    adata: AnnData,
    *,
    key: str = "bcnmf",
    topics: str | int | Sequence[str | int] | None = None,
    n_genes: int = 10,
    gene_symbols: str | None = None,
    ncols: int = 5,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Figure | Axes | list[Axes] | None:
    """The ``n_genes`` top-ranked genes of each topic, target-enriched topics first.

    Genes are ranked by the specificity score of :func:`bcnmf_sc.tl.topic_genes` (a gene's loading
    times the log2 ratio to its mean loading in the other topics), read from ``adata.uns[f"{key}_genes"]``
    (written by :func:`bcnmf_sc.tl.bcnmf` in scanpy's ``rank_genes_groups`` layout) or computed from
    ``adata.varm[key]`` when that is missing. Bars are coloured by topic kind (target topics red); a ★ in the title marks
    topics flagged ``enriched``.

    Parameters
    ----------
    adata
        AnnData fitted with :func:`bcnmf_sc.tl.bcnmf`.
    key
        The ``key_added`` of the fit.
    topics
        Topic names or column indices; default all topics, target-enriched ones first.
    n_genes
        Genes shown per topic.
    gene_symbols
        Column of ``adata.var`` with the labels to show instead of ``var_names``.
    ncols
        Panels per row.
    ax
        Axes to draw into (a single topic only).
    show
        Show the figure; ``None`` shows it in interactive mode and in notebooks, never in scripts.
    save
        Write the figure to this path (format from the suffix, PNG when it has none).
    return_fig
        Return the figure instead of the axes.

    Returns
    -------
    The figure when ``return_fig``, else the axes (one per topic) when ``show`` is false, else ``None``.
    """
    if n_genes < 1:
        raise ValueError(f"n_genes must be at least 1, got {n_genes}.")
    result = fitted(adata, key)
    enrichment = result["enrichment"]
    columns = select_topics(adata, key, topics)
    if gene_symbols is not None and gene_symbols not in adata.var.columns:
        raise KeyError(f"gene_symbols={gene_symbols!r} is not a column of adata.var.")
    kinds = enrichment["kind"].astype(str).to_numpy()

    names, scores, score_name = _ranking(adata, key, n_genes)

    fig, axes = panels(len(columns), ax=ax, ncols=ncols, panel_size=(2.9, 0.9 + 0.24 * n_genes))
    for panel, column in zip(axes, columns):
        topic = str(enrichment.index[column])
        genes = np.asarray(names[topic][:n_genes]).astype(str)
        values = np.asarray(scores[topic][:n_genes], dtype=float)
        if gene_symbols is not None:
            genes = adata.var[gene_symbols].reindex(genes).astype(str).to_numpy()
        positions = np.arange(len(genes))[::-1]
        panel.barh(positions, values, color=_KIND_COLORS.get(kinds[column], "0.55"), height=0.75)
        panel.set_yticks(positions, genes, fontsize=8)
        panel.set_ylim(-0.6, len(genes) - 0.4)
        panel.set_xlabel(score_name, fontsize=8)
        panel.tick_params(axis="x", labelsize=7)
        panel.set_title(topic_title(enrichment, column), fontsize=10)
        panel.spines[["top", "right"]].set_visible(False)
    return finish(fig, axes, show=show, save=save, return_fig=return_fig)


def _ranking(adata: AnnData, key: str, n_genes: int) -> tuple[np.recarray, np.recarray, str]:
    """Ranked ``names`` and ``scores`` (one field per topic) and the score's name.

    Read from ``uns[f"{key}_genes"]`` when it covers every topic, else ranked from ``varm[key]`` with the
    same specificity score :func:`bcnmf_sc.tl.bcnmf` uses.
    """
    topics = [str(topic) for topic in fitted(adata, key)["enrichment"].index]
    ranked = adata.uns.get(f"{key}_genes")
    if not (isinstance(ranked, dict) and set(topics) <= set(ranked["names"].dtype.names or ())):
        ranked = rank_topic_genes(
            np.asarray(adata.varm[key]), adata.var_names, topics, n_genes=n_genes, key=key, layer=None
        )
    method = str(ranked.get("params", {}).get("method", "score"))
    return ranked["names"], ranked["scores"], f"{method} score" if method != "score" else method
