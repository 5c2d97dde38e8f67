"""``pl.sweep``: the diagnostic map of a ``tl.bcnmf_sweep``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ._utils import finish, panels

_METRICS = {  # column: (title, threshold parameter, lower is better)
    "target_excess": ("held-out target loss − best, per seed", None, True),
    "background_excess": ("held-out background loss − best, per seed", None, True),
    "target_loss": ("held-out target loss / cell", None, True),
    "background_loss": ("held-out background loss / cell", None, True),
    "leakage": ("leakage of target topics (max)", "max_leakage", True),
    "stability_min": ("stability of target topics (min)", "min_stability", False),
    "stability": ("stability of target topics (mean)", "min_stability", False),
    "auroc": ("AUROC of target topics (mean)", None, False),
    "n_enriched": ("enriched target topics", None, False),
}
_FATAL = ("unsafe", "collapsed")


def sweep_result(adata: AnnData, key: str) -> dict[str, Any]:
    """``adata.uns[key]`` of a ``tl.bcnmf_sweep``, with a clear error when it is missing."""
    result = adata.uns.get(key)
    if not isinstance(result, dict) or "table" not in result or "recommended" not in result:
        raise KeyError(
            f"no bcnmf_sweep result under key {key!r}: run bcnmf_sc.tl.bcnmf_sweep(adata, ..., key_added={key!r}) "
            f"first (keys in adata.uns: {list(adata.uns.keys())})."
        )
    return result


def sweep(
    adata: AnnData,
    *,
    key: str = "bcnmf_sweep",
    metrics: str | Sequence[str] = ("target_excess", "background_excess", "leakage", "stability_min"),
    ncols: int = 4,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Figure | Axes | list[Axes] | None:
    """Diagnostic map of a sweep: held-out measures of every setting, flags and the recommendation.

    One panel per measure; by default the held-out target and background losses minus the best setting's on
    the same seed (what the selection rule compares; symmetric-log axis, linear within 1 % of the loss),
    the leakage of the target topics and their minimum stability across seeds. The x axis is α (contrastive
    model, equally spaced) or the number of topics (shared + target model); one line per number of topics
    (contrastive) or of target topics (shared + target). Losses carry their standard error over seeds. Acceptable settings are filled circles,
    flagged ones hollow; settings that were unsafe or collapsed have no value and are marked by a red ×
    at the bottom of each panel. The recommended setting is ringed with a large black star, the
    settings within one standard error of the best loss with a thin grey ring, and
    the thresholds of the ``leaky`` and ``unstable`` flags are drawn as dashed lines.

    Parameters
    ----------
    adata
        AnnData with a :func:`bcnmf_sc.tl.bcnmf_sweep` result.
    key
        The ``key_added`` of the sweep.
    metrics
        Columns of the sweep table to draw, one panel each: ``target_excess``, ``background_excess``,
        ``target_loss``, ``background_loss``, ``leakage``, ``stability_min``, ``stability``, ``auroc``,
        ``n_enriched``.
    ncols
        Panels per row.
    ax
        Axes to draw into (only with a single metric).
    show
        Show the figure; ``None`` shows it in interactive mode and in notebooks, never in scripts.
    save
        Write the figure to this path (format from the suffix, PNG when it has none).
    return_fig
        Return the figure instead of the axes.

    Returns
    -------
    The figure when ``return_fig``, else the axes (one or a list) when ``show`` is false, else ``None``.
    """
    result = sweep_result(adata, key)
    table: pd.DataFrame = result["table"]
    params = result.get("params", {})
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in _METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(_METRICS)}.")
    contrastive = str(table["model"].iloc[0]) == "contrastive"
    if contrastive:
        x_values = np.sort(table["alpha"].unique())
        x_of = {value: i for i, value in enumerate(x_values)}
        x = table["alpha"].map(x_of).to_numpy(dtype=float)
        hue, x_label, hue_label = "n_topics", "α", "K"
    else:
        x = table["n_topics"].to_numpy(dtype=float)
        hue, x_label, hue_label = "n_target_topics", "number of topics K", "target topics"
    hues = np.sort(table[hue].unique())
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(hues), 1)))
    flags = table["flags"].astype(str).str.split(",").apply(lambda f: {v for v in f if v})
    fatal = flags.apply(lambda f: bool(f & set(_FATAL))).to_numpy()
    acceptable = table["acceptable"].to_numpy(dtype=bool)
    recommended = table["recommended"].to_numpy(dtype=bool)
    within = table["within_1se"].to_numpy(dtype=bool) if "within_1se" in table else np.zeros(len(table), bool)

    fig, axes = panels(len(metrics), ax=ax, ncols=ncols, panel_size=(4.2, 3.4))
    for panel, metric in zip(axes, metrics):
        title, threshold, _ = _METRICS[metric]
        values = table[metric].to_numpy(dtype=float)
        errors = table[f"{metric}_se"].to_numpy(dtype=float) if f"{metric}_se" in table else None
        for color, level in zip(colors, hues):
            rows = np.flatnonzero((table[hue] == level).to_numpy() & np.isfinite(values))
            rows = rows[np.argsort(x[rows])]
            if len(rows) == 0:
                continue
            panel.plot(x[rows], values[rows], "-", color=color, linewidth=1.3, alpha=0.8, zorder=2)
            if errors is not None:
                panel.errorbar(
                    x[rows],
                    values[rows],
                    yerr=errors[rows],
                    fmt="none",
                    ecolor=color,
                    elinewidth=1,
                    capsize=2,
                    zorder=2,
                )
            good, bad = rows[acceptable[rows]], rows[~acceptable[rows]]
            panel.scatter(x[good], values[good], s=36, color=color, edgecolor=color, zorder=3)
            panel.scatter(x[bad], values[bad], s=36, facecolor="white", edgecolor=color, linewidth=1.4, zorder=3)
        ring = np.flatnonzero(within & ~recommended & np.isfinite(values))
        panel.scatter(x[ring], values[ring], s=110, facecolor="none", edgecolor="0.55", linewidth=1, zorder=4)
        star = np.flatnonzero(recommended & np.isfinite(values))
        panel.scatter(
            x[star], values[star], s=260, marker="*", facecolor="none", edgecolor="black", linewidth=1.4, zorder=5
        )
        if threshold is not None and threshold in params:
            panel.axhline(float(params[threshold]), color="0.4", linestyle="--", linewidth=1, zorder=1)
        dead = np.flatnonzero(fatal)
        if len(dead):
            panel.scatter(
                x[dead],
                np.zeros(len(dead)),
                transform=panel.get_xaxis_transform(),
                marker="x",
                s=50,
                color="#d62728",
                clip_on=False,
                zorder=5,
            )
        if metric.endswith("_loss") and np.all(values[np.isfinite(values)] > 0) and _spread(values) > 10:
            panel.set_yscale("log")
        elif metric.endswith("_excess") and np.nanmax(np.r_[values, 0.0]) > 0:
            # excess losses span from 0 (the best) to orders of magnitude (a wrong model): linear near 0
            loss = table[metric.replace("_excess", "_loss")].to_numpy(dtype=float)
            panel.set_yscale("symlog", linthresh=max(1e-2 * float(np.nanmedian(loss)), 1e-12), linscale=1.0)
        if contrastive:
            panel.set_xticks(range(len(x_values)), [f"{v:g}" for v in x_values])
        else:
            panel.set_xticks(np.unique(x))
        panel.set_xlabel(x_label)
        panel.set_title(title, fontsize=10)
        panel.spines[["top", "right"]].set_visible(False)

    handles = [
        Line2D([], [], color=c, marker="o", label=f"{hue_label} = {int(h) if float(h).is_integer() else h}")
        for c, h in zip(colors, hues)
    ]
    handles += [
        Line2D([], [], linestyle="", marker="o", markerfacecolor="white", markeredgecolor="0.3", label="flagged"),
        Line2D([], [], linestyle="", marker="x", color="#d62728", label="unsafe / collapsed"),
        Line2D(
            [],
            [],
            linestyle="",
            marker="o",
            markersize=10,
            markerfacecolor="none",
            markeredgecolor="0.55",
            label="within 1 SE",
        ),
        Line2D(
            [],
            [],
            linestyle="",
            marker="*",
            markersize=13,
            markerfacecolor="none",
            markeredgecolor="black",
            label="recommended",
        ),
    ]
    axes[-1].legend(handles=handles, frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    rec = result.get("recommended")
    if rec is not None and ax is None:
        chosen = f"α = {rec['alpha']:g}" if contrastive else f"{rec['n_target_topics']} target topics"
        flagged = table.loc[recommended, "flags"].astype(str).tolist()
        note = f" (flagged: {flagged[0]}; no setting passed every check)" if flagged and flagged[0] else ""
        fig.suptitle(f"{key}: recommended K = {rec['n_topics']}, {chosen}{note}", fontsize=11)
    return finish(fig, axes, show=show, save=save, return_fig=return_fig)


def _spread(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    if len(finite) == 0 or finite.min() <= 0:
        return 1.0
    return float(finite.max() / finite.min())
