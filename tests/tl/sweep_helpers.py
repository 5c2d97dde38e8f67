"""Small data for the sweep and consensus tests (``from .sweep_helpers import ...``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData


def programs_adata(
    random_state: int = 0,
    *,
    n_cells: int = 150,
    n_shared: int = 3,
    n_target: int = 2,
    shared_genes: int = 30,
    target_genes: int = 15,
    target_strength: float = 0.1,
) -> AnnData:
    """Poisson counts with ``n_shared`` shared and ``n_target`` target programs on disjoint gene blocks.

    Every cell has one dominant shared program (plus a little of each); each target cell also carries one
    target program (``obs["subtype"]`` ``T0``/``T1``…), at ``target_strength`` times the shared scale. The
    right shared + target model has ``n_shared + n_target`` topics of which ``n_target`` are target topics;
    with fewer shared topics the target topics must absorb shared programs.
    """
    rng = np.random.default_rng(random_state)
    n_genes = n_shared * shared_genes + n_target * target_genes + 30
    w = rng.gamma(0.5, 0.02, size=(n_genes, n_shared + n_target))
    for k in range(n_shared):
        w[k * shared_genes : (k + 1) * shared_genes, k] += rng.gamma(2.0, 1.0, shared_genes)
    start = n_shared * shared_genes
    for j in range(n_target):
        w[start + j * target_genes : start + (j + 1) * target_genes, n_shared + j] += rng.gamma(2.0, 1.0, target_genes)
    w /= w.sum(axis=0)

    def cells(n: int, target: bool) -> tuple[np.ndarray, np.ndarray]:
        u = np.zeros((n, n_shared + n_target))
        u[np.arange(n), rng.integers(0, n_shared, n)] = rng.gamma(20.0, 10.0, n)
        u[:, :n_shared] += rng.gamma(1.0, 10.0, (n, n_shared))
        subtype = np.full(n, -1)
        if target:
            subtype = np.arange(n) % n_target
            u[np.arange(n), n_shared + subtype] = target_strength * rng.gamma(20.0, 10.0, n)
        return rng.poisson(u @ w.T), subtype

    x_t, subtype = cells(n_cells, True)
    x_b, _ = cells(n_cells, False)
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(["target"] * n_cells + ["background"] * n_cells),
            "subtype": pd.Categorical([f"T{s}" for s in subtype] + ["none"] * n_cells),
        },
        index=[f"cell_{i}" for i in range(2 * n_cells)],
    )
    var = pd.DataFrame(index=[f"gene_{i}" for i in range(n_genes)])
    return AnnData(sp.csr_matrix(np.vstack([x_t, x_b]).astype(np.float32)), obs=obs, var=var)


def log_normalised(adata: AnnData) -> AnnData:
    """The same cells as log1p of counts per 100 (continuous, for the Gaussian likelihood)."""
    x = adata.X.toarray()
    out = adata.copy()
    out.X = np.log1p(100.0 * x / np.maximum(x.sum(axis=1, keepdims=True), 1.0)).astype(np.float32)
    return out
