"""Multiplicative updates and sufficient statistics for one batch of cells, dense or sparse.

Orientation: a batch ``x`` is cells × genes, usages ``u`` cells × topics, loadings ``w`` genes × topics.
Everything W needs from the whole data is a sum over cells of per-batch statistics (a genes × topics
"data term" and a small "model term"), which is what makes minibatches, out-of-core reading and an
all-reduce across processes exact.

``x`` is either a dense tensor or a :class:`~bcnmf_sc.engine._batches.SparseBatch`. The sparse kernels do
work proportional to nnz · K and never form a cells × genes array:

* Poisson: ``x̂`` only at the non-zeros (``torch.sparse.sampled_addmm``, an SDDMM), the ratio ``x / x̂``
  there, then sparse × dense products ``(x ⊘ x̂) W`` (row-major CSR) and ``(x ⊘ x̂)ᵀ U`` (the transpose's
  CSR); ``Σ x̂`` comes from column sums, ``Σ x log(x / x̂)`` from the non-zeros.
* Gaussian: ``x W`` and ``xᵀ U`` as sparse × dense products and K × K Gram matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._batches import SparseBatch

EPS = 1e-10  # guards divisions only
FLOOR = 1e-20  # MU fixed points at exact zero cannot recover; keep factors strictly positive


@dataclass
class SideStats:
    """Sums over the cells of one group (target or background) seen so far in an epoch."""

    data: torch.Tensor  # genes × topics: (x / x̂)ᵀ u  (Poisson) or xᵀ u  (Gaussian)
    model: torch.Tensor  # topics (Poisson: column sums of u) or topics × topics (Gaussian: uᵀ u)
    loss: torch.Tensor  # scalar, generalised KL or squared error
    n_cells: int

    @classmethod
    def zeros(cls, n_genes: int, n_topics: int, likelihood: str, device, dtype=torch.float64) -> SideStats:
        model_shape = (n_topics,) if likelihood == "poisson" else (n_topics, n_topics)
        return cls(
            torch.zeros(n_genes, n_topics, device=device, dtype=dtype),
            torch.zeros(model_shape, device=device, dtype=dtype),
            torch.zeros((), device=device, dtype=dtype),
            0,
        )

    def add(self, other: SideStats) -> None:
        self.data += other.data.to(self.data.dtype)
        self.model += other.model.to(self.model.dtype)
        self.loss += other.loss.to(self.loss.dtype)
        self.n_cells += other.n_cells


def update_usages(
    x: torch.Tensor | SparseBatch, u: torch.Tensor, w: torch.Tensor, *, likelihood: str, n_steps: int,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """``n_steps`` multiplicative updates of the usages of a batch with the loadings fixed.

    ``mask`` (topics,) zeroes the topics a group may not use (background cells in the shared + target model).
    """
    if isinstance(x, SparseBatch):
        return _update_usages_sparse(x, u, w, likelihood=likelihood, n_steps=n_steps, mask=mask)
    if likelihood == "poisson":
        col_sums = w.sum(dim=0).clamp_min(EPS)
        for _ in range(n_steps):
            ratio = x / (u @ w.T).clamp_min(EPS)
            u = u * (ratio @ w) / col_sums
            u = u.clamp_min(FLOOR)
            if mask is not None:
                u = u * mask
    else:
        xw = x @ w
        gram = w.T @ w
        for _ in range(n_steps):
            u = u * xw / (u @ gram).clamp_min(EPS)
            u = u.clamp_min(FLOOR)
            if mask is not None:
                u = u * mask
    return u


def batch_stats(x: torch.Tensor | SparseBatch, u: torch.Tensor, w: torch.Tensor, *, likelihood: str) -> SideStats:
    """Per-batch statistics for the W update and the batch's loss."""
    if isinstance(x, SparseBatch):
        return _batch_stats_sparse(x, u, w, likelihood=likelihood)
    if likelihood == "poisson":
        xhat = (u @ w.T).clamp_min(EPS)
        ratio = x / xhat
        data = ratio.T @ u
        model = u.sum(dim=0)
        # Σ x log(x / x̂) − x + x̂ ; Σ x̂ = Σ_k colsum(u)_k · colsum(w)_k
        loss = torch.xlogy(x, ratio).sum() - x.sum() + (model * w.sum(dim=0)).sum()
    else:
        data = x.T @ u
        model = u.T @ u
        xw = x @ w
        loss = (x * x).sum() - 2.0 * (u * xw).sum() + (model * (w.T @ w)).sum()
    return SideStats(data, model, loss, x.shape[0])


