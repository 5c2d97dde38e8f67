"""Starting loadings of the target topics: clusters of what the shared topics leave unexplained.

After the shared topics have been learned on the background, each target cell's *positive residual*
``max(x − u W_sharedᵀ, 0)`` holds what is specific to it. Starting every target topic from the mean residual
(times noise) makes them nearly identical, and the fit must then break their symmetry on its own; with two
or more target programs that often ends in topics that each mix all of them. Clustering the residuals
first gives each target topic its own part of the target-specific signal to start from.

The clustering is spherical k-means, streamed over batches: a cell joins the centre its residual points to
most (``r · c / ‖c‖``), and a centre becomes the sum of its cells' residuals. Everything it keeps is
genes × topics, each step is a sum over cells (exact under minibatches and an all-reduce across
processes), and for sparse counts the residual is non-zero only where ``x`` is (``x̂ > 0`` everywhere), so
the work is ∝ nnz · K like the fit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ._batches import SparseBatch
from ._updates import EPS

Batches = Callable[[], Iterable[tuple[torch.Tensor, "torch.Tensor | SparseBatch"]]]


def residual_topics(
    batches: Batches,
    usages: torch.Tensor,
    w_shared: torch.Tensor,
    start: torch.Tensor,
    *,
    n_iter: int = 10,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> torch.Tensor:
    """Genes × topics sums of the positive target residuals over clusters of cells (float64, on the CPU).

    Parameters
    ----------
    batches
        Called once per pass; yields ``(positions, x)`` for the target cells.
    usages
        Cells × shared topics usages of the target cells (indexed by ``positions``).
    w_shared
        Genes × shared topics loadings, on the compute device.
    start
        Genes × target topics starting centres (positive; e.g. the mean residual times noise).
    n_iter
        Passes of the k-means iteration.
    reduce
        Sum across processes (an all-reduce) of every per-pass total.

    Returns
    -------
    The last pass's centres, unnormalised; a centre that no cell joined keeps its previous value.
    """
    centres = start.double().cpu()
    n_topics = centres.shape[1]
    if n_topics == 1:
        n_iter = 1
    for _ in range(n_iter):
        direction = (centres / centres.norm(dim=0, keepdim=True).clamp_min(EPS)).to(w_shared)
        sums = torch.zeros(centres.shape, dtype=torch.float64)
        for positions, x in batches():
            sums += _cluster_sums(x, usages[positions], w_shared, direction).double().cpu()
        sums = reduce(sums)
        joined = sums.sum(dim=0) > 0
        centres[:, joined] = sums[:, joined]
    return centres


def _cluster_sums(x, u: torch.Tensor, w: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Residuals of one batch summed per cluster (genes × clusters)."""
    n_genes, n_topics = direction.shape
    if isinstance(x, SparseBatch):
        tensor, buffer = x.scratch()
        torch.sparse.sampled_addmm(tensor, u, w.T, beta=0.0, out=tensor)  # x̂ at the non-zeros
        torch.sub(x.values, buffer, out=buffer).clamp_min_(0)
        cluster = (tensor @ direction).argmax(dim=1)
        rows = torch.repeat_interleave(torch.arange(x.n_rows, device=buffer.device), torch.diff(x.crow))
        flat = x.col.long() * n_topics + cluster[rows]
        sums = torch.zeros(n_genes * n_topics, dtype=buffer.dtype, device=buffer.device)
        return sums.index_add_(0, flat, buffer).view(n_genes, n_topics)
    residual = (x - u @ w.T).clamp_min_(0)
    cluster = (residual @ direction).argmax(dim=1)
    onehot = torch.nn.functional.one_hot(cluster, n_topics).to(residual.dtype)
    return residual.T @ onehot
