"""The plotting contract shared by every ``bcnmf_sc.pl`` function, and access to a fitted result.

Every plot follows scanpy's contract through two helpers:

``panels(n, *, ax, ncols, panel_size)``
    The figure and its axes: the caller's ``ax`` when given (only for a single panel, like
    scanpy), else a new figure with a grid of ``n`` panels (unused grid cells are removed).
``finish(fig, axes, *, show, save, return_fig)``
    Ends a plot: writes ``save`` (a path; its suffix sets the format, ``.png`` when it has none),
    shows the figure when ``show`` is true (``show=None`` shows it only in matplotlib's interactive
    mode or with a notebook backend such as Jupyter's inline one, so scripts and tests never block) and returns the :class:`~matplotlib.figure.Figure` when
    ``return_fig``, else the axes (one :class:`~matplotlib.axes.Axes` or a list) when the figure is
    not shown, else ``None``.

A new plot (``pl/_myplot.py``) is written as::

    def myplot(adata, *, key="bcnmf", ax=None, show=None, save=None, return_fig=False):
        fig, axes = panels(1, ax=ax)
        axes[0].plot(...)
        return finish(fig, axes, show=show, save=save, return_fig=return_fig)

``fitted(adata, key)`` returns ``adata.uns[key]`` with a clear error when ``tl.bcnmf`` has not been
run, and ``select_topics(adata, key, topics)`` resolves a ``topics=`` argument to column indices
(default: all topics, target-enriched ones first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: colours of the two groups in every plot
TARGET_COLOR = "#d62728"
BACKGROUND_COLOR = "#1f77b4"


def panels(
    n: int, *, ax: Axes | None = None, ncols: int = 4, panel_size: tuple[float, float] = (4.0, 3.2)
) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels, or the caller's ``ax`` when given (single panel only)."""
    if ax is not None:
        if n != 1:
            raise ValueError(f"ax= takes a single panel, but this plot draws {n}; select one topic or drop ax.")
        return ax.figure, [ax]
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, grid = plt.subplots(
        nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False, layout="constrained"
    )
    axes = list(grid.ravel())
    for extra in axes[n:]:
        extra.remove()
    return fig, axes[:n]


def finish(
    fig: Figure,
    axes: Sequence[Axes],
    *,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Figure | Axes | list[Axes] | None:
    """Save and/or show ``fig``; return what scanpy's contract asks for (see the module docstring)."""
    if show is None:
        show = interactive()
    if save is not None:
        path = Path(save)
        if not path.suffix:
            path = path.with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    if show:
        plt.show()
    if return_fig:
        return fig
    if show:
        return None
    return axes[0] if len(axes) == 1 else list(axes)


def interactive() -> bool:
    """Whether showing a figure cannot block: matplotlib's interactive mode or a notebook backend."""
    backend = str(mpl.get_backend()).lower()
    return mpl.is_interactive() or any(name in backend for name in ("inline", "nbagg", "ipympl", "widget"))


def fitted(adata: AnnData, key: str) -> dict[str, Any]:
    """``adata.uns[key]`` of a ``tl.bcnmf`` fit, with a clear error when it is missing."""
    result = adata.uns.get(key)
    if not isinstance(result, dict) or "enrichment" not in result or key not in adata.obsm or key not in adata.varm:
        raise KeyError(
            f"no bcNMF result under key {key!r}: run bcnmf_sc.tl.bcnmf(adata, ..., key_added={key!r}) first "
            f"(keys in adata.uns: {list(adata.uns.keys())})."
        )
    return result


def topic_order(enrichment: pd.DataFrame) -> np.ndarray:
    """Column indices of all topics: enriched ones first, then by decreasing log2 fold change."""
    enriched = enrichment["enriched"].to_numpy(dtype=bool)
    log2fc = enrichment["log2fc"].to_numpy(dtype=float)
    return np.lexsort((-log2fc, ~enriched))


def select_topics(adata: AnnData, key: str, topics: str | int | Sequence[str | int] | None) -> np.ndarray:
    """Column indices for ``topics``: names or column indices, one or a list; ``None`` orders all topics."""
    enrichment = fitted(adata, key)["enrichment"]
    if topics is None:
        return topic_order(enrichment)
    names = list(enrichment.index)
    if isinstance(topics, (str, int, np.integer)):
        topics = [topics]
    columns = []
    for topic in topics:
        if isinstance(topic, (int, np.integer)) and not isinstance(topic, bool):
            if not -len(names) <= topic < len(names):
                raise IndexError(f"topic index {topic} is out of range for {len(names)} topics.")
            columns.append(int(topic) % len(names))
        elif topic in names:
            columns.append(names.index(topic))
        else:
            raise KeyError(f"{topic!r} is not a topic of {key!r}; topics: {names}.")
    if not columns:
        raise ValueError("topics= selects no topic.")
    return np.asarray(columns)


def topic_title(enrichment: pd.DataFrame, column: int) -> str:
    """``target_1 · log2FC 6.1`` with a star when the topic is target-enriched."""
    row = enrichment.iloc[column]
    star = " ★" if bool(row["enriched"]) else ""
    return f"{enrichment.index[column]}{star}  (log2FC {row['log2fc']:.1f})"
