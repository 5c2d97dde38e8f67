"""The paper's "β series" simulation (shared programs plus a target-only signal)."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._utils import RandomState, check_positive_int, describe_seed, get_rng

logger = logging.getLogger(__name__)

_N_SHARED = 5
_N_TARGET_PROGRAMS = 2
_SUBTYPES = ("A", "B")


def beta_series(
    *,
    beta: float,
    n_target: int = 1000,
    n_background: int = 1000,
    n_genes: int = 3000,
    shared_block_size: int = 250,
    target_block_size: int = 120,
    random_state: RandomState = 0,
) -> ad.AnnData:
    """Simulate one dataset of the bcNMF paper's β series.

    Five *shared* programs live on disjoint gene blocks of ``shared_block_size`` genes
    (loadings Gamma(shape 2, scale 0.6)); two *target* programs live on the next two blocks of
    ``target_block_size`` genes (Gamma(2, 0.9)). Every gene also gets a small loading in every
    program: Gamma(0.5, 0.01) noise is added to all shared loadings and Gamma(0.5, 0.005) to all
    target loadings. The remaining genes carry no program.

    Each target cell belongs to one of two target subtypes (``"A"``/``"B"``, exactly half each,
    in random order) and to one of the five shared classes (uniform); each background cell
    belongs to one shared class. Expected expression:

    * target: ``0.15 * T[subtype] + 10 * beta * S[class] + 0.02 + 0.01 * g * c``
    * background: ``10 * beta * S[class] + 0.02 + 0.01 * g * c``

    where ``g`` (one value per gene, shared by all cells) and ``c`` (one value per cell) are
    Gamma(1, 1). A per-cell library factor LogNormal(0, 0.35) multiplies the mean and counts
    are Poisson. Larger ``beta`` buries the weak target signal under stronger shared variation;
    ``beta = 0`` leaves only the target signal.

    Parameters
    ----------
    beta
        Strength of the shared (background-like) variation, ``>= 0``. The paper uses
        0, 1, 2, 4, 8 and 16.
    n_target
        Number of target cells (split half/half into the two subtypes; an odd number gives
        subtype ``"A"`` one cell more).
    n_background
        Number of background cells.
    n_genes
        Number of genes; at least ``5 * shared_block_size + 2 * target_block_size``.
    shared_block_size
        Genes per shared program block (paper: 250).
    target_block_size
        Genes per target program block (paper: 120).
    random_state
        Seed or :class:`numpy.random.Generator`; the same integer gives identical output.

    Returns
    -------
    AnnData with ``n_target + n_background`` cells (target cells first) and ``n_genes`` genes:

    ``X``
        :class:`scipy.sparse.csr_matrix`, float32, integer-valued Poisson counts.
    ``layers["counts"]``
        The same counts (a separate copy).
    ``obs["condition"]``
        Categorical ``"target"`` / ``"background"``.
    ``obs["subtype"]``
        Categorical ``"A"`` / ``"B"`` for target cells, ``"none"`` for background cells.
    ``obs["shared_class"]``
        Categorical ``"shared_0"`` … ``"shared_4"``.
    ``obs["library_factor"]``
        The per-cell library factor used.
    ``var["program"]``
        Categorical block label of each gene: ``"shared_0"`` … ``"shared_4"``,
        ``"target_0"``, ``"target_1"`` or ``"none"``. Gene names are ``"g0000"``, ….
    ``varm["true_loadings"]``
        float32 array (genes × 7): the loadings of ``shared_0`` … ``shared_4``,
        ``target_0``, ``target_1`` (column names in ``uns["simulation"]["programs"]``).
    ``uns["simulation"]``
        Plain dict of the parameters (h5ad-writable).

    Examples
    --------
    >>> import bcnmf_sc as bc
    >>> adata = bc.datasets.beta_series(beta=8, random_state=0)
    >>> adata.shape
    (2000, 3000)
    """
    beta = float(beta)
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    n_target = check_positive_int(n_target, "n_target", minimum=2)
    n_background = check_positive_int(n_background, "n_background", minimum=1)
    n_genes = check_positive_int(n_genes, "n_genes")
    shared_block_size = check_positive_int(shared_block_size, "shared_block_size")
    target_block_size = check_positive_int(target_block_size, "target_block_size")
    n_program_genes = _N_SHARED * shared_block_size + _N_TARGET_PROGRAMS * target_block_size
    if n_genes < n_program_genes:
        raise ValueError(
            f"n_genes={n_genes} is too small: the program blocks need "
            f"{_N_SHARED} * {shared_block_size} + {_N_TARGET_PROGRAMS} * {target_block_size} "
            f"= {n_program_genes} genes"
        )
    rng = get_rng(random_state)

    # --- programs (genes x programs) -------------------------------------------------------
    shared = rng.gamma(0.5, 0.01, size=(n_genes, _N_SHARED))
    target = rng.gamma(0.5, 0.005, size=(n_genes, _N_TARGET_PROGRAMS))
    program = np.full(n_genes, "none", dtype=object)
    start = 0
    for k in range(_N_SHARED):
        block = slice(start, start + shared_block_size)
        shared[block, k] += rng.gamma(2.0, 0.6, size=shared_block_size)
        program[block] = f"shared_{k}"
        start += shared_block_size
    for k in range(_N_TARGET_PROGRAMS):
        block = slice(start, start + target_block_size)
        target[block, k] += rng.gamma(2.0, 0.9, size=target_block_size)
        program[block] = f"target_{k}"
        start += target_block_size

    # --- cell labels ------------------------------------------------------------------------
    n_a = (n_target + 1) // 2
    subtype_idx = rng.permutation(np.r_[np.zeros(n_a, dtype=np.intp), np.ones(n_target - n_a, dtype=np.intp)])
    class_target = rng.integers(0, _N_SHARED, size=n_target)
    class_background = rng.integers(0, _N_SHARED, size=n_background)

    # --- means and counts -------------------------------------------------------------------
    n_cells = n_target + n_background
    gene_noise = rng.gamma(1.0, 1.0, size=n_genes)
    cell_noise = rng.gamma(1.0, 1.0, size=n_cells)
    library = rng.lognormal(0.0, 0.35, size=n_cells)

    classes = np.r_[class_target, class_background]
    mean = (10.0 * beta) * shared[:, classes].T  # cells x genes
    mean[:n_target] += 0.15 * target[:, subtype_idx].T
    mean += 0.02
    mean += 0.01 * np.outer(cell_noise, gene_noise)
    mean *= library[:, None]
    counts = rng.poisson(mean).astype(np.float32)
    del mean

    X = sp.csr_matrix(counts)
    del counts

    # --- AnnData ----------------------------------------------------------------------------
    shared_names = [f"shared_{k}" for k in range(_N_SHARED)]
    target_names = [f"target_{k}" for k in range(_N_TARGET_PROGRAMS)]
    condition = np.r_[np.repeat("target", n_target), np.repeat("background", n_background)]
    subtype = np.r_[np.asarray(_SUBTYPES, dtype=object)[subtype_idx], np.repeat("none", n_background)]
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(condition, categories=["target", "background"]),
            "subtype": pd.Categorical(subtype, categories=[*_SUBTYPES, "none"]),
            "shared_class": pd.Categorical(np.asarray(shared_names, dtype=object)[classes], categories=shared_names),
            "library_factor": library.astype(np.float32),
        },
        index=pd.Index([f"cell{i:0{len(str(n_cells - 1))}d}" for i in range(n_cells)]),
    )
    gene_names = [f"g{i:0{max(4, len(str(n_genes - 1)))}d}" for i in range(n_genes)]
    var = pd.DataFrame(
        {"program": pd.Categorical(program, categories=[*shared_names, *target_names, "none"])},
        index=pd.Index(gene_names),
    )
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.layers["counts"] = X.copy()
    adata.varm["true_loadings"] = np.hstack([shared, target]).astype(np.float32)
    adata.uns["simulation"] = {
        "name": "beta_series",
        "beta": beta,
        "n_target": n_target,
        "n_background": n_background,
        "n_genes": n_genes,
        "shared_block_size": shared_block_size,
        "target_block_size": target_block_size,
        "n_shared_programs": _N_SHARED,
        "n_target_programs": _N_TARGET_PROGRAMS,
        "random_state": describe_seed(random_state),
        "programs": [*shared_names, *target_names],
        "recipe": "Li, Yang & Li, arXiv:2602.22387 (bcNMF), beta-series simulation",
    }
    logger.debug("beta_series: beta=%s, %d cells x %d genes, nnz=%d", beta, n_cells, n_genes, X.nnz)
    return adata
