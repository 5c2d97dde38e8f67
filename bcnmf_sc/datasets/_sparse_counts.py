"""A large sparse count generator, built chunk by chunk (optionally streamed to h5ad)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._utils import RandomState, check_positive_int, describe_seed, get_rng

logger = logging.getLogger(__name__)

# Newton iterations for the per-cell depth scale (converges monotonically from below)
_NEWTON_MAX_ITER = 30
_NEWTON_RTOL = 2e-3
# spread of the per-cell number of detected genes (log scale)
_DEPTH_SIGMA = 0.3


def sparse_counts(
    *,
    n_cells: int,
    n_genes: int = 2000,
    density: float = 0.1,
    n_topics: int = 10,
    n_target_topics: int = 2,
    target_fraction: float = 0.5,
    chunk_size: int = 10000,
    random_state: RandomState = 0,
    path: str | os.PathLike | None = None,
) -> ad.AnnData:
    """Generate a large sparse Poisson-NMF count matrix with a known ground truth.

    The counts follow ``X[i, g] ~ Poisson(sum_k H[i, k] * W[g, k])`` exactly, with
    non-negative loadings ``W`` (genes × topics, each column sums to 1 and is concentrated on
    its own random block of about ``n_genes / n_topics`` genes, plus a small loading on every
    gene) and usages ``H`` (cells × topics). The last ``n_target_topics`` topics are used by
    target cells only. Each cell's depth (the row sum of ``H``) is solved so that its expected
    number of non-zero genes, ``sum_g (1 - exp(-mu[i, g]))``, equals
    ``density * n_genes * s_i`` with ``s_i`` a LogNormal(0, 0.3) factor of mean 1; the realised
    density is therefore close to ``density``.

    The matrix is built per chunk of ``chunk_size`` rows without ever forming the full
    cells × genes array: for a chunk, each entry is non-zero with probability
    ``1 - exp(-mu)`` (one uniform draw per entry) and the value of a non-zero is drawn from the
    zero-truncated Poisson by the first-arrival construction
    ``1 + Poisson(mu + log(1 - u * (1 - exp(-mu))))``. Memory grows with the non-zeros (in
    memory) or stays at one chunk (with ``path``).

    Parameters
    ----------
    n_cells
        Number of cells (rows).
    n_genes
        Number of genes (columns), at least ``n_topics``.
    density
        Target fraction of non-zero entries, in ``(0, 0.9]``. A cell is capped at 95 % of the
        genes, so densities above about 0.5 are realised somewhat lower (0.9 gives about 0.82).
    n_topics
        Total number of topics (columns of ``W``).
    n_target_topics
        How many of the topics (the last ones) only target cells use; ``0 <= n_target_topics
        < n_topics``.
    target_fraction
        Fraction of target cells (rounded to a whole number, placed at random rows).
    chunk_size
        Rows generated per chunk. The output depends on ``random_state`` *and* ``chunk_size``
        (each chunk has its own random stream).
    random_state
        Seed or :class:`numpy.random.Generator`; the same integer (and ``chunk_size``) gives
        identical output.
    path
        If given, the data are streamed to this ``.h5ad`` file (written to a temporary file in
        the same folder, then renamed over ``path``, replacing an existing file) and the file
        is returned opened in backed mode
        (``anndata.read_h5ad(path, backed="r")``). Only one chunk is held in memory.

    Returns
    -------
    AnnData with ``n_cells`` cells and ``n_genes`` genes (backed, read-only, when ``path`` is
    given):

    ``X``
        CSR matrix, float32 integer counts, sorted column indices.
    ``obs["condition"]``
        Categorical ``"target"`` / ``"background"``.
    ``obsm["true_usages"]``
        float32 (cells × topics) usages ``H``; ``H @ W.T`` is the expected count matrix.
    ``varm["true_loadings"]``
        float32 (genes × topics) loadings ``W``, columns summing to 1.
    ``var["topic"]``
        The topic whose block holds the gene (``"topic_0"``, …; target topics come last).
    ``uns["simulation"]``
        Plain dict of the parameters, the realised number of non-zeros and density.

    Examples
    --------
    >>> import bcnmf_sc as bc
    >>> adata = bc.datasets.sparse_counts(n_cells=5000, n_genes=500, random_state=0)
    >>> adata.X.nnz / (5000 * 500)  # doctest: +SKIP
    0.0998...
    """
    n_cells = check_positive_int(n_cells, "n_cells")
    n_genes = check_positive_int(n_genes, "n_genes")
    n_topics = check_positive_int(n_topics, "n_topics")
    n_target_topics = check_positive_int(n_target_topics, "n_target_topics", minimum=0)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    density = float(density)
    target_fraction = float(target_fraction)
    if not 0.0 < density <= 0.9:
        raise ValueError(f"density must be in (0, 0.9], got {density}")
    if not 0.0 <= target_fraction <= 1.0:
        raise ValueError(f"target_fraction must be in [0, 1], got {target_fraction}")
    if n_target_topics >= n_topics:
        raise ValueError(f"n_target_topics ({n_target_topics}) must be < n_topics ({n_topics})")
    if n_genes < n_topics:
        raise ValueError(f"n_genes ({n_genes}) must be >= n_topics ({n_topics})")

    rng = get_rng(random_state)
    W, topic_of_gene = _loadings(rng, n_genes, n_topics)
    n_t = int(round(target_fraction * n_cells))
    is_target = np.zeros(n_cells, dtype=bool)
    is_target[rng.choice(n_cells, size=n_t, replace=False)] = True
    n_chunks = -(-n_cells // chunk_size)
    chunk_seeds = np.random.SeedSequence(rng.integers(0, 2**63 - 1, size=4).tolist()).spawn(n_chunks)

    topic_names = [f"topic_{k}" for k in range(n_topics)]
    obs = pd.DataFrame(
        {"condition": pd.Categorical(np.where(is_target, "target", "background"), categories=["target", "background"])},
        index=pd.Index(_cell_names(n_cells)),
    )
    var = pd.DataFrame(
        {"topic": pd.Categorical(np.asarray(topic_names, dtype=object)[topic_of_gene], categories=topic_names)},
        index=pd.Index(_gene_names(n_genes)),
    )
    params = {
        "name": "sparse_counts",
        "n_cells": n_cells,
        "n_genes": n_genes,
        "density": density,
        "n_topics": n_topics,
        "n_target_topics": n_target_topics,
        "n_target": n_t,
        "target_fraction": target_fraction,
        "chunk_size": chunk_size,
        "random_state": describe_seed(random_state),
        "model": "X ~ Poisson(true_usages @ true_loadings.T)",
    }
    work = _Workspace(min(chunk_size, n_cells), n_genes)
    chunks = (
        _chunk(np.random.default_rng(seed), W, is_target[start : start + chunk_size], n_target_topics, density, work)
        for seed, start in zip(chunk_seeds, range(0, n_cells, chunk_size))
    )
    if path is None:
        return _in_memory(chunks, obs, var, W, params, n_cells, n_genes, n_topics)
    return _to_h5ad(Path(path), chunks, obs, var, W, params, n_cells, n_genes, n_topics)


# --------------------------------------------------------------------------------------------
# ground truth and chunk generation
# --------------------------------------------------------------------------------------------


def _loadings(rng: np.random.Generator, n_genes: int, n_topics: int) -> tuple[np.ndarray, np.ndarray]:
    """Loadings (genes × topics, columns sum to 1) and the topic of each gene's block."""
    topic_of_gene = np.empty(n_genes, dtype=np.intp)
    perm = rng.permutation(n_genes)
    for k, block in enumerate(np.array_split(perm, n_topics)):
        topic_of_gene[block] = k
    W = rng.gamma(0.5, 0.02, size=(n_genes, n_topics))
    W[np.arange(n_genes), topic_of_gene] += rng.gamma(2.0, 1.0, size=n_genes)
    W /= W.sum(axis=0, keepdims=True)
    return W.astype(np.float32), topic_of_gene


