"""The bcNMF estimator: background-contrastive and shared + target NMF fitted in minibatches."""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ._alpha import alpha_star, check_alpha
from ._batches import BatchPlan, use_sparse
from ._device import resolve_device
from ._distributed import (
    all_reduce_sum,
    any_rank,
    gather_rows,
    is_distributed,
    n_global_rows,
    random_rows,
    reduce_summary,
    shard_source,
)
from ._errors import CollapseError
from ._heldout import solve_usages
from ._init import residual_topics
from ._matching import match_topics
from ._online import IncrementalStats
from ._source import RowSource, Summary, as_source
from ._updates import (
    FLOOR,
    SideStats,
    batch_loss,
    batch_stats,
    split_gradient,
    update_usages,
)

logger = logging.getLogger(__name__)

MODELS = ("shared_target", "contrastive")
LIKELIHOODS = ("poisson", "gaussian")
W_UPDATES = ("epoch", "online")


#: residual clusters smaller than this fraction of an even share of the target cells are not used as starts
MIN_CLUSTER_SHARE = 0.5


@dataclass
class _Run:
    """State of one start."""

    w: torch.Tensor  # genes × topics, float64 master copy, columns sum to 1
    u_target: torch.Tensor  # n_t × topics
    u_background: torch.Tensor  # n_b × topics (zero columns for target topics in shared + target)
    history: list[dict] = field(default_factory=list)
    collapsed: str | None = None  # reason, when the run collapsed
    converged: bool = False
    seed: int = 0


def _null_loss(summary: Summary, n_cells: int, likelihood: str) -> float:
    """Loss of the rank-one fit (each cell = its library size × the mean profile), per cell."""
    if n_cells == 0:
        return float("nan")
    if likelihood == "poisson":
        total = summary.col_sums.sum()
        c = summary.col_sums[summary.col_sums > 0]  # Σ r log r over cells is summary.sum_rlogr (all ranks)
        loss = summary.sum_xlogx - summary.sum_rlogr - np.sum(c * np.log(c)) + total * math.log(max(total, 1e-300))
    else:
        loss = summary.sum_sq - np.sum(summary.col_sums**2) / n_cells
    return float(max(loss, 0.0)) / n_cells


def _loss_scale(summary: Summary, n_cells: int, likelihood: str) -> float:
    """Per-cell size of the data (total counts for Poisson, Σ x² for squared error)."""
    total = summary.col_sums.sum() if likelihood == "poisson" else summary.sum_sq
    return float(total) / max(n_cells, 1)


