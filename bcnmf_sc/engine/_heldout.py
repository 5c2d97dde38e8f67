"""Usages and reconstruction loss of cells under fixed loadings (held-out evaluation, consensus refits).

Two quantities the model-selection tools need and that do not depend on a fitted :class:`BCNMF`:

* :func:`solve_usages` — usages of cells with the loadings fixed, optionally restricted to some topics
  (background cells in the shared + target model may only use the shared topics);
* :func:`heldout_loss` — a *bi-cross-validated* loss per cell: the genes are split into folds, the usages
  of each cell are solved on the genes outside a fold and the loss is measured on the genes inside it.
  Because no usage ever sees the genes it is scored on, adding topics that only fit noise makes this loss
  worse, not better, unlike the loss of usages solved on all genes (which only falls as topics are added).

Cells are read one batch at a time from a :class:`~bcnmf_sc.engine.RowSource`, so memory stays at one
dense batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._batches import BatchPlan, SparseBatch
from ._device import resolve_device
from ._source import as_source
from ._updates import EPS, batch_loss, update_usages


def solve_batch(
    x, w: torch.Tensor, mask: torch.Tensor | None, *, likelihood: str, max_steps: int, tol: float
) -> torch.Tensor:
    """Usages of a batch ``x`` (cells × genes, dense or sparse) with loadings ``w`` (genes × topics) fixed.

    Each cell stops on its own relative change (below ``tol``, checked every 10 updates) or after
    ``max_steps`` updates: a batch-wide criterion would make a cell's usages depend on which cells share
    its batch, i.e. on ``batch_size`` and on how the cells were grouped. Cells are independent given
    ``w``, so the finished ones are dropped from the batch as they stop (no work is spent on them).
    """
    k = w.shape[1]
    col_sums = w.sum(dim=0).mean().clamp_min(EPS)
    u = (x.sum(dim=1, keepdim=True).clamp_min(1e-6) / (k * col_sums)).expand(-1, k).clone()
    if mask is not None:
        u = u * mask
    active = torch.arange(u.shape[0], device=u.device)  # rows of u still updating
    x_active, u_active = x, u
    for _ in range(0, max_steps, 10):
        new_u = update_usages(x_active, u_active, w, likelihood=likelihood, n_steps=10, mask=mask)
        change = (new_u - u_active).abs().sum(dim=1) / u_active.abs().sum(dim=1).clamp_min(1e-30)
        running = change >= tol
        u[active] = new_u
        if not bool(running.any()):
            break
        if bool(running.all()):
            u_active = new_u
            continue
        keep = running.nonzero().squeeze(1)
        active, u_active = active[keep], new_u[keep]
        x_active = x_active.take_rows(keep) if isinstance(x_active, SparseBatch) else x_active[keep]
    return u


def _prepare(data, loadings: np.ndarray, topics: np.ndarray | None, device, dtype):
    source = as_source(data, name="data")
    loadings = np.asarray(loadings, dtype=np.float64)
    if loadings.ndim != 2 or loadings.shape[0] != source.n_cols:
        raise ValueError(f"loadings must be genes × topics with {source.n_cols} rows, got shape {loadings.shape}.")
    if not np.all(np.isfinite(loadings)) or np.any(loadings < 0):
        raise ValueError("loadings must be finite and non-negative.")
    device = resolve_device(device)
    w = torch.from_numpy(loadings).to(device, dtype)
    mask = None
    if topics is not None:
        allowed = np.asarray(topics, dtype=bool)
        if allowed.shape != (loadings.shape[1],) or not allowed.any():
            raise ValueError("topics must be a boolean mask over the topics that selects at least one.")
        mask = torch.from_numpy(allowed.astype(np.float64)).to(device, dtype)
    return source, w, mask, device


def solve_usages(
    data,
    loadings: np.ndarray,
    *,
    likelihood: str,
    topics: np.ndarray | None = None,
    batch_size: int = 2048,
    max_steps: int = 200,
    tol: float = 1e-5,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    sparse: bool | None = None,
) -> np.ndarray:
    """Usages (cells × topics) of the cells of ``data`` with ``loadings`` (genes × topics) fixed.

    ``topics`` (boolean, one per topic) restricts the cells to some topics; the others get usage 0.
    Multiplicative updates run until each cell's relative change falls below ``tol`` or ``max_steps``
    updates (see :func:`solve_batch`). Sparse data are solved on their non-zeros (``sparse``: default for
    sparse input), one batch at a time.
    """
    source, w, mask, device = _prepare(data, loadings, topics, device, dtype)
    usages = np.zeros((source.n_rows, w.shape[1]))
    plan = BatchPlan(source, math.ceil(source.n_rows / batch_size), device=device, dtype=dtype,
                     sparse=source.is_sparse if sparse is None else sparse, transpose=False, cache=False)
    for positions, x in plan.epoch():
        u = solve_batch(x, w, mask, likelihood=likelihood, max_steps=max_steps, tol=tol)
        usages[positions] = u.double().cpu().numpy()
    if mask is not None:
        usages[:, ~np.asarray(topics, dtype=bool)] = 0.0
    return usages


def gene_folds(n_genes: int, n_folds: int, random_state: int) -> np.ndarray:
    """Fold label (0 … n_folds − 1) of each gene, balanced, in a seeded random order."""
    if n_folds < 2 or n_folds > n_genes:
        raise ValueError(f"n_folds must be between 2 and the number of genes ({n_genes}), got {n_folds}.")
    rng = np.random.default_rng(random_state)
    return rng.permutation(np.arange(n_genes) % n_folds)


def heldout_loss(
    data,
    loadings: np.ndarray,
    *,
    likelihood: str,
    topics: np.ndarray | None = None,
    n_folds: int = 2,
    random_state: int = 0,
    batch_size: int = 2048,
    max_steps: int = 200,
    tol: float = 1e-5,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """Bi-cross-validated loss per cell of ``data`` under fixed ``loadings``.

    Genes are split into ``n_folds`` seeded folds. For each fold, every cell's usages are solved on the
    genes outside the fold (``topics`` as in :func:`solve_usages`) and the loss (generalised KL for
    ``"poisson"``, squared error for ``"gaussian"``) is summed over the genes inside it. Returns the total
    over folds divided by the number of cells.
    """
    source, w, mask, device = _prepare(data, loadings, topics, device, dtype)
    folds = torch.from_numpy(gene_folds(source.n_cols, n_folds, random_state)).to(device)
    total = 0.0
    for positions in source.batches(max(1, math.ceil(source.n_rows / batch_size))):
        x = torch.from_numpy(source.read(positions)).to(device, dtype)
        for fold in range(n_folds):
            inside = folds == fold
            u = solve_batch(x[:, ~inside], w[~inside], mask, likelihood=likelihood, max_steps=max_steps, tol=tol)
            total += float(batch_loss(x[:, inside], u, w[inside], likelihood=likelihood))
    return total / max(source.n_rows, 1)
