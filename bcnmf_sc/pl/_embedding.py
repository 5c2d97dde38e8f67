"""``pl.embedding``: topic usage on an existing embedding (UMAP, t-SNE, PCA, …)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._utils import finish, fitted, panels, select_topics, topic_title


def embedding(
    adata: AnnData,
    *,
    key: str = "bcnmf",
    basis: str = "umap",
    topics: str | int | Sequence[str | int] | None = None,
    ncols: int = 4,
    cmap: str = "viridis",
    vmax: float | str | None = "p99",
    size: float | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Figure | Axes | list[Axes] | None:
    """Cells on ``adata.obsm[f"X_{basis}"]`` coloured by their usage of each topic.

    The embedding is not computed here: run e.g. ``sc.pp.neighbors`` and ``sc.tl.umap`` first (or
    ``sc.pp.neighbors(adata, use_rep="bcnmf")`` for a neighbourhood graph on the topic usages).
    Cells with the highest usage are drawn on top.

    Parameters
    ----------
    adata
        AnnData fitted with :func:`bcnmf_sc.tl.bcnmf`.
    key
        The ``key_added`` of the fit.
    basis
        Embedding in ``adata.obsm``: ``"umap"`` reads ``obsm["X_umap"]``; a full ``obsm`` key also works.
    topics
        Topic names or column indices; default all topics, target-enriched ones first.
    ncols
        Panels per row.
    cmap
        Colour map of the usage.
    vmax
        Upper end of the colour scale: a number, ``"pNN"`` for the NN-th percentile of each topic's
        usage (default ``"p99"``, so a few extreme cells do not wash out the rest), or ``None`` for the maximum.
    size
        Point size; default ``min(12, 120000 / n_obs)``.
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
    result = fitted(adata, key)
    coordinates = _basis(adata, basis)
    columns = select_topics(adata, key, topics)
    enrichment = result["enrichment"]
    usages = np.asarray(adata.obsm[key])
    size = min(12.0, 120000 / adata.n_obs) if size is None else size
    axis_name = basis.removeprefix("X_").upper()

    fig, axes = panels(len(columns), ax=ax, ncols=ncols, panel_size=(3.6, 3.0))
    for panel, column in zip(axes, columns):
        values = usages[:, column]
        order = np.argsort(values, kind="stable")
        points = panel.scatter(
            coordinates[order, 0],
            coordinates[order, 1],
            c=values[order],
            cmap=cmap,
            vmin=0.0,
            vmax=_vmax(values, vmax),
            s=size,
            linewidths=0,
            rasterized=True,
        )
        fig.colorbar(points, ax=panel, shrink=0.8, pad=0.02, label="usage")
        panel.set_title(topic_title(enrichment, column), fontsize=10)
        panel.set_xticks([])
        panel.set_yticks([])
        panel.set_xlabel(f"{axis_name}1", fontsize=8)
        panel.set_ylabel(f"{axis_name}2", fontsize=8)
    return finish(fig, axes, show=show, save=save, return_fig=return_fig)


def _basis(adata: AnnData, basis: str) -> np.ndarray:
    for name in (basis, f"X_{basis}"):
        if name in adata.obsm:
            coordinates = np.asarray(adata.obsm[name])
            if coordinates.ndim != 2 or coordinates.shape[1] < 2:
                raise ValueError(f"adata.obsm[{name!r}] needs at least two columns, got shape {coordinates.shape}.")
            return coordinates[:, :2]
    raise KeyError(
        f"no embedding {basis!r}: adata.obsm has neither {basis!r} nor {'X_' + basis!r} "
        f"(available: {list(adata.obsm.keys())}); compute it first, e.g. sc.pp.neighbors(adata); sc.tl.umap(adata)."
    )


def _vmax(values: np.ndarray, vmax: float | str | None) -> float:
    if vmax is None:
        top = float(values.max())
    elif isinstance(vmax, str):
        if not (vmax.startswith("p") and vmax[1:].replace(".", "", 1).isdigit()):
            raise ValueError(f"vmax must be a number, 'pNN' (a percentile) or None; got {vmax!r}.")
        top = float(np.percentile(values, float(vmax[1:])))
    else:
        top = float(vmax)
    return top if top > 0 else 1.0
