"""``pl.history``: the training history of a fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._utils import BACKGROUND_COLOR, TARGET_COLOR, finish, fitted, panels

_CURVES = {  # column: (label, colour, style)
    "objective": ("objective", "black", "-"),
    "target_loss": ("target loss", TARGET_COLOR, "--"),
    "background_loss": ("background loss", BACKGROUND_COLOR, "--"),
}


def history(
    adata: AnnData,
    *,
    key: str = "bcnmf",
    log: bool | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Objective, target loss and background loss (per cell) of every epoch of the kept start.

    The stages of the fit (e.g. ``background``: the shared topics fitted to the background alone,
    then ``fit``) are shaded and labelled; the last epoch is marked when the fit converged.

    Parameters
    ----------
    adata
        AnnData fitted with :func:`bcnmf_sc.tl.bcnmf`.
    key
        The ``key_added`` of the fit.
    log
        Logarithmic loss axis; default when every value is positive (the contrastive objective,
        target loss minus α times background loss, can be negative).
    ax
        Axes to draw into.
    show
        Show the figure; ``None`` shows it in interactive mode and in notebooks, never in scripts.
    save
        Write the figure to this path (format from the suffix, PNG when it has none).
    return_fig
        Return the figure instead of the axes.

    Returns
    -------
    The figure when ``return_fig``, else the axes when ``show`` is false, else ``None``.
    """
    result = fitted(adata, key)
    table = result["history"]
    if len(table) == 0:
        raise ValueError(f"adata.uns[{key!r}]['history'] is empty: nothing to plot.")
    fig, axes = panels(1, ax=ax, panel_size=(6.0, 3.8))
    panel = axes[0]
    epochs = table["epoch"].to_numpy()
    plotted = []
    for column, (label, color, style) in _CURVES.items():
        if column in table:
            values = table[column].to_numpy(dtype=float)
            if np.isfinite(values).any():
                panel.plot(epochs, values, style, color=color, label=label, linewidth=1.6)
                plotted.append(values[np.isfinite(values)])
    values = np.concatenate(plotted) if plotted else np.array([1.0])
    if log is None:
        log = bool(np.all(values > 0))
    if log:
        panel.set_yscale("log")

    staged = "stage" in table and _mark_stages(panel, epochs, table["stage"].astype(str).to_numpy())
    params = result.get("params", {})
    converged = bool(params.get("converged", False))
    panel.set_title(
        f"{key}: {len(table)} epochs, " + ("converged" if converged else "stopped at max_epochs"),
        fontsize=10,
        pad=16 if staged else 6,  # room for the stage names
    )
    panel.set_xlabel("epoch")
    panel.set_ylabel("loss per cell")
    panel.legend(frameon=False, fontsize=8, loc="best")
    panel.spines[["top", "right"]].set_visible(False)
    return finish(fig, axes, show=show, save=save, return_fig=return_fig)


def _mark_stages(ax: Axes, epochs: np.ndarray, stages: np.ndarray) -> bool:
    """Shade every other stage, draw a line at each boundary and name the stages above the axes.

    Returns whether anything was marked (a single stage is not).
    """
    starts = np.flatnonzero(np.r_[True, stages[1:] != stages[:-1]])
    ends = np.r_[starts[1:], len(stages)]
    if len(starts) == 1:
        return False
    for i, (start, end) in enumerate(zip(starts, ends)):
        left = epochs[start] - 0.5
        right = epochs[end - 1] + 0.5
        if i % 2 == 0:
            ax.axvspan(left, right, color="0.93", zorder=0)
        if i > 0:
            ax.axvline(left, color="0.5", linestyle=":", linewidth=1)
        ax.text(
            (left + right) / 2,
            1.01,
            stages[start],
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
            color="0.35",
        )
    return True
