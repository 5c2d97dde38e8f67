"""``pl.stability``: how well each topic reproduces across starts or seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..engine._consensus import MIN_STABILITY, cluster_topics
from ..tl._bcnmf import topic_names
from ._utils import TARGET_COLOR, finish, panels

_KIND_COLORS = {"shared": "0.6", "target": TARGET_COLOR, "contrastive": TARGET_COLOR}


def _per_topic(adata: AnnData, key: str) -> tuple[pd.DataFrame, np.ndarray | None, float, str]:
    """Per-topic ``kind``, ``stability``, ``kept`` and the runs × topics similarities, from any result."""
    result = adata.uns.get(key)
    if not isinstance(result, dict):
        raise KeyError(f"no result under adata.uns[{key!r}]; keys in adata.uns: {list(adata.uns.keys())}.")
    if "consensus" in result and "similarity" in result:  # tl.consensus
        table = result["consensus"]
        threshold = float(result.get("params", {}).get("min_stability", MIN_STABILITY))
        runs = int(result.get("params", {}).get("n_runs", len(result["similarity"])))
        return table, np.asarray(result["similarity"]), threshold, f"consensus of {runs} runs"
    if "table" in result and "recommended" in result:  # tl.bcnmf_sweep
        if result.get("loadings") is None:
            raise ValueError(f"the sweep under {key!r} recommended no setting: no topics to show.")
        threshold = float(result.get("params", {}).get("min_stability", MIN_STABILITY))
        kinds = np.asarray(result["kinds"], dtype=str)
        runs = [np.asarray(w) for w in result["loadings"]]
        if len(runs) < 2:
            raise ValueError("the recommended setting has a single successful seed: stability is undefined.")
        clusters = cluster_topics(runs, kinds=kinds)
        table = pd.DataFrame(
            {"kind": kinds, "stability": clusters.stability, "kept": clusters.stability >= threshold},
            index=pd.Index(topic_names(kinds), name="topic"),
        )
        return table, clusters.similarity, threshold, f"recommended setting, {len(runs)} seeds"
    if "enrichment" in result:  # tl.bcnmf
        enrichment = result["enrichment"]
        if "stability" not in enrichment or not np.isfinite(enrichment["stability"].to_numpy(dtype=float)).any():
            raise ValueError(f"the fit under {key!r} has no stability (fit with n_starts > 1).")
        table = pd.DataFrame(
            {
                "kind": enrichment["kind"].astype(str),
                "stability": enrichment["stability"],
                "kept": enrichment["stability"] >= MIN_STABILITY,
            },
            index=enrichment.index,
        )
        runs = int(result.get("params", {}).get("n_starts", 0))
        return table, None, MIN_STABILITY, f"best start vs {runs - 1} other starts"
    raise KeyError(f"adata.uns[{key!r}] is not a tl.bcnmf, tl.consensus or tl.bcnmf_sweep result.")


def stability(
    adata: AnnData,
    *,
    key: str = "bcnmf_consensus",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Stability of every topic across starts or seeds.

    Bars give each topic's stability (mean pairwise cosine similarity of its matched copies across runs),
    coloured by kind (grey: shared, red: target or contrastive); hatched bars are below the stability
    threshold (dropped by :func:`bcnmf_sc.tl.consensus`, flagged by :func:`bcnmf_sc.tl.bcnmf_sweep`), drawn
    as a dashed line. Dots show each run's copy's cosine similarity to the consensus topic, when known.

    Parameters
    ----------
    adata
        AnnData with a :func:`bcnmf_sc.tl.consensus` result, a :func:`bcnmf_sc.tl.bcnmf_sweep` result (the
        seeds of the recommended setting are clustered) or a :func:`bcnmf_sc.tl.bcnmf` fit with
        ``n_starts > 1`` (the engine's per-topic stability).
    key
        Key of the result in ``adata.uns``.
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
    table, similarity, threshold, origin = _per_topic(adata, key)
    n = len(table)
    fig, axes = panels(1, ax=ax, panel_size=(max(3.5, 0.55 * n + 1.5), 3.4))
    panel = axes[0]
    kinds = table["kind"].astype(str).to_numpy()
    values = table["stability"].to_numpy(dtype=float)
    kept = table["kept"].to_numpy(dtype=bool)
    positions = np.arange(n)
    colors = [_KIND_COLORS.get(kind, "0.3") for kind in kinds]
    bars = panel.bar(
        positions, np.nan_to_num(values), color=colors, edgecolor="black", linewidth=0.6, alpha=0.85, zorder=2
    )
    for bar, keep in zip(bars, kept):
        if not keep:
            bar.set_hatch("///")
            bar.set_alpha(0.4)
    if similarity is not None:
        rng = np.random.default_rng(0)
        for topic in range(n):
            sims = similarity[:, topic]
            jitter = rng.uniform(-0.18, 0.18, len(sims))
            panel.scatter(topic + jitter, sims, s=12, color="black", alpha=0.7, zorder=3)
    panel.axhline(threshold, color="0.3", linestyle="--", linewidth=1, zorder=1)
    low = min(0.0, float(np.nanmin(similarity)) if similarity is not None else 0.0)
    panel.set_ylim(low, 1.05)
    panel.set_xticks(positions, list(table.index), rotation=45, ha="right", fontsize=8)
    panel.set_ylabel("stability (cosine similarity)")
    panel.set_title(f"{key}: topic stability ({origin})", fontsize=10)
    legend = [Patch(color=_KIND_COLORS[k], label=k) for k in dict.fromkeys(kinds) if k in _KIND_COLORS]
    legend.append(Patch(facecolor="white", edgecolor="black", hatch="///", label=f"below {threshold:g}"))
    panel.legend(handles=legend, frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    panel.spines[["top", "right"]].set_visible(False)
    return finish(fig, axes, show=show, save=save, return_fig=return_fig)
