"""``tl.bcnmf_sweep``: choose the number of topics and α (or the shared/target split) without labels."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from tqdm.auto import tqdm

from ..engine import BCNMF, CollapseError, UnsafeAlphaError
from ..engine._consensus import MIN_STABILITY, cluster_topics, track_topics
from ..engine._device import resolve_device
from ..engine._heldout import heldout_loss, solve_usages
from ._enrichment import enrichment_table
from ._groups import (
    data_matrix,
    default_mask_var,
    resolve_genes,
    resolve_groups,
    source,
)

logger = logging.getLogger(__name__)

_DEFAULT = "default"

#: a target topic whose held-out background share of usage, ``bg / (target + bg)``, exceeds this is leaky
MAX_LEAKAGE = 0.25
#: a track whose loadings keep a cosine similarity of at least this to the previous α step persisted
PERSIST_SIMILARITY = 0.9
#: permutations for the held-out enrichment p-values
_N_PERMUTATIONS = 199
#: the refit of the recommended setting keeps the best of at least this many starts: a single fit can stop in
#: a poor local optimum (what the sweep reports as a "stuck" seed)
REFIT_STARTS = 3
#: a seed whose final training objective is worse than the best seed's of the same setting by more than
#: this fraction of the best seed's loss scale stopped in a poor local optimum ("stuck")
STUCK_TOLERANCE = 0.25


def _flag_text(max_leakage: float, min_stability: float) -> dict[str, str]:
    """What each flag means, with the thresholds used."""
    return {
        "unsafe": "α at or above the safe limit 0.5·α* (Poisson contrastive): the fit is refused",
        "collapsed": "at least one seed collapsed (or no seed gave a usable fit)",
        "poor_fit": "held-out target loss no better than a one-topic (mean profile) model",
        "no_signal": "no target topic is enriched (log2FC ≥ 1, active share ≥ 0.2, p < 0.05) in held-out target cells",
        "leaky": f"a target topic is used by held-out background cells (leakage > {max_leakage:g})",
        "unstable": f"a target topic does not reproduce across seeds (stability < {min_stability:g})",
    }


@dataclass
class _Setting:
    n_topics: int
    n_target_topics: int | None
    alpha: float | None
    runs: list[dict] = field(default_factory=list)
    loadings: list[np.ndarray] = field(default_factory=list)  # successful seeds, fitted genes × K
    kinds: np.ndarray | None = None


def bcnmf_sweep(
    adata: AnnData,
    *,
    background_key: str,
    background: Any | Sequence[Any] | None = None,
    target: Any | Sequence[Any] | None = None,
    n_topics: Sequence[int] = (5, 10, 15),
    n_target_topics: Sequence[int] | None = None,
    alpha: Sequence[float] | None = None,
    model: Literal["shared_target", "contrastive"] = "shared_target",
    n_seeds: int = 3,
    n_starts: int = 1,
    test_size: float = 0.2,
    likelihood: Literal["poisson", "gaussian"] = "poisson",
    layer: str | None = None,
    mask_var: str | np.ndarray | None = _DEFAULT,
    batch_size: int = 2048,
    usage_steps: int = 2,
    w_update: Literal["epoch", "online"] = "epoch",
    max_epochs: int = 200,
    tol: float = 1e-4,
    max_leakage: float = MAX_LEAKAGE,
    min_stability: float = MIN_STABILITY,
    keep_loadings: Literal["recommended", "all"] = "recommended",
    warm_start: bool = True,
    device: str = "auto",
    random_state: int = 0,
    progress: bool = True,
    key_added: str = "bcnmf_sweep",
    copy: bool = False,
) -> pd.DataFrame | AnnData:
    """Sweep the number of topics and α (or the shared/target split) and recommend a setting without labels.

    For each of ``n_seeds`` seeds the target and the background cells are each split at random into a
    training part and a held-out part (``test_size``). Every setting is fitted on the training cells and
    judged on the held-out cells, with the loadings fixed:

    ``target_loss``, ``background_loss``
        Bi-cross-validated reconstruction loss per held-out cell: the genes are split into two seeded
        halves, each cell's usages are solved on one half and the loss is measured on the other (and vice
        versa). Topics that only fit noise make this *worse*, so it does not simply fall as topics are
        added. Background cells may use only the shared topics in the shared + target model.
    ``auroc``, ``leakage``, ``n_enriched``
        Usages of held-out cells solved with all topics free, then per topic the AUROC of target vs
        background usage and the background's share of the mean usage, ``bg / (target + bg)``.
        ``auroc`` is the mean and ``leakage`` the maximum over the *target topics* (the ``target`` topics of
        the shared + target model, every topic of the contrastive one); ``n_enriched`` counts the target
        topics that pass the ``enriched`` criterion of :func:`bcnmf_sc.tl.bcnmf` on held-out cells (log2
        fold change ≥ 1, at least a fifth of the target cells above the background's 95th percentile,
        one-sided permutation p < 0.05).
    ``stability``, ``stability_min``
        The seeds' topics are clustered by Hungarian matching on cosine similarity (shared with shared,
        target with target); a topic's stability is the mean pairwise cosine similarity of its matched
        copies across seeds. Mean and minimum over the target topics.

    Losses, ``auroc`` and ``leakage`` are averaged over the seeds, ``n_enriched`` is their median.

    A seed whose final training objective is worse than the best seed's of the same setting by more than
    25 % of the best seed's loss (``target_loss + background_loss``; ``+ α·background_loss`` for the
    contrastive model) stopped in a poor local optimum: it is marked ``stuck`` and left out of the
    setting's measures (``n_stuck``). ``n_starts > 1`` makes every fit keep the best of several starts.

    With ``model="contrastive"`` each seed walks up the sorted ``alpha`` values, warm-starting every fit
    from the loadings of the previous α (``warm_start``), so that each further α converges in fewer epochs;
    topics are tracked along this path (see ``tracking`` below).

    **Selection rule** (no labels). A setting is *flagged* when

    * ``unsafe``: the Poisson contrastive α is at or above ``0.5·α*`` (the fit is refused);
    * ``collapsed``: any seed's fit collapsed (or no seed gave a usable fit);
    * ``poor_fit``: its held-out target loss is no better than that of a one-topic model (each cell a
      multiple of the mean training profile) — α so large that the topics no longer describe the target;
    * ``no_signal``: in the median seed no topic is enriched in held-out target cells;
    * ``leaky``: some target topic has held-out background leakage above ``max_leakage`` — the background
      needs it, so it carries shared structure (too few shared topics, or α too small);
    * ``unstable``: some target topic has stability below ``min_stability`` across seeds.

    Held-out losses are compared seed by seed, on the same held-out cells, so that how hard one split
    happens to be cancels: ``target_excess`` is a setting's held-out target loss minus the best loss of any
    setting on the same seed, averaged over seeds. Among the unflagged settings, the *best* has the
    smallest ``target_excess``; a setting is *within one standard error* of it when its loss exceeds the
    best's, seed by seed, by no more than the standard error of those differences (the one-standard-error
    rule on paired differences). The number of topics is the fewest of any unflagged setting within one
    standard error of the best. Settings with that many topics differ only in α, or in how the topics split
    into shared and target ones, and have as many parameters, so the one-standard-error rule has nothing to
    prefer among them; every unflagged one whose held-out loss is not worse than the best of them by more
    than two standard errors of the paired differences (a plain significance test) is a candidate. Among
    the candidates the shared + target model prefers the most target topics — every one of them has passed
    the leakage and stability checks, so more of them resolve more target-specific structure — and then the
    lowest ``target_excess`` (for the contrastive model: usually the smallest α), then the more stable one. When
    every setting is flagged, the settings that are neither unsafe, collapsed nor a poor fit are ranked by
    their number of flags and the same rule is applied to those with the fewest, with a warning; when none
    is left nothing is recommended.

    Parameters
    ----------
    adata
        Cells × genes; see :func:`bcnmf_sc.tl.bcnmf` for the data (``layer``, ``mask_var``, backed files).
    background_key, background, target
        Groups of cells, as in :func:`bcnmf_sc.tl.bcnmf`.
    n_topics
        Numbers of topics to try.
    n_target_topics
        Shared + target model: numbers of target topics to try (each combination with ``n_topics`` that
        leaves at least one shared topic). Default ``[max(1, k // 5)]`` for each ``k``.
    alpha
        Contrastive model: α values to try (scale-free, as in :func:`bcnmf_sc.tl.bcnmf`); include ``0`` to see
        plain NMF. Default ``[0, 0.25, 0.5, 1, 2, 4]``.
    model
        ``"shared_target"`` or ``"contrastive"``.
    n_seeds
        Number of seeds; each draws its own split and initialisation.
    n_starts
        Starts per fit of the sweep (the best by target fit is kept); the recommendation asks for at least 3.
    test_size
        Fraction of the target and of the background cells held out per seed.
    likelihood, layer, mask_var, batch_size, usage_steps, w_update, max_epochs, tol, device
        As in :func:`bcnmf_sc.tl.bcnmf`; they are passed on in the recommendation.
    max_leakage, min_stability
        Thresholds of the ``leaky`` and ``unstable`` flags.
    keep_loadings
        Store the seeds' loadings of the recommended setting only, or of every setting (``"all"``).
    warm_start
        Contrastive model: start each α from the previous α's loadings (``True``) or from a fresh random draw.
        The contrastive objective is not convex, so a warm start follows the path from the smaller α and can
        end in another optimum than a cold start at the same α.
    random_state
        Seed of the splits, the gene halves and every fit.
    progress
        Log progress at INFO level and show a progress bar over settings.
    key_added
        Key of ``adata.uns`` to write.
    copy
        Write into a copy of ``adata`` and return it instead of the table.

    Returns
    -------
    The table (below), or the modified copy of ``adata`` when ``copy=True``. Writes ``adata.uns[key_added]``:

    ``table``
        DataFrame, one row per setting: ``model``, ``n_topics``, ``n_target_topics``, ``alpha``,
        ``target_loss``, ``target_loss_se``, ``background_loss``, ``background_loss_se`` (mean and standard
        error over seeds), ``target_excess``, ``target_excess_se``, ``background_excess``,
        ``background_excess_se`` (the same minus the best setting's loss on each seed), ``null_target_loss``
        (the one-topic model), ``auroc``, ``leakage``, ``n_enriched``, ``stability``, ``stability_min``,
        ``n_fitted``, ``n_collapsed``, ``n_stuck``, ``unsafe``, ``flags`` (comma-separated flag names,
        ``""`` when none), ``acceptable`` (no flag), ``within_1se`` (in the one-standard-error set of the
        rule), ``recommended``, ``seconds`` (fitting and evaluation time over all seeds).
    ``runs``
        DataFrame, one row per setting and seed: the same held-out measures per seed, ``n_epochs``,
        ``status`` (``"ok"``, ``"stuck"``, ``"collapsed"`` or ``"unsafe"``), ``message`` and ``seconds``.
    ``tracking``
        Contrastive model: DataFrame, one row per α step, seed and topic track: ``n_topics``, ``seed``,
        ``alpha``, ``track``, ``column`` (the topic's column in that fit), ``similarity`` (cosine to the same
        track at the previous α), ``persisted`` (similarity ≥ 0.9), ``auroc``, ``leakage``, ``enriched``,
        ``state`` (``"target"`` when enriched, ``"shared"`` when its leakage exceeds ``max_leakage``, else
        ``"mixed"``) and ``event``: ``"pushed_out"`` where a track that was not a target topic changes
        (similarity < 0.9) or turns into one, ``"stabilised"`` at the first α from which the track stays a
        target topic and persists at every later α. Empty for the shared + target model.
    ``recommended``
        Dict of :func:`bcnmf_sc.tl.bcnmf` keyword arguments of the recommended setting
        (``tl.bcnmf(adata, **adata.uns[key_added]["recommended"])`` refits it on all cells), or ``None``. Its
        ``n_starts`` is at least 3, so that the refit keeps the best of several starts: a single fit can stop
        in a poor local optimum, as the sweep's ``stuck`` seeds show.
    ``loadings``
        Loadings of the recommended setting from each successful seed, seeds × genes × topics (zero rows
        outside ``mask_var``), for :func:`bcnmf_sc.tl.consensus`.
    ``kinds``
        Topic kinds of the recommended setting (``"shared"``/``"target"``/``"contrastive"``).
    ``all_loadings``
        Only with ``keep_loadings="all"``: dict from the setting's row index (as a string) to its seeds'
        loadings, seeds × genes × topics (settings without a successful seed are left out).
    ``params``
        Every argument of the sweep, the rule's thresholds and the flag descriptions.
    """
    if model not in ("shared_target", "contrastive"):
        raise ValueError(f"model must be 'shared_target' or 'contrastive', got {model!r}.")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be between 0 and 1, got {test_size!r}.")
    if keep_loadings not in ("recommended", "all"):
        raise ValueError(f"keep_loadings must be 'recommended' or 'all', got {keep_loadings!r}.")
    if not isinstance(n_seeds, (int, np.integer)) or n_seeds < 1:
        raise ValueError(f"n_seeds must be a positive integer, got {n_seeds!r}.")
    n_topics = _as_int_list(n_topics, "n_topics")
    settings = _settings(model, n_topics, n_target_topics, alpha)

    groups = resolve_groups(adata, background_key=background_key, background=background, target=target)
    if isinstance(mask_var, str) and mask_var == _DEFAULT:
        mask_var = default_mask_var(adata)
    genes = resolve_genes(adata, mask_var)
    matrix = data_matrix(adata, layer)
    for name, rows in (("target", groups.target), ("background", groups.background)):
        n_test = round(test_size * len(rows))
        if n_test < 2 or len(rows) - n_test < max(n_topics):
            raise ValueError(
                f"the {name} group has {len(rows)} cells: too few to hold out {test_size:.0%} and still fit "
                f"{max(n_topics)} topics; lower test_size or the largest n_topics."
            )
    engine_kw = dict(
        likelihood=likelihood,
        w_update=w_update,
        batch_size=batch_size,
        usage_steps=usage_steps,
        max_epochs=max_epochs,
        tol=tol,
        device=device,
    )
    eval_kw = dict(likelihood=likelihood, batch_size=batch_size, device=resolve_device(device))

    seeds = [int(s) for s in np.random.SeedSequence(random_state).generate_state(n_seeds)]
    logger.info("sweeping %d settings × %d seeds (%s model)", len(settings), n_seeds, model)
    started = time.perf_counter()
    tracking_rows: list[dict] = []
    bar = tqdm(total=len(settings) * n_seeds, desc="bcnmf_sweep", disable=not progress, leave=False)
    for seed_index, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        split = {
            name: _split(rows, test_size, rng)
            for name, rows in (("target", groups.target), ("background", groups.background))
        }
        data = {
            f"{name}_{part}": source(matrix, rows, genes, name=f"{part} {name} cells")
            for name, (train, test) in split.items()
            for part, rows in (("train", train), ("test", test))
        }
        eval_genes = _evaluation_genes(data["target_train"], likelihood)
        test_t = data["target_test"].with_cols(eval_genes)
        test_b = data["background_test"].with_cols(eval_genes)
        null_t = _null_loss(data["target_train"], test_t, eval_genes, seed, eval_kw)
        null_b = _null_loss(data["background_train"], test_b, eval_genes, seed, eval_kw)

        for n_k, path in _paths(settings, model):
            init = None
            path_loadings, path_records = [], []
            for setting in path:
                record = dict(
                    seed=seed_index, alpha=setting.alpha, null_target_loss=null_t, null_background_loss=null_b
                )
                estimator = BCNMF(
                    n_k,
                    model=model,
                    n_target_topics=setting.n_target_topics,
                    alpha=setting.alpha if setting.alpha is not None else 0.0,
                    n_starts=n_starts,
                    random_state=seed,
                    **engine_kw,
                )
                t0 = time.perf_counter()
                try:
                    estimator.fit(data["target_train"], data["background_train"], init_loadings=init)
                except UnsafeAlphaError as error:
                    record.update(status="unsafe", message=str(error))
                except CollapseError as error:
                    record.update(status="collapsed", message=str(error))
                else:
                    last = estimator.history_[-1]
                    scale = (
                        last["target_loss"]
                        + abs(estimator.alpha_ if model == "contrastive" else 1.0) * last["background_loss"]
                    )
                    record.update(
                        status="ok", message="", n_epochs=estimator.n_epochs_, objective=last["objective"], scale=scale
                    )
                    w = estimator.loadings_
                    setting.kinds = estimator.topic_kind_
                    record["loadings"] = w
                    record.update(_evaluate(w, estimator.topic_kind_, test_t, test_b, eval_genes, seed, eval_kw))
                    if model == "contrastive":
                        init = w if warm_start else None
                        path_loadings.append(w)
                        path_records.append(record)
                record["seconds"] = time.perf_counter() - t0
                setting.runs.append(record)
                bar.update(1)
                logger.info(
                    "seed %d, %s: %s (%.1fs)", seed_index, _label(setting, model), record["status"], record["seconds"]
                )
            if model == "contrastive" and path_loadings:
                tracking_rows += _track(path_loadings, path_records, n_k, seed_index, max_leakage)
        logger.info("seed %d of %d done after %.0fs", seed_index + 1, n_seeds, time.perf_counter() - started)
    bar.close()
    for setting in settings:
        _mark_stuck(setting.runs)
        setting.loadings = [r["loadings"] for r in setting.runs if r["status"] == "ok"]

    table, runs = _tables(settings, model, max_leakage, min_stability)
    recommended_index = _recommend(table, runs, model)
    table["recommended"] = False
    recommended = None
    loadings_out = kinds_out = None
    if recommended_index is not None:
        table.loc[recommended_index, "recommended"] = True
        best = settings[recommended_index]
        recommended = _recommendation(
            best,
            model=model,
            background_key=background_key,
            background=background,
            target=target,
            likelihood=likelihood,
            layer=layer,
            mask_var=mask_var,
            batch_size=batch_size,
            usage_steps=usage_steps,
            w_update=w_update,
            max_epochs=max_epochs,
            tol=tol,
            n_starts=max(n_starts, REFIT_STARTS),
            device=device,
            random_state=random_state,
        )
        loadings_out = _full_loadings(best.loadings, genes, adata.n_vars)
        kinds_out = np.asarray(best.kinds, dtype=str)
        logger.info("recommended: %s", _label(best, model))
    else:
        warnings.warn(
            "bcnmf_sweep: no setting could be recommended (every setting collapsed, was unsafe or fitted "
            "the target no better than one topic); widen the grid.",
            UserWarning,
            stacklevel=2,
        )

    params = dict(
        background_key=background_key,
        background=_plain(background),
        target=_plain(target),
        n_topics=np.asarray(n_topics),
        n_target_topics=None if n_target_topics is None else np.asarray(n_target_topics),
        alpha=None if alpha is None else np.asarray(alpha, dtype=float),
        model=model,
        n_seeds=n_seeds,
        test_size=test_size,
        likelihood=likelihood,
        layer=layer,
        mask_var=mask_var if isinstance(mask_var, str) or mask_var is None else "<mask>",
        batch_size=batch_size,
        usage_steps=usage_steps,
        w_update=w_update,
        max_epochs=max_epochs,
        tol=tol,
        n_starts=n_starts,
        stuck_tolerance=STUCK_TOLERANCE,
        max_leakage=max_leakage,
        min_stability=min_stability,
        keep_loadings=keep_loadings,
        warm_start=warm_start,
        device=device,
        random_state=random_state,
        seeds=np.asarray(seeds),
        flags=_flag_text(max_leakage, min_stability),
        seconds=time.perf_counter() - started,
    )
    tracking = pd.DataFrame(tracking_rows, columns=_TRACKING_COLUMNS)
    results = dict(
        table=table,
        runs=runs,
        tracking=tracking,
        recommended=recommended,
        loadings=loadings_out,
        kinds=kinds_out,
        params=params,
    )
    if keep_loadings == "all":
        results["all_loadings"] = {
            str(i): _full_loadings(s.loadings, genes, adata.n_vars) for i, s in enumerate(settings) if s.loadings
        }

    adata = adata.copy() if copy else adata
    adata.uns[key_added] = results
    return adata if copy else table


def _full_loadings(loadings: list[np.ndarray], genes: np.ndarray, n_vars: int) -> np.ndarray:
    """Seeds × all genes × topics, zero rows for genes outside ``mask_var``."""
    out = np.zeros((len(loadings), n_vars, loadings[0].shape[1]))
    for i, w in enumerate(loadings):
        out[i][genes] = w
    return out


# ---------------------------------------------------------------------------------------------- grid
def _as_int_list(values, name: str) -> list[int]:
    values = [values] if np.isscalar(values) else list(values)
    if not values or any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}.")
    return sorted({int(v) for v in values})


def _settings(model: str, n_topics: list[int], n_target_topics, alpha) -> list[_Setting]:
    if model == "shared_target":
        if alpha is not None:
            raise ValueError("alpha applies to model='contrastive'; the shared + target model sweeps n_target_topics.")
        settings = []
        for k in n_topics:
            options = [max(1, k // 5)] if n_target_topics is None else _as_int_list(n_target_topics, "n_target_topics")
            settings += [_Setting(k, k_t, None) for k_t in options if 1 <= k_t < k]
        if not settings:
            raise ValueError("no combination of n_topics and n_target_topics leaves at least one shared topic.")
        return settings
    if n_target_topics is not None:
        raise ValueError("n_target_topics applies to model='shared_target'; the contrastive model sweeps alpha.")
    alphas = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0] if alpha is None else ([alpha] if np.isscalar(alpha) else list(alpha))
    if not alphas or any(not np.isfinite(a) or a < 0 for a in alphas):
        raise ValueError(f"alpha must be a non-empty list of finite numbers ≥ 0, got {alphas!r}.")
    return [_Setting(k, None, float(a)) for k in n_topics for a in sorted(set(map(float, alphas)))]


def _paths(settings: list[_Setting], model: str):
    """Groups of settings fitted in sequence: one α path per ``n_topics`` (contrastive), else singletons."""
    if model == "contrastive":
        for k in dict.fromkeys(s.n_topics for s in settings):
            yield k, [s for s in settings if s.n_topics == k]  # α ascending
    else:
        for s in settings:
            yield s.n_topics, [s]


def _label(setting: _Setting, model: str) -> str:
    if model == "contrastive":
        return f"n_topics={setting.n_topics}, alpha={setting.alpha:g}"
    return f"n_topics={setting.n_topics}, n_target_topics={setting.n_target_topics}"


def _split(rows: np.ndarray, test_size: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(len(rows))
    n_test = round(test_size * len(rows))
    return np.sort(rows[order[n_test:]]), np.sort(rows[order[:n_test]])


# ---------------------------------------------------------------------------------------------- evaluation
def _evaluation_genes(train_target, likelihood: str) -> np.ndarray:
    """Genes scored on held-out cells: for Poisson those with a positive training target total.

    (The Poisson contrastive fit sets aside genes absent from the training target; every setting of a
    seed is scored on the same genes.)
    """
    if likelihood != "poisson":
        return np.arange(train_target.n_cols)
    return np.flatnonzero(train_target.summarize().col_sums > 0)


def _null_loss(train, test, eval_genes: np.ndarray, seed: int, eval_kw: dict) -> float:
    """Held-out loss of the one-topic model whose loading is the mean training profile."""
    profile = train.summarize().col_sums[eval_genes][:, None] + 1e-12
    return heldout_loss(test, profile / profile.sum(), random_state=seed, **eval_kw)


def _evaluate(
    w: np.ndarray, kinds: np.ndarray, test_t, test_b, eval_genes: np.ndarray, seed: int, eval_kw: dict
) -> dict:
    w = w[eval_genes]
    candidate = kinds == "target" if (kinds == "target").any() else np.ones(len(kinds), dtype=bool)
    background_topics = kinds != "target"
    target_loss = heldout_loss(test_t, w, random_state=seed, **eval_kw)
    background_loss = heldout_loss(test_b, w, topics=background_topics, random_state=seed, **eval_kw)
    u_t = solve_usages(test_t, w, **eval_kw)
    u_b = solve_usages(test_b, w, **eval_kw)
    names = [f"t{i}" for i in range(len(kinds))]
    enrichment = enrichment_table(u_t, u_b, names, kinds, n_permutations=_N_PERMUTATIONS, random_state=seed)
    enriched = enrichment["enriched"].to_numpy(dtype=bool)  # the criterion of tl.bcnmf, on held-out cells
    return dict(
        target_loss=target_loss,
        background_loss=background_loss,
        auroc=float(enrichment["auroc"].to_numpy()[candidate].mean()),
        leakage=float(enrichment["leakage"].to_numpy()[candidate].max()),
        n_enriched=int(enriched[candidate].sum()),
        topic_auroc=enrichment["auroc"].to_numpy(),
        topic_leakage=enrichment["leakage"].to_numpy(),
        topic_enriched=enriched,
    )


def _mark_stuck(runs: list[dict]) -> None:
    """Mark seeds whose training objective is far worse than the best seed's (poor local optimum)."""
    ok = [r for r in runs if r["status"] == "ok"]
    if len(ok) < 2:
        return
    best = min(ok, key=lambda r: r["objective"])
    for run in ok:
        excess = run["objective"] - best["objective"]
        if excess > STUCK_TOLERANCE * abs(best["scale"]):
            run["status"] = "stuck"
            run["message"] = (
                f"training objective {run['objective']:.6g} is {excess / abs(best['scale']):.1%} of the "
                f"loss scale worse than the best seed's ({best['objective']:.6g}): poor local optimum"
            )


# ---------------------------------------------------------------------------------------------- tracking
_TRACKING_COLUMNS = [
    "n_topics",
    "seed",
    "alpha",
    "track",
    "column",
    "similarity",
    "persisted",
    "auroc",
    "leakage",
    "enriched",
    "state",
    "event",
]


def _track(
    path_loadings: list[np.ndarray], records: list[dict], n_topics: int, seed: int, max_leakage: float
) -> list[dict]:
    columns, similarity = track_topics(path_loadings)
    alphas = [r["alpha"] for r in records]
    rows = []
    for track in range(n_topics):
        states, persisted = [], []
        for step, record in enumerate(records):
            col = columns[step, track]
            enriched = bool(record["topic_enriched"][col])
            leak = float(record["topic_leakage"][col])
            state = "target" if enriched else ("shared" if leak > max_leakage else "mixed")
            sim = similarity[step, track]
            states.append(state)
            persisted.append(bool(step == 0 or sim >= PERSIST_SIMILARITY))
            rows.append(
                dict(
                    n_topics=n_topics,
                    seed=seed,
                    alpha=alphas[step],
                    track=track,
                    column=int(col),
                    similarity=float(sim),
                    persisted=persisted[-1],
                    auroc=float(record["topic_auroc"][col]),
                    leakage=leak,
                    enriched=enriched,
                    state=state,
                    event="",
                )
            )
        track_rows = rows[-len(records) :]
        for step in range(1, len(records)):
            if states[step - 1] != "target" and (not persisted[step] or states[step] == "target"):
                track_rows[step]["event"] = "pushed_out"
        stable_from = None
        for step in range(len(records) - 1, -1, -1):
            if states[step] == "target" and (step == len(records) - 1 or persisted[step + 1]):
                stable_from = step
            else:
                break
        if stable_from is not None:
            row = track_rows[stable_from]
            row["event"] = "stabilised" if not row["event"] else row["event"] + ",stabilised"
    return rows


# ---------------------------------------------------------------------------------------------- tables and rule
_RUN_COLUMNS = ["target_loss", "background_loss", "auroc", "leakage", "n_enriched"]


def _tables(
    settings: list[_Setting], model: str, max_leakage: float, min_stability: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, run_rows = [], []
    # per seed, the best held-out loss over settings: losses are compared on the same held-out cells
    baseline: dict[str, dict[int, float]] = {"target": {}, "background": {}}
    for setting in settings:
        for run in setting.runs:
            if run["status"] == "ok":
                for name, best in baseline.items():
                    best[run["seed"]] = min(best.get(run["seed"], np.inf), run[f"{name}_loss"])
    excess: dict[str, tuple[float, float]] = {}
    for index, setting in enumerate(settings):
        for run in setting.runs:
            run_rows.append(
                dict(
                    setting=index,
                    model=model,
                    n_topics=setting.n_topics,
                    n_target_topics=_kt(setting),
                    alpha=_alpha(setting),
                    seed=run["seed"],
                    status=run["status"],
                    message=run["message"],
                    n_epochs=run.get("n_epochs", 0),
                    **{c: run.get(c, np.nan) for c in _RUN_COLUMNS},
                    null_target_loss=run["null_target_loss"],
                    seconds=run["seconds"],
                )
            )
        ok = [r for r in setting.runs if r["status"] == "ok"]
        for name in ("target", "background"):
            values = np.array([r[f"{name}_loss"] - baseline[name][r["seed"]] for r in ok])
            row_excess = float(values.mean()) if len(values) else np.nan
            row_excess_se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
            excess[name] = (row_excess, row_excess_se)
        row = dict(model=model, n_topics=setting.n_topics, n_target_topics=_kt(setting), alpha=_alpha(setting))
        for name in ("target_loss", "background_loss"):
            values = np.array([r[name] for r in ok])
            row[name] = float(values.mean()) if len(values) else np.nan
            row[f"{name}_se"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
        for name in ("target", "background"):
            row[f"{name}_excess"], row[f"{name}_excess_se"] = excess[name]
        row["null_target_loss"] = float(np.mean([r["null_target_loss"] for r in setting.runs]))
        row["auroc"] = float(np.mean([r["auroc"] for r in ok])) if ok else np.nan
        row["leakage"] = float(np.mean([r["leakage"] for r in ok])) if ok else np.nan
        row["n_enriched"] = float(np.median([r["n_enriched"] for r in ok])) if ok else np.nan
        stability = stability_min = np.nan
        if len(setting.loadings) > 1:
            clusters = cluster_topics(setting.loadings, kinds=setting.kinds)
            candidate = setting.kinds == "target" if (setting.kinds == "target").any() else slice(None)
            stability = float(np.mean(clusters.stability[candidate]))
            stability_min = float(np.min(clusters.stability[candidate]))
        row.update(
            stability=stability,
            stability_min=stability_min,
            n_fitted=len(ok),
            n_collapsed=sum(r["status"] == "collapsed" for r in setting.runs),
            n_stuck=sum(r["status"] == "stuck" for r in setting.runs),
            unsafe=any(r["status"] == "unsafe" for r in setting.runs),
            seconds=float(sum(r["seconds"] for r in setting.runs)),
        )
        flags = []
        if row["unsafe"]:
            flags.append("unsafe")
        if row["n_collapsed"]:
            flags.append("collapsed")
        if ok and np.mean([r["target_loss"] - r["null_target_loss"] for r in ok]) >= 0:
            flags.append("poor_fit")
        if ok and row["n_enriched"] < 1:
            flags.append("no_signal")
        if ok and row["leakage"] > max_leakage:
            flags.append("leaky")
        if np.isfinite(stability_min) and stability_min < min_stability:
            flags.append("unstable")
        if not ok and not flags:
            flags.append("collapsed")
        row["flags"] = ",".join(flags)
        row["acceptable"] = not flags
        rows.append(row)
    table = pd.DataFrame(rows)
    table.index = pd.RangeIndex(len(table), name="setting")
    return table, pd.DataFrame(run_rows)


def _kt(setting: _Setting) -> int:
    return 0 if setting.n_target_topics is None else int(setting.n_target_topics)


def _alpha(setting: _Setting) -> float:
    return np.nan if setting.alpha is None else float(setting.alpha)


_FATAL = {"unsafe", "collapsed", "poor_fit"}


def _recommend(table: pd.DataFrame, runs: pd.DataFrame, model: str) -> int | None:
    """Index of the recommended setting by the rule documented in :func:`bcnmf_sweep`, or ``None``."""
    table["within_1se"] = False
    flags = table["flags"].str.split(",").apply(lambda f: {x for x in f if x})
    pool = table[table["acceptable"]]
    if pool.empty:
        usable = table[flags.apply(lambda f: not (f & _FATAL)) & (table["n_fitted"] > 0)]
        if usable.empty:
            return None
        n_flags = flags[usable.index].apply(len)
        pool = usable[n_flags == n_flags.min()]
        warnings.warn(
            "bcnmf_sweep: every setting is flagged; recommending among the least-flagged ones "
            f"({sorted(set(pool['flags']))}). Inspect the sweep with pl.sweep and consider widening the grid.",
            UserWarning,
            stacklevel=3,
        )
    best = pool["target_excess"].idxmin()
    losses = runs[runs["status"] == "ok"].pivot(index="seed", columns="setting", values="target_loss")
    eligible = []
    for index in pool.index:
        diff = (losses[index] - losses[best]).dropna().to_numpy() if index in losses and best in losses else []
        if len(diff) == 0:
            continue
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
        if diff.mean() <= se:  # not worse than the best by more than one standard error, seed by seed
            eligible.append(index)
    eligible = pool.loc[eligible]
    table.loc[eligible.index, "within_1se"] = True
    if eligible.empty:
        return None
    # the number of topics: the fewest within one standard error of the best. Settings with that many topics
    # have as many parameters, so among them the split (or α) is chosen by a plain significance test instead:
    # any that is not worse than the best of them by more than two standard errors, seed by seed
    n_topics = int(eligible["n_topics"].min())
    same_size = pool[pool["n_topics"] == n_topics]
    anchor = same_size["target_excess"].idxmin()
    candidates = [index for index in same_size.index if _paired_excess(losses, index, anchor) <= 2.0]
    ranked = same_size.loc[candidates]
    ranked = ranked.assign(_kt=-ranked["n_target_topics"], _stab=-ranked["stability"].fillna(0.0)).sort_values(
        ["_kt", "target_excess", "_stab"], kind="stable"
    )
    return int(ranked.index[0])


def _paired_excess(losses: pd.DataFrame, index: int, anchor: int) -> float:
    """Mean held-out loss difference of ``index`` over ``anchor``, seed by seed, in standard errors."""
    if index == anchor:
        return 0.0
    if index not in losses or anchor not in losses:
        return np.inf
    diff = (losses[index] - losses[anchor]).dropna().to_numpy()
    if len(diff) == 0:
        return np.inf
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
    mean = float(diff.mean())
    if se == 0:
        return 0.0 if mean <= 0 else np.inf
    return mean / se


def _recommendation(setting: _Setting, *, model: str, **kwargs) -> dict:
    rec = dict(background_key=kwargs.pop("background_key"), background=_plain(kwargs.pop("background")))
    target = kwargs.pop("target")
    if target is not None:
        rec["target"] = _plain(target)
    rec.update(model=model, n_topics=int(setting.n_topics))
    if model == "contrastive":
        rec["alpha"] = float(setting.alpha)
    else:
        rec["n_target_topics"] = int(setting.n_target_topics)
    mask_var = kwargs.pop("mask_var")
    if mask_var is None or isinstance(mask_var, str):
        rec["mask_var"] = mask_var
    else:
        rec["mask_var"] = np.asarray(mask_var, dtype=bool)
    rec.update(kwargs)
    return rec


def _plain(value):
    if value is None or isinstance(value, (str, int, float, bool, np.generic)):
        return value
    return list(np.asarray(list(value)).tolist())
