"""Selecting target and background cells, genes and the data matrix of an AnnData (shared by ``tl``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ..engine import RowSource


@dataclass
class Groups:
    """Row indices of target, background and other cells (sorted ascending)."""

    target: np.ndarray
    background: np.ndarray
    other: np.ndarray


def _as_levels(values: Any) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, pd.Index, set)):
        return [values]
    return list(values)


def resolve_groups(adata: AnnData, *, background_key: str, background: Any | None, target: Any | None) -> Groups:
    """Target, background and other cells from ``adata.obs[background_key]``.

    ``background`` is one value or a list of values of the column; it may be omitted for a boolean
    column (True marks background). All other cells are target unless ``target`` narrows them.
    """
    if background_key not in adata.obs.columns:
        raise KeyError(
            f"background_key={background_key!r} is not a column of adata.obs; available columns: "
            f"{list(adata.obs.columns)}."
        )
    column = adata.obs[background_key]
    if column.isna().any():
        raise ValueError(f"adata.obs[{background_key!r}] has missing values; fill or drop them first.")
    if background is None:
        if not pd.api.types.is_bool_dtype(column):
            raise ValueError(
                f"background=None needs a boolean column (True marks background), but adata.obs[{background_key!r}] "
                f"has dtype {column.dtype}; pass background=<level> (levels: {_levels_text(column)})."
            )
        is_background = column.to_numpy(dtype=bool)
    else:
        is_background = _member(column, _as_levels(background), background_key)
    if target is None:
        is_target = ~is_background
    else:
        is_target = _member(column, _as_levels(target), background_key)
        overlap = is_target & is_background
        if overlap.any():
            raise ValueError(f"{int(overlap.sum())} cells are both target and background; the levels must differ.")
    if not is_background.any():
        raise ValueError(f"the background group is empty (background={background!r}).")
    if not is_target.any():
        raise ValueError("the target group is empty: every cell is background." if target is None
                         else f"the target group is empty (target={target!r}).")
    other = ~(is_target | is_background)
    return Groups(np.flatnonzero(is_target), np.flatnonzero(is_background), np.flatnonzero(other))


def _levels_text(column: pd.Series) -> str:
    levels = column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) else pd.unique(column)
    return ", ".join(repr(level) for level in list(levels)[:30])


def _member(column: pd.Series, levels: list, key: str) -> np.ndarray:
    present = set(pd.unique(column.astype(object)))
    if isinstance(column.dtype, pd.CategoricalDtype):  # an unused category is a level with no cells
        present |= set(column.cat.categories)
    missing = [level for level in levels if level not in present]
    if missing:
        raise ValueError(
            f"{missing!r} {'is' if len(missing) == 1 else 'are'} not a level of adata.obs[{key!r}]; "
            f"levels present: {_levels_text(column)}."
        )
    return column.astype(object).isin(levels).to_numpy()


def resolve_genes(adata: AnnData, mask_var: str | np.ndarray | Sequence[bool] | None) -> np.ndarray:
    """Indices of the genes to fit: ``mask_var`` as a ``var`` column name or boolean mask; all genes if None."""
    if mask_var is None:
        return np.arange(adata.n_vars)
    if isinstance(mask_var, str):
        if mask_var not in adata.var.columns:
            raise KeyError(
                f"mask_var={mask_var!r} is not a column of adata.var; available columns: {list(adata.var.columns)}."
            )
        mask = adata.var[mask_var].to_numpy()
    else:
        mask = np.asarray(mask_var)
    if mask.dtype != bool or mask.shape != (adata.n_vars,):
        raise ValueError(
            f"mask_var must be a boolean mask over the {adata.n_vars} genes (or a var column of booleans)."
        )
    if not mask.any():
        raise ValueError("mask_var selects no genes.")
    return np.flatnonzero(mask)


def default_mask_var(adata: AnnData) -> str | None:
    """scanpy's convention: use ``var['highly_variable']`` when present."""
    return "highly_variable" if "highly_variable" in adata.var.columns else None


def data_matrix(adata: AnnData, layer: str | None):
    """The matrix to fit: ``adata.layers[layer]`` or ``adata.X`` (a backed dataset when ``adata`` is backed)."""
    if layer is not None:
        if layer not in adata.layers:
            raise KeyError(f"layer={layer!r} is not in adata.layers; available: {list(adata.layers.keys())}.")
        return adata.layers[layer]
    if adata.X is None:
        raise ValueError("adata.X is empty; pass layer=... naming the counts.")
    return adata.X


def source(matrix, rows: np.ndarray, cols: np.ndarray, *, name: str) -> RowSource:
    """A :class:`RowSource` over the given cells and genes (no copy of the matrix)."""
    n_rows, n_cols = matrix.shape
    return RowSource(
        matrix,
        rows=None if np.array_equal(rows, np.arange(n_rows)) else rows,
        cols=None if np.array_equal(cols, np.arange(n_cols)) else cols,
        name=name,
    )
