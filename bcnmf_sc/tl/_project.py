"""``tl.project``: usages of new cells on the topics of a fitted result."""

from __future__ import annotations

import logging
import warnings

import numpy as np
from anndata import AnnData

from ..engine import BCNMF
from ..engine._device import resolve_device
from ._groups import data_matrix, source
from ._topic_genes import fitted_genes

logger = logging.getLogger(__name__)

#: projection is refused when the new data has fewer than this share of the fitted genes
MIN_GENE_SHARE = 0.5


def _fixed_estimator(loadings: np.ndarray, kept: np.ndarray, *, likelihood: str, batch_size: int, device: str) -> BCNMF:
    """A :class:`BCNMF` that only knows its loadings (genes × topics), enough for ``transform``.

    ``kept`` are the genes whose loadings are used; the others are ignored (unobserved), as the engine
    does for genes it set aside during the fit.
    """
    estimator = BCNMF(loadings.shape[1], likelihood=likelihood, batch_size=batch_size, device=device)
    estimator.loadings_ = np.asarray(loadings, dtype=np.float64)
    estimator.n_genes_in_ = loadings.shape[0]
    estimator._kept_genes = np.asarray(kept, dtype=np.int64)
    estimator.device_ = resolve_device(device)
    return estimator


def project(
    adata: AnnData,
    *,
    reference: AnnData,
    key: str = "bcnmf",
    layer: str | None = None,
    device: str = "auto",
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Put new cells onto the topics of a fitted bcNMF result.

    The loadings ``reference.varm[key]`` stay fixed and every cell's usages are solved with all topics
    available, as :func:`bcnmf_sc.tl.bcnmf` does for background and other cells (those cells get the
    same usages again, up to float precision; target cells agree with their fitted usages to within the
    fit's convergence). Genes are matched by ``var_names``. Fitted genes missing from ``adata`` are left
    out of the projection (treated as unobserved, not as zero counts, so usages stay on the reference's
    scale) with a warning naming how many; fewer than ``MIN_GENE_SHARE`` = 50 % of the fitted genes, or
    fewer genes than topics, is an error. Genes of ``adata`` not in the fit are ignored.

    Parameters
    ----------
    adata
        New cells × genes, in the same units as the reference fit (raw counts for a Poisson fit); may be
        backed.
    reference
        AnnData holding a :func:`bcnmf_sc.tl.bcnmf` result under ``key`` (only ``varm[key]``,
        ``uns[key]`` and ``var_names`` are used; ``reference`` may be ``adata`` itself).
    key
        ``key_added`` of the reference fit.
    layer
        Layer of ``adata`` holding the data; ``None`` uses ``adata.X``.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda[:i]"``.
    key_added
        Where to write; default ``key``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with

    ``adata.obsm[key_added]``
        Usages, cells × topics (float64), columns in the order of ``reference.uns[key]["topics"]``.
    """
    fit = reference.uns.get(key)
    if key not in reference.varm or not isinstance(fit, dict) or "params" not in fit:
        raise KeyError(
            f"reference has no bcNMF result under key {key!r}: run bcnmf_sc.tl.bcnmf(reference, ..., "
            f"key_added={key!r}) first (keys in reference.uns: {list(reference.uns.keys())})."
        )
    if not reference.var_names.is_unique:
        raise ValueError("reference.var_names are not unique; genes cannot be matched by name.")
    if not adata.var_names.is_unique:
        raise ValueError("adata.var_names are not unique; genes cannot be matched by name (var_names_make_unique).")
    loadings = np.asarray(reference.varm[key], dtype=np.float64)
    n_topics = loadings.shape[1]
    genes = fitted_genes(loadings)
    fitted_names = reference.var_names[genes]
    position = adata.var_names.get_indexer(fitted_names)  # -1 where missing
    present = position >= 0
    n_present, n_fitted = int(present.sum()), len(genes)
    if n_present < max(MIN_GENE_SHARE * n_fitted, n_topics):
        raise ValueError(
            f"only {n_present} of the {n_fitted} genes of the fit are in adata.var_names (at least "
            f"{MIN_GENE_SHARE:.0%} and at least n_topics={n_topics} are needed); check that both use the "
            f"same gene identifiers (e.g. {list(fitted_names[:3])} vs {list(adata.var_names[:3])})."
        )
    if n_present < n_fitted:
        missing = fitted_names[~present]
        lost = loadings[genes][~present].sum(axis=0).max()
        warnings.warn(
            f"{n_fitted - n_present} of the {n_fitted} fitted genes are missing from adata (e.g. "
            f"{list(missing[:5])}); they are left out of the projection (up to {lost:.1%} of a topic's "
            "loading).",
            UserWarning,
            stacklevel=2,
        )
    matrix = data_matrix(adata, layer)
    params = fit["params"]
    estimator = _fixed_estimator(
        loadings[genes][present],
        np.arange(n_present),
        likelihood=str(params.get("likelihood", "poisson")),
        batch_size=int(params.get("batch_size", 2048)),
        device=device,
    )
    # read only the matched genes, in the order of the fit
    usages = estimator.transform(source(matrix, np.arange(adata.n_obs), position[present], name="adata"))
    logger.info("projected %d cells onto %d topics using %d genes", adata.n_obs, n_topics, n_present)

    adata = adata.copy() if copy else adata
    adata.obsm[key_added or key] = usages
    return adata if copy else None