def batch_loss(x: torch.Tensor | SparseBatch, u: torch.Tensor, w: torch.Tensor, *, likelihood: str) -> torch.Tensor:
    """Loss of a batch (no statistics), for held-out evaluation."""
    if isinstance(x, SparseBatch):
        if likelihood == "poisson":
            ratio = _ratio_at_nonzeros(x, u, w).values()
            return _poisson_loss(x.values, ratio, x.sum_x, u, w)
        xw = x.csr() @ w
        return x.sum_sq - 2.0 * (u * xw).sum() + ((u.T @ u) * (w.T @ w)).sum()
    if likelihood == "poisson":
        xhat = (u @ w.T).clamp_min(EPS)
        return torch.xlogy(x, x / xhat).sum() - x.sum() + xhat.sum()
    diff = x - u @ w.T
    return (diff * diff).sum()


# ------------------------------------------------------------------------------------ sparse kernels
def _ratio_at_nonzeros(x: SparseBatch, u: torch.Tensor, w: torch.Tensor, *, transposed: bool = False) -> torch.Tensor:
    """``x / x̂`` at the non-zeros, row-major (or column-major with ``transposed``); x̂ = u wᵀ by SDDMM.

    Returns the batch's scratch CSR tensor (see :meth:`SparseBatch.scratch`) whose values now hold the ratio.
    """
    tensor, buffer = x.scratch(transposed)
    if transposed:
        torch.sparse.sampled_addmm(tensor, w, u.T, beta=0.0, out=tensor)
        values = x.t_values
    else:
        torch.sparse.sampled_addmm(tensor, u, w.T, beta=0.0, out=tensor)
        values = x.values
    torch.div(values, buffer.clamp_min_(EPS), out=buffer)
    return tensor


def _poisson_loss(values: torch.Tensor, ratio: torch.Tensor, sum_x: float, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ x log(x / x̂) − Σ x + Σ x̂ from the non-zeros (x > 0 there) and column sums."""
    log_ratio = torch.log(ratio)  # ratio > 0: explicit zeros were removed when the batch was prepared
    return torch.dot(values, log_ratio) - sum_x + (u.sum(dim=0) * w.sum(dim=0)).sum()


def _update_usages_sparse(x: SparseBatch, u, w, *, likelihood: str, n_steps: int, mask) -> torch.Tensor:
    if likelihood == "poisson":
        col_sums = w.sum(dim=0).clamp_min(EPS)
        for _ in range(n_steps):
            ratio = _ratio_at_nonzeros(x, u, w)
            u = (u * (ratio @ w) / col_sums).clamp_min_(FLOOR)
            if mask is not None:
                u = u * mask
    else:
        xw = x.csr() @ w
        gram = w.T @ w
        for _ in range(n_steps):
            u = (u * xw / (u @ gram).clamp_min(EPS)).clamp_min_(FLOOR)
            if mask is not None:
                u = u * mask
    return u


def _batch_stats_sparse(x: SparseBatch, u: torch.Tensor, w: torch.Tensor, *, likelihood: str) -> SideStats:
    if likelihood == "poisson":
        ratio = _ratio_at_nonzeros(x, u, w, transposed=True)
        data = ratio @ u
        model = u.sum(dim=0)
        loss = _poisson_loss(x.t_values, ratio.values(), x.sum_x, u, w)
    else:
        data = x.csr_t() @ u
        model = u.T @ u
        xw = x.csr() @ w
        loss = x.sum_sq - 2.0 * (u * xw).sum() + (model * (w.T @ w)).sum()
    return SideStats(data, model, loss, x.n_rows)


def model_term(stats: SideStats, w: torch.Tensor, likelihood: str) -> torch.Tensor:
    """The genes × topics term of the gradient that comes from the reconstruction itself."""
    if likelihood == "poisson":
        return stats.model.to(w.dtype).expand(w.shape[0], -1)
    return w @ stats.model.to(w.dtype)


def split_gradient(
    w: torch.Tensor,
    sides: list[tuple[SideStats, float]],
    likelihood: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and denominator of the multiplicative W update.

    ``sides`` pairs each group's statistics with its signed weight in the objective
    (``1/n_t`` for the target, ``-α/n_b`` for a contrastive background, ``+λ/n_b`` for a shared one).
    A positive weight puts the data term in the numerator and the model term in the denominator;
    a negative weight swaps them.
    """
    numerator = torch.zeros_like(w)
    denominator = torch.zeros_like(w)
    for stats, weight in sides:
        if weight == 0 or stats.n_cells == 0:
            continue
        data = stats.data.to(w.dtype)
        model = model_term(stats, w, likelihood)
        if weight > 0:
            numerator += weight * data
            denominator += weight * model
        else:
            numerator += -weight * model
            denominator += -weight * data
    return numerator, denominator