class BCNMF:
    """Background-contrastive non-negative matrix factorization.

    Target cells ``X`` (cells × genes) and background cells ``Y`` share non-negative loadings
    ``W`` (genes × topics, every column sums to 1) with usages ``U_X``, ``U_Y``.

    * ``model="shared_target"`` (default): ``X ≈ U_X Wᵀ`` with all topics, ``Y ≈ U_Y W_sᵀ`` with the
      shared topics only; minimises ``D(X‖X̂)/n_t + D(Y‖Ŷ)/n_b``. Bounded below, cannot collapse. The
      last ``n_target_topics`` topics are what the background lacks.
    * ``model="contrastive"``: the paper's ``D(X‖X̂)/n_t − α·D(Y‖Ŷ)/n_b``, ``U_Y`` the best background
      fit. Our α is scale-free; the paper's α equals ``α · n_t / n_b``.

    Parameters
    ----------
    n_topics
        Total number of topics ``K``.
    model
        ``"shared_target"`` or ``"contrastive"``.
    n_target_topics
        Shared + target model only: how many of the ``n_topics`` are target topics
        (default ``max(1, n_topics // 5)``); the rest are shared.
    alpha
        Contrastive model only: weight of the background loss (scale-free, see above).
    likelihood
        ``"poisson"`` (generalised KL, raw counts) or ``"gaussian"`` (squared error, continuous data).
    w_update
        ``"epoch"``: exact full-data multiplicative update of ``W`` once per pass;
        ``"online"``: after every minibatch, from running statistics.
    batch_size
        Cells per minibatch (target and background together); only one batch is dense at a time.
    usage_steps
        Multiplicative updates of a batch's usages each time it is visited.
    max_epochs, tol, patience
        Stop when the relative change of the objective stays below ``tol`` for ``patience`` epochs,
        or after ``max_epochs`` passes.
    n_starts
        Independent starts; the best non-collapsed run by target fit is kept. One start can land in a
        poor local optimum where target topics mix two target programs (seen on the β series); the
        target fit tells it apart, which is why :func:`bcnmf_sc.tl.bcnmf` defaults to three starts.
    unsafe_alpha
        Poisson contrastive only: ``"raise"`` (default) refuses α ≥ 0.5·α*, ``"clip"`` lowers it to
        just below that limit with a warning.
    device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    dtype
        Compute dtype of batches and factors on the device (``torch.float32`` by default);
        per-epoch sums are accumulated in float64.
    random_state
        Seed of the private generators (initialisation, batch order); no global RNG is touched.
    progress
        Show a progress bar over epochs.

    Attributes
    ----------
    loadings_ : ndarray (n_genes, n_topics)
        ``W``; columns sum to 1; zero rows for genes set aside (see ``excluded_genes_``).
    target_usages_, background_usages_ : ndarray
        Fitted usages of the target and background cells.
    topic_kind_ : ndarray of str
        ``"shared"`` or ``"target"`` per topic (shared + target model), ``"contrastive"`` otherwise.
    alpha_star_, alpha_ : float
        α* of the data and the α used (after the safety rule).
    excluded_genes_ : ndarray of int
        Genes set aside (Poisson contrastive: zero target total but expressed in the background).
    history_ : list of dict
        Per epoch of the kept run: ``epoch``, ``stage``, ``objective``, ``target_loss``,
        ``background_loss`` (per cell), ``seconds``.
    n_epochs_, converged_ : int, bool
    start_target_losses_ : ndarray
        Final target loss per start (NaN for collapsed starts); ``collapsed_starts_`` lists reasons.
    topic_stability_ : ndarray (n_topics,)
        Mean cosine similarity of each topic to its Hungarian match in the other non-collapsed starts
        (NaN when there is only one).
    """

    _contrastive_step = 0.5  # exponent of the W ratio when the background term is subtracted
    _background_epochs = 50  # most epochs of the background-only stage of the shared + target model
    _target_start = "clusters"  # or "mean": every target topic from the mean residual (benchmarks/bench_init.py)

    def __init__(
        self,
        n_topics: int = 10,
        *,
        model: str = "shared_target",
        n_target_topics: int | None = None,
        alpha: float = 1.0,
        likelihood: str = "poisson",
        w_update: str = "epoch",
        batch_size: int = 2048,
        usage_steps: int = 2,
        max_epochs: int = 200,
        tol: float = 1e-4,
        patience: int = 3,
        n_starts: int = 1,
        unsafe_alpha: str = "raise",
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
        random_state: int = 0,
        progress: bool = False,
    ):
        self.n_topics = n_topics
        self.model = model
        self.n_target_topics = n_target_topics
        self.alpha = alpha
        self.likelihood = likelihood
        self.w_update = w_update
        self.batch_size = batch_size
        self.usage_steps = usage_steps
        self.max_epochs = max_epochs
        self.tol = tol
        self.patience = patience
        self.n_starts = n_starts
        self.unsafe_alpha = unsafe_alpha
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}.")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}.")
        if self.w_update not in W_UPDATES:
            raise ValueError(f"w_update must be one of {W_UPDATES}, got {self.w_update!r}.")
        for name in ("n_topics", "batch_size", "usage_steps", "max_epochs", "patience", "n_starts"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"tol must be a number ≥ 0, got {self.tol!r}.")
        if self.model == "shared_target":
            k_t = self.n_target_topics_
            if not 1 <= k_t < self.n_topics:
                raise ValueError(
                    f"n_target_topics must be between 1 and n_topics − 1 = {self.n_topics - 1} "
                    f"(at least one shared and one target topic), got {k_t}."
                )

    @property
    def n_target_topics_(self) -> int:
        if self.model != "shared_target":
            return 0
        return self.n_target_topics if self.n_target_topics is not None else max(1, self.n_topics // 5)

    def _check_groups(self, n_target: int, n_background: int, n_genes: int) -> None:
        k, k_bg = self.n_topics, self.n_topics - self.n_target_topics_
        if n_target == 0:
            raise ValueError("the target group is empty: no target cells to fit.")
        if n_background == 0:
            raise ValueError("the background group is empty: no background cells to contrast against.")
        if n_target < k:
            raise ValueError(f"the target group has {n_target} cells, fewer than n_topics={k}.")
        if n_background < k_bg:
            raise ValueError(f"the background group has {n_background} cells, fewer than its {k_bg} topics.")
        if n_genes < k:
            raise ValueError(f"only {n_genes} genes can be fitted, fewer than n_topics={k}; lower n_topics.")

    # ------------------------------------------------------------------ fit
    def fit(self, X, Y, *, init_loadings: np.ndarray | None = None) -> BCNMF:
        """Fit on target cells ``X`` and background cells ``Y`` (cells × genes, same genes).

        ``X`` and ``Y`` may be numpy arrays, scipy sparse matrices (any numeric dtype), backed h5ad
        matrices or :class:`~bcnmf_sc.engine.RowSource` selections of one matrix. ``init_loadings``
        (genes × topics, non-negative) warm-starts every start from these loadings instead of a random
        draw (e.g. along an α path); usages still start from the seeded draw.
        """
        self._check_params()
        target, background = as_source(X, name="target data"), as_source(Y, name="background data")
        if target.n_cols != background.n_cols:
            raise ValueError(
                f"target and background have different numbers of genes ({target.n_cols} vs {background.n_cols})."
            )
        self.device_ = resolve_device(self.device)
        # data-parallel (torch.distributed): each rank keeps its own shard of the cells
        target, background = shard_source(target), shard_source(background)
        n_target = int(all_reduce_sum(torch.tensor(float(target.n_rows))).item())
        n_background = int(all_reduce_sum(torch.tensor(float(background.n_rows))).item())
        self._check_groups(n_target, n_background, target.n_cols)
        self.n_genes_in_ = target.n_cols

        t_summary, b_summary = target.summarize(), background.summarize()
        for summary in (t_summary, b_summary):
            reduce_summary(summary)
        if self.likelihood == "poisson" and not (t_summary.is_integer and b_summary.is_integer):
            warnings.warn(
                "likelihood='poisson' expects raw counts but the data has non-integer values; the fit "
                "proceeds (generalised KL is defined for any non-negative data). Use likelihood='gaussian' "
                "for log-normalised data.",
                UserWarning,
                stacklevel=2,
            )

        if not t_summary.col_sums.any():
            raise ValueError(f"{target.name} contains only zeros (over the genes fitted): there is nothing to fit.")

        # genes set aside: with the Poisson contrastive objective a gene absent from the target but
        # expressed in the background makes every α > 0 unbounded (α* = 0)
        excluded = np.zeros(self.n_genes_in_, dtype=bool)
        if self.model == "contrastive" and self.likelihood == "poisson" and self.alpha > 0:
            excluded = (t_summary.col_sums == 0) & (b_summary.col_sums > 0)
            if excluded.any():
                logger.warning(
                    "%d genes have zero target counts but background counts; their loadings are fixed at 0 "
                    "(they would make every α > 0 unbounded).",
                    int(excluded.sum()),
                )
        kept = np.flatnonzero(~excluded)
        self._check_groups(n_target, n_background, len(kept))
        self.excluded_genes_ = np.flatnonzero(excluded)
        self._kept_genes = kept

        if self.likelihood == "poisson":
            self.alpha_star_ = alpha_star(t_summary.col_sums[kept], b_summary.col_sums[kept], n_target, n_background)
        else:
            self.alpha_star_ = float("inf")
        if self.model == "contrastive":
            limit_known = self.likelihood == "poisson"
            self.alpha_ = check_alpha(float(self.alpha), self.alpha_star_ if limit_known else float("inf"),
                                      on_unsafe=self.unsafe_alpha)
        else:
            self.alpha_ = 0.0

        if excluded.any():
            # the fit sees only the kept genes, so the summaries (row sums, Σ x log x behind the rank-one
            # losses of the collapse check) must describe those genes, not the whole matrix
            target, background = target.with_cols(kept), background.with_cols(kept)
            t_summary, b_summary = target.summarize(), background.summarize()
            for summary in (t_summary, b_summary):
                reduce_summary(summary)
        self._n_target, self._n_background = n_target, n_background
        self._target_expressed = t_summary.col_sums > 0
        self._null_target = _null_loss(t_summary, n_target, self.likelihood)
        self._null_background = _null_loss(b_summary, n_background, self.likelihood)
        # data scale per cell (counts, or squared values): slack for the collapse checks, whose rank-one
        # reference loss is ~0 when the cells of a group are (near) identical. A real collapse sends
        # loadings to the floor (1e-20), i.e. a loss of ~40 × scale on the genes concerned, far above it.
        self._scale_target = _loss_scale(t_summary, n_target, self.likelihood)
        self._scale_background = _loss_scale(b_summary, n_background, self.likelihood)

        self._init_loadings = None
        if init_loadings is not None:
            init = np.asarray(init_loadings, dtype=np.float64)
            if init.shape != (self.n_genes_in_, self.n_topics) or not np.all(np.isfinite(init)) or np.any(init < 0):
                raise ValueError(f"init_loadings must be finite, non-negative, of shape {(self.n_genes_in_, self.n_topics)}.")
            init = init[kept] + 1e-12
            self._init_loadings = torch.from_numpy(init / init.sum(axis=0, keepdims=True))
        seeds = np.random.SeedSequence(self.random_state).generate_state(self.n_starts)
        self._plans = self._make_plans(target, background, t_summary, b_summary)
        try:
            runs = [self._fit_start(target, background, t_summary, b_summary, int(seed)) for seed in seeds]
        finally:
            self._plans = {}  # frees the prepared batches
        self._select(runs)
        if is_distributed():  # every rank ends with the usages of all cells, in the caller's order
            self.target_usages_ = gather_rows(self.target_usages_, target)
            self.background_usages_ = gather_rows(self.background_usages_, background)
        return self

    def fit_transform(self, X, Y) -> tuple[np.ndarray, np.ndarray]:
        """Fit and return ``(target_usages_, background_usages_)``."""
        self.fit(X, Y)
        return self.target_usages_, self.background_usages_

    # ------------------------------------------------------------------ one start
    def _fit_start(self, target: RowSource, background: RowSource, t_sum: Summary, b_sum: Summary, seed: int) -> _Run:
        device, dtype = self.device_, self.dtype
        generator = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        n_genes, k = target.n_cols, self.n_topics
        k_t = self.n_target_topics_
        k_s = k - k_t

        profile = torch.from_numpy(t_sum.col_sums / max(self._n_target, 1) + b_sum.col_sums / max(self._n_background, 1))
        profile = profile + profile.mean() * 1e-3 + 1e-12

        def random_loadings(base: torch.Tensor, n: int) -> torch.Tensor:
            w = base[:, None] * torch.rand(n_genes, n, generator=generator, dtype=torch.float64)
            return w / w.sum(dim=0, keepdim=True)

        def random_usages(row_sums: np.ndarray, n: int, source: RowSource) -> torch.Tensor:
            # drawn for every cell of the unsharded data, so a data-parallel fit starts where one process does
            scale = torch.from_numpy(np.maximum(row_sums, 1e-6))[:, None] / n
            return scale * (0.5 + random_rows(generator, source, n))

        # on the device in the compute dtype right away: float64 cells × topics copies would stay alive
        # through the fit (80 MB at 1M cells and K = 10)
        u_target = random_usages(t_sum.row_sums, k, target).to(device, dtype)
        u_background = random_usages(b_sum.row_sums, k, background).to(device, dtype)
        if self._init_loadings is not None:  # warm start: skip the background-only stage
            if self.model == "shared_target":
                u_background[:, k_s:] = 0
            run = _Run(self._init_loadings.clone(), u_target, u_background, seed=seed)
            self._epochs(run, target, background, rng, stage="fit", max_epochs=self.max_epochs)
            return run
        if self.model == "contrastive":
            run = _Run(random_loadings(profile, k), u_target, u_background, seed=seed)
            self._epochs(run, target, background, rng, stage="fit", max_epochs=self.max_epochs)
            return run

        # shared + target: learn the shared topics on the background alone, then add target topics
        # initialised on what the shared topics leave unexplained in the target
        run = _Run(random_loadings(profile, k_s), u_target[:, :k_s].contiguous(), u_background[:, :k_s].contiguous(),
                   seed=seed)
        del u_target, u_background
        init_epochs = max(1, min(self.max_epochs // 4, self._background_epochs))
        self._epochs(run, None, background, rng, stage="background", max_epochs=init_epochs)
        if run.collapsed:
            return run
        w_shared = run.w.to(device, dtype)
        explained = torch.zeros(n_genes, dtype=torch.float64)
        for positions, x in self._plans[id(target)].epoch():
            u = update_usages(x, run.u_target[positions], w_shared, likelihood=self.likelihood, n_steps=20, mask=None)
            run.u_target[positions] = u
            explained += (u.sum(dim=0).double() @ run.w.T).cpu()
        explained = all_reduce_sum(explained)
        residual = (torch.from_numpy(t_sum.col_sums) - explained).clamp_min(0) / max(self._n_target, 1)
        residual = residual + residual.mean() * 1e-2 + 1e-12
        # each target topic starts from its own cluster of the target cells' residuals (see _init), or, when
        # the clusters are not usable, all of them from the mean residual times noise
        w_target = random_loadings(residual, k_t)
        clustered = False
        if self._target_start == "clusters" and k_t > 1:
            centres, sizes = residual_topics(self._plans[id(target)].epoch, run.u_target, w_shared, w_target,
                                             pearson=self.likelihood == "poisson", reduce=all_reduce_sum)
            # a cluster far below an even share is a handful of outlying cells, not a program
            clustered = float(sizes.min()) >= MIN_CLUSTER_SHARE * self._n_target / k_t
            if clustered:
                w_target = 0.9 * centres / centres.sum(dim=0, keepdim=True) + 0.1 * (residual / residual.sum())[:, None]
            logger.debug("start %d: residual clusters of sizes %s%s", seed, sizes.tolist(),
                         "" if clustered else "; target topics start from the mean residual")
        leftover = np.maximum(t_sum.row_sums - run.u_target.sum(dim=1).double().cpu().numpy(), 0.1 * t_sum.row_sums)
        run.w = torch.cat([run.w, w_target], dim=1)
        run.u_target = torch.cat([run.u_target, random_usages(leftover, k_t, target).to(device, dtype)], dim=1)
        if clustered:  # usages that agree with the distinct target topics, before W moves
            w_start = run.w.to(device, dtype)
            for positions, x in self._plans[id(target)].epoch():
                run.u_target[positions] = update_usages(x, run.u_target[positions], w_start,
                                                        likelihood=self.likelihood, n_steps=20, mask=None)
        run.u_background = torch.cat(
            [run.u_background, torch.zeros(run.u_background.shape[0], k_t, device=device, dtype=dtype)], dim=1)
        self._epochs(run, target, background, rng, stage="fit", max_epochs=self.max_epochs)
        return run

    def _n_batches(self, n_rows: int) -> int:
        total = self._n_target + self._n_background
        return max(1, math.ceil(total / self.batch_size))

    def _to_device(self, block: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(block)
        if self.device_.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device_, self.dtype, non_blocking=True)

    def _make_plans(self, target: RowSource, background: RowSource, t_sum: Summary, b_sum: Summary) -> dict:
        """Fixed batches of both groups for the whole fit (prepared sparse batches are reused every epoch)."""
        n_steps = self._n_batches(0)
        plans = {}
        for source, summary in ((target, t_sum), (background, b_sum)):
            sparse = use_sparse(summary.nnz, n_global_rows(source), source.n_cols)
            local_nnz = summary.nnz * source.n_rows // max(n_global_rows(source), 1)
            # contiguous batches in both modes: in-memory CSR batches are then views (no copy), a backed
            # file is read in runs, and online updates visit the batches in a new order every epoch
            plans[id(source)] = BatchPlan(source, n_steps, device=self.device_, dtype=self.dtype, sparse=sparse,
                                          expected_nnz=local_nnz)
        return plans

    def _background_weight(self) -> float:
        """Signed weight of the background loss per background cell."""
        return (1.0 if self.model == "shared_target" else -self.alpha_) / self._n_background

    # ------------------------------------------------------------------ epochs
    def _epochs(self, run: _Run, target: RowSource | None, background: RowSource, rng, *, stage: str, max_epochs: int) -> None:
        """Run passes over the data until convergence, ``max_epochs`` or collapse."""
        likelihood, device = self.likelihood, self.device_
        k = run.w.shape[1]
        k_s = k - self.n_target_topics_ if (self.model == "shared_target" and stage == "fit") else k
        bg_mask = torch.ones(k, device=device, dtype=self.dtype)
        bg_mask[k_s:] = 0
        bg_weight = self._background_weight() if target is not None else 1.0 / self._n_background
        online = self.w_update == "online"
        w_power = self._contrastive_step if bg_weight < 0 else 1.0  # damped steps where the background term pulls W
        n_steps = self._n_batches(0)
        if online:  # latest statistics of every batch (incremental EM), see _online.py
            t_inc = IncrementalStats(n_steps, run.w.shape[0], k, likelihood, device) if target is not None else None
            b_inc = IncrementalStats(n_steps, run.w.shape[0], k, likelihood, device)
        quiet_epochs = 0
        previous = None
        bar = tqdm(total=max_epochs, desc=f"bcNMF ({stage})", disable=not self.progress, leave=False)
        for epoch in range(max_epochs):
            start = time.perf_counter()
            w = run.w.to(device, self.dtype)
            epoch_t = SideStats.zeros(w.shape[0], k, likelihood, device)
            epoch_b = SideStats.zeros(w.shape[0], k, likelihood, device)
            t_plan = self._plans[id(target)] if target is not None else None
            b_plan = self._plans[id(background)]
            # online: batches in a new random order every epoch; epoch: the order does not matter
            t_order = rng.permutation(n_steps) if online and t_plan is not None else np.arange(n_steps)
            b_order = rng.permutation(n_steps) if online else np.arange(n_steps)
            for step in range(n_steps):
                sides = []
                if t_plan is not None:
                    stats = self._visit(t_plan, t_order[step], run.u_target, w, None)
                    epoch_t.add(stats)
                    sides.append(stats)
                stats = self._visit(b_plan, b_order[step], run.u_background, w, bg_mask)
                epoch_b.add(stats)
                sides.append(stats)
                if online and is_distributed():  # one step of all ranks together
                    for stats in sides:
                        stats.data, stats.model = all_reduce_sum(stats.data), all_reduce_sum(stats.model)
                        stats.n_cells = int(all_reduce_sum(torch.tensor(float(stats.n_cells))).item())
                if online:  # replace these batches' statistics, then move W with the sums over all batches
                    w_master = run.w.to(device)
                    if t_inc is not None:
                        t_inc.replace(int(t_order[step]), sides[0], w_master)
                    b_inc.replace(int(b_order[step]), sides[-1], w_master)
                    if epoch == 0:  # the first pass only fills the statistics (then one exact update)
                        continue
                    inc_sides = [(b_inc.at(w_master), bg_weight)]
                    if t_inc is not None:
                        inc_sides.append((t_inc.at(w_master), 1.0 / self._n_target))
                    numer, denom = split_gradient(w_master, inc_sides, likelihood)
                    ratio = numer / denom.clamp_min(1e-30)
                    run.w = (w_master * ratio.pow(w_power)).clamp_min(FLOOR).cpu()
                    w = run.w.to(device, self.dtype)
            epoch_t.data, epoch_b.data = all_reduce_sum(epoch_t.data), all_reduce_sum(epoch_b.data)
            epoch_t.model, epoch_b.model = all_reduce_sum(epoch_t.model), all_reduce_sum(epoch_b.model)
            epoch_t.loss, epoch_b.loss = all_reduce_sum(epoch_t.loss), all_reduce_sum(epoch_b.loss)
            if not online or epoch == 0:
                sides = [(epoch_b, bg_weight)]
                if target is not None:
                    sides.append((epoch_t, 1.0 / self._n_target))
                w_master = run.w.to(device)
                numer, denom = split_gradient(w_master, sides, likelihood)
                ratio = numer / denom.clamp_min(1e-30)
                run.w = (w_master * ratio.pow(w_power)).clamp_min(FLOOR).cpu()
            scale = run.w.sum(dim=0)
            self._normalize(run)
            if online:  # the stored statistics follow the usages' new scale
                for inc in (t_inc, b_inc):
                    if inc is not None:
                        inc.rescale(scale)

            target_loss = float(epoch_t.loss) / self._n_target if target is not None else float("nan")
            background_loss = float(epoch_b.loss) / self._n_background
            if target is None:
                objective = background_loss
            else:
                objective = target_loss + bg_weight * self._n_background * background_loss
            run.history.append(
                dict(epoch=len(run.history) + 1, stage=stage, objective=objective, target_loss=target_loss,
                     background_loss=background_loss, seconds=time.perf_counter() - start)
            )
            bar.update(1)
            bar.set_postfix(objective=f"{objective:.5g}")
            logger.debug("start %d, %s epoch %d: objective %.6g", run.seed, stage, epoch + 1, objective)
            reason = self._collapse_reason(run, target_loss, background_loss, epoch)
            if reason:
                run.collapsed = reason
                logger.warning("start with seed %d collapsed at epoch %d: %s", run.seed, epoch + 1, reason)
                break
            if previous is not None:
                scale = abs(target_loss if target is not None else 0.0) + abs(bg_weight) * self._n_background * background_loss
                change = abs(objective - previous) / max(scale, 1e-30)
                quiet_epochs = quiet_epochs + 1 if change < self.tol else 0
                if quiet_epochs >= self.patience:
                    run.converged = True
                    break
            previous = objective
        bar.close()

    def _visit(self, plan: BatchPlan, i: int, usages: torch.Tensor, w: torch.Tensor, mask) -> SideStats:
        """Update the usages of batch ``i`` of ``plan`` in place and return its statistics (zeros if empty)."""
        positions = plan.positions[i]
        if len(positions) == 0:  # a rank's shard may run out of cells before the others
            return SideStats.zeros(w.shape[0], w.shape[1], self.likelihood, w.device, dtype=w.dtype)
        x = plan.get(i)
        index = torch.from_numpy(positions).to(usages.device)
        u = update_usages(x, usages[index], w, likelihood=self.likelihood, n_steps=self.usage_steps, mask=mask)
        usages[index] = u
        return batch_stats(x, u, w, likelihood=self.likelihood)

    @staticmethod
    def _normalize(run: _Run) -> None:
        """Columns of W sum to 1; the scale moves into the usages (the fit is unchanged)."""
        scale = run.w.sum(dim=0)
        run.w = run.w / scale
        device_scale = scale.to(run.u_target.device, run.u_target.dtype)
        run.u_target *= device_scale
        run.u_background *= device_scale

    def _collapse_reason(self, run: _Run, target_loss: float, background_loss: float, epoch: int) -> str | None:
        finite = bool(torch.isfinite(run.w).all() and torch.isfinite(run.u_target).all()
                      and torch.isfinite(run.u_background).all())
        if any_rank(not finite) or not np.isfinite(background_loss):
            return "non-finite values in the factors or losses"
        # a contrastive fit may trade target fit for contrast, so only a gross excess counts
        # (shared + target is a plain, bounded minimisation, and squared error is bounded for every α: a poor
        # target fit there is the chosen trade-off, not a runaway)
        if self.model == "contrastive" and self.likelihood == "poisson" and epoch >= 2 and np.isfinite(target_loss) and target_loss > 10.0 * self._null_target + 0.25 * self._scale_target + 1e-12:
            return (f"target loss per cell {target_loss:.4g} rose far above that of a rank-one fit "
                    f"({self._null_target:.4g})")
        if self.model == "contrastive" and self.alpha_ > 0 and background_loss > 10.0 * self._null_background + 5.0 * self._scale_background + 1e-12:
            return (f"background loss per cell {background_loss:.4g} exploded (rank-one fit: "
                    f"{self._null_background:.4g}): loadings of background genes were driven to zero")
        # an expressed gene no topic can produce (squared error allows it); not in the background-only stage
        # of shared + target (NaN target loss), where target-only genes wait for the target topics
        if self.likelihood == "poisson" and np.isfinite(target_loss):
            expressed = torch.from_numpy(self._target_expressed)
            at_floor = (run.w[expressed].amax(dim=1) <= 1e3 * FLOOR).double().mean().item()  # amax: max(dim) also builds indices and was ~25 ms a call on 2 busy cores
            if at_floor > 0.5:
                return f"{at_floor:.0%} of the genes expressed in the target have all loadings at the floor"
        return None

    # ------------------------------------------------------------------ choose among starts
    def _select(self, runs: list[_Run]) -> None:
        final_losses = np.array([np.nan if r.collapsed else r.history[-1]["target_loss"] for r in runs])
        good = [i for i, r in enumerate(runs) if not r.collapsed]
        self.start_target_losses_ = final_losses
        self.collapsed_starts_ = [r.collapsed for r in runs]
        if not good:
            raise CollapseError(
                f"all {len(runs)} start(s) collapsed ({runs[0].collapsed}). "
                + (f"The contrastive objective has no minimum at alpha={self.alpha_:g} (α* = {self.alpha_star_:.4g}); "
                   "lower alpha or use model='shared_target'." if self.model == "contrastive" else
                   "Check the data (scale, outliers) or change n_topics, likelihood or the seed.")
            )
        # contrastive: the target fit (the background term is what the contrast trades away);
        # shared + target: the objective itself, so target topics that soak up shared structure do not win
        criterion = "target_loss" if self.model == "contrastive" else "objective"
        best = min(good, key=lambda i: runs[i].history[-1][criterion])
        run = runs[best]
        loadings = np.zeros((self.n_genes_in_, self.n_topics))
        loadings[self._kept_genes] = run.w.numpy()
        self.loadings_ = loadings
        self.target_usages_ = run.u_target.double().cpu().numpy()
        self.background_usages_ = run.u_background.double().cpu().numpy()
        self.history_ = run.history
        self.n_epochs_ = len(run.history)
        self.converged_ = run.converged
        self.best_start_ = best
        if self.model == "shared_target":
            k_s = self.n_topics - self.n_target_topics_
            self.topic_kind_ = np.array(["shared"] * k_s + ["target"] * self.n_target_topics_)
        else:
            self.topic_kind_ = np.array(["contrastive"] * self.n_topics)
        stability = np.full(self.n_topics, np.nan)
        others = [runs[i].w.numpy() for i in good if i != best]
        if others:
            sims = np.stack([match_topics(run.w.numpy(), other)[1] for other in others])
            stability = sims.mean(axis=0)
        self.topic_stability_ = stability
        self.start_loadings_ = [runs[i].w.numpy() for i in good]
        if not run.converged:
            logger.info("stopped after max_epochs=%d without reaching tol=%g", self.max_epochs, self.tol)

    # ------------------------------------------------------------------ projection
    def transform(self, X, *, max_steps: int = 200, tol: float = 1e-5) -> np.ndarray:
        """Usages of new cells with the loadings fixed (all topics available), cells × topics."""
        if not hasattr(self, "loadings_"):
            raise RuntimeError("this BCNMF instance is not fitted yet; call fit first.")
        source = as_source(X, name="data")
        if source.n_cols != self.n_genes_in_:
            raise ValueError(f"data has {source.n_cols} genes but the model was fitted on {self.n_genes_in_}.")
        summary = source.summarize()  # validates values
        source = source.with_cols(self._kept_genes) if len(self._kept_genes) < self.n_genes_in_ else source
        return solve_usages(source, self.loadings_[self._kept_genes], likelihood=self.likelihood,
                            batch_size=self.batch_size, max_steps=max_steps, tol=tol, device=self.device_,
                            dtype=self.dtype, sparse=use_sparse(summary.nnz, source.n_rows, source.n_cols))

    def score(self, X, *, usages: np.ndarray | None = None) -> float:
        """Loss per cell of ``X`` under the fitted loadings (usages solved by :meth:`transform` if not given)."""
        source = as_source(X, name="data")
        usages = self.transform(source) if usages is None else usages
        source = source.with_cols(self._kept_genes) if len(self._kept_genes) < self.n_genes_in_ else source
        w = torch.from_numpy(self.loadings_[self._kept_genes]).to(self.device_, self.dtype)
        total = 0.0
        plan = BatchPlan(source, math.ceil(source.n_rows / self.batch_size), device=self.device_, dtype=self.dtype,
                         sparse=source.is_sparse, transpose=False, cache=False)
        for positions, x in plan.epoch():
            u = torch.from_numpy(usages[positions]).to(self.device_, self.dtype)
            total += float(batch_loss(x, u, w, likelihood=self.likelihood))
        return total / max(source.n_rows, 1)
