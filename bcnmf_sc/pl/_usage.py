"""``pl.usage``: topic usage of target versus background cells, with the enrichment statistics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..tl._groups import resolve_groups
from ._utils import BACKGROUND_COLOR, TARGET_COLOR, finish, fitted, panels, select_topics, topic_title


def usage(
    adata: AnnData,
    *,
    key: str = "bcnmf",
    topics: str | int | Sequence[str | int] | None = None,
    log: bool = True,
    ncols: int = 5,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Figure | Axes | list[Axes] | None:
    """Usage of each topic in background and target cells, annotated with its enrichment statistics.

    One panel per topic: violins (with the quartiles) of the usage of background and target cells, as
    fitted by :func:`bcnmf_sc.tl.bcnmf` (the groups are rebuilt from the ``background_key``,
    ``background`` and ``target`` stored in ``adata.uns[key]["params"]``), and the topic's log2 fold
    change, AUROC, active share, background-leakage share and permutation p-value from ``adata.uns[key]["enrichment"]``.
    A ★ marks topics flagged ``enriched``.

    Parameters
    ----------
    adata
        AnnData fitted with :func:`bcnmf_sc.tl.bcnmf`.
    key
        The ``key_added`` of the fit.
    topics
        Topic names or column indices; default all topics, target-enriched ones first.
    log
        Plot ``log1p(usage)``: usages are counts with long tails.
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
    result = fitted(adata, key)
    params = result["params"]
    enrichment = result["enrichment"]
    columns = select_topics(adata, key, topics)
    groups = resolve_groups(
        adata,
        background_key=params["background_key"],
        background=params.get("background"),
        target=params.get("target"),
    )
    column_values = adata.obs[params["background_key"]]
    labels = [
        _group_label("background", column_values.iloc[groups.background]),
        _group_label("target", column_values.iloc[groups.target]),
    ]
    usages = np.asarray(adata.obsm[key])

    fig, axes = panels(len(columns), ax=ax, ncols=ncols, panel_size=(2.9, 3.4))
    for panel, column in zip(axes, columns):
        values = [usages[groups.background, column], usages[groups.target, column]]
        if log:
            values = [np.log1p(v) for v in values]
        _violins(panel, values, [BACKGROUND_COLOR, TARGET_COLOR])
        panel.set_xticks([1, 2], labels)
        panel.set_ylabel("usage (log1p)" if log else "usage")
        panel.set_title(topic_title(enrichment, column), fontsize=10)
        row = enrichment.iloc[column]
        panel.text(
            0.03,
            0.97,
            f"AUROC {row['auroc']:.2f}\nactive {row['active_share']:.2f}\nleakage {row['leakage']:.2f}\n"
            f"p {_pvalue(row['pval'])}",
            transform=panel.transAxes,
            va="top",
            ha="left",
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "0.8", "alpha": 0.9},
        )
        low, high = panel.get_ylim()
        panel.set_ylim(low, high + 0.35 * (high - low))  # room for the statistics
        panel.spines[["top", "right"]].set_visible(False)
    return finish(fig, axes, show=show, save=save, return_fig=return_fig)


def _violins(ax: Axes, values: list[np.ndarray], colors: list[str]) -> None:
    """A violin per group (skipped when the group is constant) with its quartile bar and median."""
    for position, v, color in zip(range(1, len(values) + 1), values, colors):
        if len(v) > 1 and np.ptp(v) > 0:
            (body,) = ax.violinplot([v], positions=[position], showextrema=False, widths=0.8)["bodies"]
            body.set_facecolor(color)
            body.set_edgecolor(color)
            body.set_alpha(0.45)
        q1, median, q3 = np.percentile(v, [25, 50, 75])
        ax.vlines(position, q1, q3, color=color, linewidth=5)
        ax.scatter([position], [median], color="white", edgecolor=color, s=22, zorder=3)


def _group_label(name: str, values) -> str:
    """The group name over the levels of its cells (their count when the text is long)."""
    levels = list(dict.fromkeys(values.astype(str)))
    text = ", ".join(levels)
    return f"{name}\n({text})" if len(text) <= 18 else f"{name}\n({len(levels)} levels)"


def _pvalue(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"
