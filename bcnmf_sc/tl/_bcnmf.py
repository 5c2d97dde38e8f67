"""``tl.bcnmf``: fit bcNMF on the target and background cells of an AnnData."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..engine import BCNMF
from ..engine._device import resolve_device
from ._enrichment import enrichment_table
from ._groups import data_matrix, default_mask_var, resolve_genes, resolve_groups, source
from ._topic_genes import rank_topic_genes

logger = logging.getLogger(__name__)

_DEFAULT = "default"


def topic_names(kinds: np.ndarray) -> list[str]:
    """``shared_1, …, target_1, …`` for the shared + target model, ``topic_1, …`` for the contrastive one."""
    counters: dict[str, int] = {}
    names = []
    for kind in kinds:
        prefix = "topic" if kind == "contrastive" else str(kind)
        counters[prefix] = counters.get(prefix, 0) + 1
        names.append(f"{prefix}_{counters[prefix]}")
    return names


def bcnmf(
    adata: AnnData,
    *,
    background_key: str,
    background: Any | Sequence[Any] | None = None,
    target: Any | Sequence[Any] | None = None,
    n_topics: int = 10,
    n_target_topics: int | None = None,
    model: Literal["shared_target", "contrastive"] = "shared_target",
    alpha: float = 1.0,
    likelihood: Literal["poisson", "gaussian"] = "poisson",
    layer: str | None = None,
    mask_var: str | np.ndarray | None = _DEFAULT,
    batch_size: int = 2048,
    usage_steps: int = 2,
    w_update: Literal["epoch", "online"] = "epoch",
    max_epochs: int = 200,
    tol: float = 1e-4,
    n_starts: int = 3,
    unsafe_alpha: Literal["raise", "clip"] = "raise",
    device: str = "auto",
    random_state: int = 0,
    progress: bool = True,
    key_added: str = "bcnmf",
    copy: bool = False,
) -> AnnData | None:
    """Background-contrastive NMF: gene programs enriched in target cells and absent from the background.

    Target cells are those of ``adata.obs[background_key]`` not in ``background`` (or those in
    ``target`` when given); cells in neither group are projected onto the fitted topics afterwards.
    Nothing is written to ``adata`` until the fit has succeeded.

    Parameters
    ----------
    adata
        Cells × genes. Raw counts for ``likelihood="poisson"`` (in ``X`` or ``layers[layer]``);
        may be backed (``read_h5ad(..., backed="r")``), then cells are read in chunks.
    background_key
        Column of ``adata.obs`` that tells the groups apart.
    background
        Value, or list of values, of ``adata.obs[background_key]`` marking background cells
        (e.g. ``"ctrl"``). May be omitted for a boolean column (True = background).
    target
        Values marking target cells; default all cells that are not background.
    n_topics
        Total number of topics.
    n_target_topics
        Shared + target model: how many of the ``n_topics`` are target topics (default
        ``max(1, n_topics // 5)``); the remaining ``n_topics - n_target_topics`` are shared.
    model
        ``"shared_target"``: shared topics explain both groups, target topics only the target (bounded
        objective, cannot collapse). ``"contrastive"``: the paper's objective
        ``D(X‖X̂)/n_t − α·D(Y‖Ŷ)/n_b``.
    alpha
        Contrastive model: weight of the background term, scale-free (paper's α = ``alpha · n_t / n_b``).
        With the Poisson likelihood it must stay below ``0.5 · α*`` (see ``unsafe_alpha``).
    likelihood
        ``"poisson"`` for raw counts, ``"gaussian"`` for log-normalised or other continuous data.
    layer
        Layer holding the data; ``None`` uses ``adata.X``.
    mask_var
        Genes to fit: a boolean ``var`` column name or mask. Defaults to ``"highly_variable"`` when that
        column exists, else all genes.
    batch_size, usage_steps, w_update, max_epochs, tol
        Engine settings, see :class:`bcnmf_sc.BCNMF`.
    n_starts
        Independent starts (default 3); the best non-collapsed one by target fit is kept and topic
        stability across starts is reported. Use 1 for speed on very large data.
    unsafe_alpha
        ``"raise"`` refuses an unsafe α, ``"clip"`` lowers it to the limit with a warning.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda[:i]"``.
    random_state
        Seed for every random choice.
    progress
        Show a progress bar (on stderr) over the epochs of each stage.
    key_added
        Key under which results are written.
    copy
        Return a modified copy instead of writing into ``adata``. Not available for a backed ``adata``
        (copying it would load the whole matrix): with ``copy=False`` the results go to its in-memory
        ``obsm``/``varm``/``uns``; save them with ``adata.write_h5ad(new_path)``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with

    ``adata.obsm[key_added]``
        Usages, cells × topics (float64): fitted for target cells, solved with the loadings fixed and all
        topics available for background and other cells. Usages are in the data's units (counts), since
        every loading column sums to 1.
    ``adata.varm[key_added]``
        Loadings, genes × topics; each column sums to 1; zero rows for genes outside ``mask_var``.
    ``adata.uns[key_added]``
        ``params`` (every argument, the resolved device, ``alpha_star``, ``alpha_used``, package versions,
        group sizes), ``topics`` (topic names in column order), ``history`` (DataFrame per epoch:
        ``objective``, ``target_loss``, ``background_loss``, …) and ``enrichment`` (DataFrame indexed by
        topic: ``kind``, ``target_mean``, ``background_mean``, ``log2fc``, ``auroc``, ``leakage``,
        ``pval``, ``enriched``, ``stability``; see :func:`~bcnmf_sc.tl._enrichment.enrichment_table`).
    ``adata.uns[f"{key_added}_genes"]``
        Genes ranked per topic by specificity, in the layout of :func:`scanpy.tl.rank_genes_groups`
        (100 genes per topic; see :func:`bcnmf_sc.tl.topic_genes` for the score).

    Raises
    ------
    KeyError
        ``background_key``, ``layer`` or a ``mask_var`` column is missing (the message lists what exists).
    ValueError
        Negative, NaN or infinite values (naming the group where they were found); a ``background`` or
        ``target`` level that does not exist (the levels are listed); an empty target or background group;
        a group with fewer cells, or fewer fitted genes, than topics; ``mask_var`` selecting no genes; a
        target with only zeros; a backed CSC matrix; an invalid setting.
    TypeError
        Data that are not real numbers (bool, object, complex, strings).
    bcnmf_sc.UnsafeAlphaError
        Poisson contrastive model with ``alpha ≥ 0.5 · α*`` and ``unsafe_alpha="raise"``.
    bcnmf_sc.CollapseError
        Every start collapsed (never silently returned).

    In every case ``adata`` is left exactly as it was.

    Warns
    -----
    UserWarning
        Non-integer values with ``likelihood="poisson"`` (the fit proceeds: generalised KL is defined for any
        non-negative data; use ``likelihood="gaussian"`` for log-normalised data), and a clipped α.

    Examples
    --------
    >>> import bcnmf_sc as bc
    >>> adata = bc.datasets.kang_pbmc()
    >>> bc.tl.bcnmf(adata, background_key="condition", background="ctrl", n_topics=10, progress=False)
    >>> adata.uns["bcnmf"]["enrichment"].query("enriched").index.tolist()  # doctest: +SKIP
    ['target_1', 'target_2']
    """
    _check_args(
        adata, model=model, likelihood=likelihood, n_target_topics=n_target_topics, alpha=alpha,
        unsafe_alpha=unsafe_alpha, w_update=w_update, random_state=random_state, key_added=key_added, copy=copy,
    )
    _check_device(device)
    groups = resolve_groups(adata, background_key=background_key, background=background, target=target)
    if isinstance(mask_var, str) and mask_var == _DEFAULT:
        mask_var = default_mask_var(adata)
    genes = resolve_genes(adata, mask_var)
    matrix = data_matrix(adata, layer)
    logger.info(
        "fitting bcNMF on %d target and %d background cells, %d genes",
        len(groups.target), len(groups.background), len(genes),
    )

    estimator = BCNMF(
        n_topics,
        model=model,
        n_target_topics=n_target_topics,
        alpha=alpha,
        likelihood=likelihood,
        w_update=w_update,
        batch_size=batch_size,
        usage_steps=usage_steps,
        max_epochs=max_epochs,
        tol=tol,
        n_starts=n_starts,
        unsafe_alpha=unsafe_alpha,
        device=device,
        random_state=random_state,
        progress=progress,
    )
    target_source = source(matrix, groups.target, genes, name="target cells")
    background_source = source(matrix, groups.background, genes, name="background cells")
    estimator.fit(target_source, background_source)

    usages = np.zeros((adata.n_obs, n_topics))
    usages[groups.target] = estimator.target_usages_
    if model == "contrastive":
        usages[groups.background] = estimator.background_usages_
    else:  # fitted background usages exclude target topics; project with all topics for an honest comparison
        usages[groups.background] = estimator.transform(background_source)
    if len(groups.other):
        usages[groups.other] = estimator.transform(source(matrix, groups.other, genes, name="other cells"))
    loadings = np.zeros((adata.n_vars, n_topics))
    loadings[genes] = estimator.loadings_

    names = topic_names(estimator.topic_kind_)
    enrichment = enrichment_table(
        usages[groups.target], usages[groups.background], names, estimator.topic_kind_, random_state=random_state
    )
    enrichment["stability"] = estimator.topic_stability_
    params = dict(
        background_key=background_key,
        background=_plain(background),
        target=_plain(target),
        n_topics=n_topics,
        n_target_topics=estimator.n_target_topics_,
        model=model,
        alpha=alpha,
        likelihood=likelihood,
        layer=layer,
        mask_var=mask_var if isinstance(mask_var, str) or mask_var is None else np.asarray(mask_var, dtype=bool),
        n_genes_fitted=len(genes),
        batch_size=batch_size,
        usage_steps=usage_steps,
        w_update=w_update,
        max_epochs=max_epochs,
        tol=tol,
        n_starts=n_starts,
        unsafe_alpha=unsafe_alpha,
        device=device,
        device_used=str(estimator.device_),
        random_state=random_state,
        progress=progress,
        key_added=key_added,
        copy=copy,
        alpha_star=estimator.alpha_star_,
        alpha_used=estimator.alpha_,
        n_target_cells=len(groups.target),
        n_background_cells=len(groups.background),
        n_other_cells=len(groups.other),
        excluded_genes=np.asarray(adata.var_names[genes[estimator.excluded_genes_]], dtype=str),
        n_epochs=estimator.n_epochs_,
        converged=estimator.converged_,
        versions={pkg: version(pkg) for pkg in ("bcnmf-sc", "anndata", "numpy", "scipy")}
        | {"torch": str(torch.__version__)},
    )
    results = dict(
        params=params, topics=np.array(names), history=pd.DataFrame(estimator.history_), enrichment=enrichment
    )
    ranked = rank_topic_genes(loadings, adata.var_names, names, n_genes=100, key=key_added, layer=layer)

    # everything computed: only now touch the user's object
    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = usages
    adata.varm[key_added] = loadings
    adata.uns[key_added] = results
    adata.uns[f"{key_added}_genes"] = ranked
    return adata if copy else None


def _check_args(adata: AnnData, *, model, likelihood, n_target_topics, alpha, unsafe_alpha, w_update, random_state,
                key_added, copy) -> None:
    """Checks the engine does not make (or makes only after reading the data)."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    for name, value, allowed in (
        ("model", model, ("shared_target", "contrastive")),
        ("likelihood", likelihood, ("poisson", "gaussian")),
        ("w_update", w_update, ("epoch", "online")),
        ("unsafe_alpha", unsafe_alpha, ("raise", "clip")),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
    if n_target_topics is not None and model != "shared_target":
        raise ValueError(f"n_target_topics applies only to model='shared_target', not model={model!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number ≥ 0, got {alpha!r}.")
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) or random_state < 0:
        raise ValueError(f"random_state must be a non-negative integer, got {random_state!r}.")
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}.")
    if copy and adata.isbacked:
        raise ValueError(
            "copy=True is not supported for a backed AnnData (it would load the whole matrix); use copy=False, "
            "which writes the results into the in-memory obsm/varm/uns, then adata.write_h5ad(new_path)."
        )


def _check_device(device) -> None:
    try:
        resolve_device(device)
    except (RuntimeError, TypeError) as error:  # torch's message for an unknown device string
        raise ValueError(f"device={device!r} is not a valid device: {error}") from None


def _plain(value):
    """Group levels as h5ad-writable values (strings/numbers, lists as arrays)."""
    if value is None or isinstance(value, (str, int, float, bool, np.generic)):
        return value
    return np.asarray(list(value))
