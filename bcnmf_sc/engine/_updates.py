"""Multiplicative updates and sufficient statistics for one dense batch of cells.

Orientation: a batch ``x`` is cells × genes, usages ``u`` cells × topics, loadings ``w`` genes × topics.
Only the batch is dense; everything W needs from the whole data is a sum over cells of per-batch
statistics (a genes × topics "data term" and a small "model term"), which is what makes minibatches,
out-of-core reading and an all-reduce across processes exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
    x: torch.Tensor, u: torch.Tensor, w: torch.Tensor, *, likelihood: str, n_steps: int, mask: torch.Tensor | None
) -> torch.Tensor:
    """``n_steps`` multiplicative updates of the usages of a batch with the loadings fixed.

    ``mask`` (topics,) zeroes the topics a group may not use (background cells in the shared + target model).
    """
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


def batch_stats(x: torch.Tensor, u: torch.Tensor, w: torch.Tensor, *, likelihood: str) -> SideStats:
    """Per-batch statistics for the W update and the batch's loss."""
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


def batch_loss(x: torch.Tensor, u: torch.Tensor, w: torch.Tensor, *, likelihood: str) -> torch.Tensor:
    """Loss of a batch (no statistics), for held-out evaluation."""
    if likelihood == "poisson":
        xhat = (u @ w.T).clamp_min(EPS)
        return torch.xlogy(x, x / xhat).sum() - x.sum() + xhat.sum()
    diff = x - u @ w.T
    return (diff * diff).sum()


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