class _Workspace:
    """Reusable chunk-sized buffers.

    Allocating fresh chunk × genes arrays for every chunk is dominated by page faults; the
    generator instead writes into these buffers (views of their first rows for a short chunk).
    """

    def __init__(self, n_rows: int, n_genes: int) -> None:
        self.profile = np.empty((n_rows, n_genes), dtype=np.float32)
        self.scratch = np.empty((n_rows, n_genes), dtype=np.float32)
        self.other = np.empty((n_rows, n_genes), dtype=np.float32)
        self.mask = np.empty((n_rows, n_genes), dtype=bool)


def _chunk(
    rng: np.random.Generator,
    W: np.ndarray,
    is_target: np.ndarray,
    n_target_topics: int,
    density: float,
    work: _Workspace,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk of rows: (non-zeros per row, column indices, values, usages)."""
    n, n_topics = is_target.shape[0], W.shape[1]
    n_genes = W.shape[0]
    # topic proportions: sparse-ish Dirichlet; target topics only for target cells
    props = rng.gamma(0.3, 1.0, size=(n, n_topics)).astype(np.float32)
    props += np.float32(1e-6)  # every cell uses every allowed topic a little
    if n_target_topics:
        props[~is_target, n_topics - n_target_topics :] = 0.0
    props /= props.sum(axis=1, keepdims=True)
    # number of detected genes wanted per cell (mean density * n_genes)
    s = rng.lognormal(-0.5 * _DEPTH_SIGMA**2, _DEPTH_SIGMA, size=n)
    k_want = np.clip(density * n_genes * s, 0.5, 0.95 * n_genes).astype(np.float32)

    profile = np.matmul(props, W.T, out=work.profile[:n])  # rows sum to 1
    depth = _solve_depth(profile, k_want, work.scratch[:n], work.other[:n])
    mu = profile
    mu *= depth[:, None]  # expected counts (in place)
    # Entry (i, g) is the first arrival time E ~ Exp(1) of a unit-rate process on [0, mu):
    # it is non-zero iff E < mu (probability 1 - exp(-mu)); given that, the remaining
    # arrivals on the rest of the interval are Poisson(mu - E), so 1 + Poisson(mu - E) is an
    # exact draw from the zero-truncated Poisson(mu).
    arrival = rng.standard_exponential(out=work.scratch[:n], dtype=np.float32)
    keep = np.less(arrival, mu, out=work.mask[:n])
    flat = np.flatnonzero(keep)
    row_nnz = np.count_nonzero(keep, axis=1)
    cols = (flat % n_genes).astype(np.int32)
    rest = mu.reshape(-1).take(flat)
    rest -= arrival.reshape(-1).take(flat)
    del flat
    np.maximum(rest, 0.0, out=rest)
    values = rng.poisson(rest).astype(np.float32)
    values += np.float32(1.0)
    usages = (props * depth[:, None]).astype(np.float32)
    return row_nnz, cols, values, usages


def _solve_depth(
    profile: np.ndarray, k_want: np.ndarray, scratch: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """Per-row scale ``c`` with ``sum_g (1 - exp(-c * profile[g])) = k_want``.

    The left side is concave and increasing in ``c`` and lies below ``c`` (rows of ``profile``
    sum to 1), so Newton's method started at ``c = k_want`` approaches the root from below.
    ``scratch`` and ``rows`` are buffers shaped like ``profile``.
    """
    c = k_want.astype(np.float32)
    n_rows, n_genes = profile.shape
    active = np.arange(n_rows)
    for it in range(_NEWTON_MAX_ITER):
        # work on all rows while many are unconverged, else on a copy of the few left
        subset = active.size < n_rows // 4
        m = active.size if subset else n_rows
        p = np.take(profile, active, axis=0, out=rows[:m]) if subset else profile
        ca = c[active] if subset else c
        kw = k_want[active] if subset else k_want
        e = np.multiply(p, -ca[:, None], out=scratch[:m])
        # exp(-30) ~ 1e-13 is zero for the sum; the clip keeps exp and the products below
        # away from float32 denormals, which are very slow
        np.maximum(e, np.float32(-30.0), out=e)
        np.exp(e, out=e)
        f = (n_genes - e.sum(axis=1)) - kw
        e *= p
        step = -f / np.maximum(e.sum(axis=1), np.float32(1e-30))
        unconverged = np.abs(f) > _NEWTON_RTOL * kw
        if subset:
            c[active] += step
            active = active[unconverged]
        else:
            c[active] += step[active]
            active = np.flatnonzero(unconverged)
        if active.size == 0:
            break
    logger.debug("depth solve: %d Newton iterations", it + 1)
    return c


def _cell_names(n: int) -> list[str]:
    width = len(str(n - 1))
    return [f"cell{i:0{width}d}" for i in range(n)]


def _gene_names(n: int) -> list[str]:
    width = max(4, len(str(n - 1)))
    return [f"g{i:0{width}d}" for i in range(n)]


# --------------------------------------------------------------------------------------------
# assembly
# --------------------------------------------------------------------------------------------


def _in_memory(chunks, obs, var, W, params, n_cells, n_genes, n_topics) -> ad.AnnData:
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    all_cols, all_vals = [], []
    usages = np.empty((n_cells, n_topics), dtype=np.float32)
    row = 0
    for row_nnz, cols, values, u in chunks:
        n = row_nnz.shape[0]
        indptr[row + 1 : row + n + 1] = row_nnz
        usages[row : row + n] = u
        all_cols.append(cols)
        all_vals.append(values)
        row += n
    np.cumsum(indptr, out=indptr)
    nnz = int(indptr[-1])
    if nnz < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    X = sp.csr_matrix(
        (np.concatenate(all_vals), np.concatenate(all_cols), indptr),
        shape=(n_cells, n_genes),
    )
    X.has_sorted_indices = True
    del all_cols, all_vals
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm["true_usages"] = usages
    adata.varm["true_loadings"] = W
    adata.uns["simulation"] = {**params, "nnz": nnz, "realised_density": nnz / (n_cells * n_genes)}
    logger.info("sparse_counts: %d x %d, nnz=%d (density %.4f)", n_cells, n_genes, nnz, nnz / (n_cells * n_genes))
    return adata


def _to_h5ad(path: Path, chunks, obs, var, W, params, n_cells, n_genes, n_topics) -> ad.AnnData:
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # obs, var, varm, uns via anndata (no X), then stream X and obsm with h5py
        skeleton = ad.AnnData(obs=obs, var=var)
        skeleton.varm["true_loadings"] = W
        skeleton.uns["simulation"] = dict(params)
        skeleton.write_h5ad(tmp)
        del skeleton
        with h5py.File(tmp, "a") as f:
            if "X" in f:
                del f["X"]
            grp = f.create_group("X")
            grp.attrs["encoding-type"] = "csr_matrix"
            grp.attrs["encoding-version"] = "0.1.0"
            grp.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
            block = 1 << 18
            d_data = grp.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(block,))
            d_ind = grp.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(block,))
            d_ptr = grp.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
            obsm = f.require_group("obsm")
            if not obsm.attrs.get("encoding-type"):
                obsm.attrs["encoding-type"] = "dict"
                obsm.attrs["encoding-version"] = "0.1.0"
            d_use = obsm.create_dataset("true_usages", shape=(n_cells, n_topics), dtype=np.float32)
            d_use.attrs["encoding-type"] = "array"
            d_use.attrs["encoding-version"] = "0.2.0"

            d_ptr[0] = 0
            row, nnz = 0, 0
            for row_nnz, cols, values, u in chunks:
                n, m = row_nnz.shape[0], cols.shape[0]
                d_data.resize((nnz + m,))
                d_ind.resize((nnz + m,))
                d_data[nnz : nnz + m] = values
                d_ind[nnz : nnz + m] = cols
                d_ptr[row + 1 : row + n + 1] = nnz + np.cumsum(row_nnz, dtype=np.int64)
                d_use[row : row + n] = u
                nnz += m
                row += n
                logger.debug("sparse_counts: wrote rows %d/%d (nnz %d)", row, n_cells, nnz)
            realised = nnz / (n_cells * n_genes)
            sim = f["uns/simulation"]
            for key, value in (("nnz", nnz), ("realised_density", realised)):
                sim.create_dataset(key, data=value)
                sim[key].attrs["encoding-type"] = "numeric-scalar"
                sim[key].attrs["encoding-version"] = "0.2.0"
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("sparse_counts: wrote %s (%d x %d, nnz=%d, density %.4f)", path, n_cells, n_genes, nnz, realised)
    return ad.read_h5ad(path, backed="r")
