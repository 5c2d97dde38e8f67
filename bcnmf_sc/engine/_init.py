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
    pearson: bool = False,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> tuple[torch.Tensor, torch.Tensor]:
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
    pearson
        Assign cells by their Pearson residuals ``(x − x̂) / √x̂`` (for counts: the Poisson noise of a gene
        grows with its expression, and would otherwise decide the clusters); the centres are still sums of
        the plain residuals.
    reduce
        Sum across processes (an all-reduce) of every per-pass total.

    Returns
    -------
    The last pass's centres, unnormalised (a centre that no cell joined keeps its previous value), and the
    number of cells in each cluster.
    """
    centres = start.double().cpu().clone()  # never write into the caller's tensor
    directions = centres.clone()
    n_topics = centres.shape[1]
    if n_topics == 1:
        n_iter = 1
    for _ in range(n_iter):
        unit = (directions / directions.norm(dim=0, keepdim=True).clamp_min(EPS)).to(w_shared)
        sums = torch.zeros((2, *centres.shape), dtype=torch.float64)
        counts = torch.zeros(n_topics, dtype=torch.float64)
        for positions, x in batches():
            batch_sums, batch_counts = _cluster_sums(x, usages[positions], w_shared, unit, pearson=pearson)
            sums += batch_sums.double().cpu()
            counts += batch_counts.double().cpu()
        sums, counts = reduce(sums), reduce(counts)
        joined = sums[0].sum(dim=0) > 0
        centres[:, joined] = sums[0][:, joined]
        directions[:, joined] = sums[1][:, joined]
    return centres, counts


def _cluster_sums(x, u, w, unit, *, pearson: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain and assignment residuals of one batch summed per cluster (2 × genes × clusters), cells per cluster."""
    n_genes, n_topics = unit.shape
    if isinstance(x, SparseBatch):
        tensor, buffer = x.scratch()
        torch.sparse.sampled_addmm(tensor, u, w.T, beta=0.0, out=tensor)  # x̂ at the non-zeros
        xhat = buffer.clamp_min(EPS)
        plain = (x.values - xhat).clamp_min_(0)
        buffer.copy_(plain / xhat.sqrt() if pearson else plain)
        cluster = (tensor @ unit).argmax(dim=1)
        rows = torch.repeat_interleave(torch.arange(x.n_rows, device=buffer.device), torch.diff(x.crow))
        flat = x.col.long() * n_topics + cluster[rows]
        sums = torch.zeros(2, n_genes * n_topics, dtype=buffer.dtype, device=buffer.device)
        sums[0].index_add_(0, flat, plain)
        sums[1].index_add_(0, flat, buffer)
        return sums.view(2, n_genes, n_topics), torch.bincount(cluster, minlength=n_topics)
    xhat = (u @ w.T).clamp_min_(EPS)
    plain = (x - xhat).clamp_min_(0)
    assign = plain / xhat.sqrt() if pearson else plain
    cluster = (assign @ unit).argmax(dim=1)
    onehot = torch.nn.functional.one_hot(cluster, n_topics).to(plain.dtype)
    return torch.stack([plain.T @ onehot, assign.T @ onehot]), onehot.sum(dim=0)
