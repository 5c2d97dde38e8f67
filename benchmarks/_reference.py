"""Reference implementation of published bcNMF, for benchmark comparisons only.

This module reimplements the background-contrastive NMF algorithm of Li, Yang & Li
(arXiv:2602.22387) directly from the paper's equations. It copies the published algorithm's
*cost model* on purpose:

* ``X`` (target, n_t x g) and ``Y`` (background, n_b x g) become dense torch tensors up front,
  even when they come in as sparse matrices;
* the Poisson updates use dense all-ones matrices (``torch.ones(n, g)``) where ``bcnmf_sc`` uses
  a broadcast of column sums;
* every iteration builds dense n x g reconstructions ``X_hat = U_X W^T`` and ``Y_hat = U_Y W^T``,
  so work and memory grow with n * g, not with nnz;
* the objective is the paper's unscaled ``L = D(X || U_X W^T) - alpha * D(Y || U_Y W^T)``;
* it does not fix the scale of ``W`` (no column normalisation) and does not guard against the
  unbounded objective once ``alpha`` is past alpha*. With ``likelihood="poisson"`` the W update
  uses the published damping ``ratio ** 0.5``.

It is here so that benchmarks can compare ``bcnmf_sc`` with "the published algorithm as written"
for speed, memory and the quality and stability of the fit. It is not part of the package and
should not be used to analyse data.

Orientation is AnnData's: cells x genes. ``W`` is g x K (loadings), ``U_X`` is n_t x K and
``U_Y`` is n_b x K (usages). Reconstructions are ``X_hat = U_X @ W.T``.

Multiplicative updates per iteration (``eps`` only guards division):

Poisson (generalised KL)::

    U_X <- U_X * ((X / X_hat) @ W) / (ones(n_t, g) @ W)
    U_Y <- U_Y * ((Y / Y_hat) @ W) / (ones(n_b, g) @ W)
    W   <- W * ratio ** damping,
    ratio = ((X / X_hat)^T U_X + alpha * ones(g, n_b) @ U_Y)
            / (ones(g, n_t) @ U_X + alpha * (Y / Y_hat)^T U_Y)

Gaussian (squared Frobenius)::

    U   <- U * (X W) / (U W^T W)              (U_X with X, U_Y with Y)
    W   <- W * ratio ** damping,
    ratio = (X^T U_X + alpha * W U_Y^T U_Y) / (W U_X^T U_X + alpha * Y^T U_Y)

``damping=1.0`` gives plain (undamped) multiplicative updates.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch

__all__ = [
    "EPS",
    "reference_fit",
    "reference_pass_seconds",
    "sklearn_kl_fit",
    "kl_divergence",
    "frobenius_loss",
]

EPS = 1e-10


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _to_dense_tensor(A: Any, dtype: torch.dtype) -> torch.Tensor:
    """Convert numpy / scipy sparse / torch input to a dense torch tensor (as published)."""
    if isinstance(A, torch.Tensor):
        return A.to(dtype=dtype).to_dense() if A.is_sparse else A.to(dtype=dtype)
    if sp.issparse(A):
        A = A.toarray()
    return torch.as_tensor(np.asarray(A), dtype=dtype)


def kl_divergence(A: torch.Tensor, A_hat: torch.Tensor) -> float:
    """Generalised KL divergence ``sum(a log(a / a_hat) - a + a_hat)`` with ``0 log 0 = 0``."""
    val = torch.xlogy(A, A) - torch.xlogy(A, A_hat) - A + A_hat
    return float(val.sum(dtype=torch.float64))


def frobenius_loss(A: torch.Tensor, A_hat: torch.Tensor) -> float:
    """Squared Frobenius norm ``sum((a - a_hat) ** 2)``."""
    return float(((A - A_hat) ** 2).sum(dtype=torch.float64))


def _losses(X, Y, W, U_X, U_Y, alpha, likelihood):
    D = kl_divergence if likelihood == "poisson" else frobenius_loss
    t = D(X, U_X @ W.T)
    b = D(Y, U_Y @ W.T)
    return t, b, t - alpha * b


def _init(n_t, n_b, g, K, random_state, dtype):
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(random_state))
    W = torch.rand(g, K, generator=gen, dtype=dtype)
    U_X = torch.rand(n_t, K, generator=gen, dtype=dtype)
    U_Y = torch.rand(n_b, K, generator=gen, dtype=dtype)
    return W, U_X, U_Y


def _setup(X, Y, n_topics, likelihood, random_state, dtype):
    if likelihood not in ("poisson", "gaussian"):
        raise ValueError(f"likelihood must be 'poisson' or 'gaussian', got {likelihood!r}")
    X = _to_dense_tensor(X, dtype)
    Y = _to_dense_tensor(Y, dtype)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[1] != Y.shape[1]:
        raise ValueError(f"X and Y must be 2-d with the same genes, got {tuple(X.shape)}, {tuple(Y.shape)}")
    n_t, g = X.shape
    n_b = Y.shape[0]
    W, U_X, U_Y = _init(n_t, n_b, g, int(n_topics), random_state, dtype)
    state: dict[str, torch.Tensor] = {}
    if likelihood == "poisson":
        # dense all-ones matrices, as in the published code
        state["ones_t"] = torch.ones(n_t, g, dtype=dtype)
        state["ones_b"] = torch.ones(n_b, g, dtype=dtype)
    return X, Y, W, U_X, U_Y, state


def _step_poisson(X, Y, W, U_X, U_Y, alpha, damping, ones_t, ones_b):
    # U_X update
    X_hat = U_X @ W.T
    U_X = U_X * ((X / (X_hat + EPS)) @ W) / (ones_t @ W + EPS)
    # U_Y update
    Y_hat = U_Y @ W.T
    U_Y = U_Y * ((Y / (Y_hat + EPS)) @ W) / (ones_b @ W + EPS)
    # W update with the new usages
    RX = X / (U_X @ W.T + EPS)
    RY = Y / (U_Y @ W.T + EPS)
    num = RX.T @ U_X + alpha * (ones_b.T @ U_Y)
    den = ones_t.T @ U_X + alpha * (RY.T @ U_Y)
    ratio = num / (den + EPS)
    W = W * (ratio if damping == 1.0 else ratio**damping)
    return W, U_X, U_Y


def _step_gaussian(X, Y, W, U_X, U_Y, alpha, damping):
    WtW = W.T @ W
    U_X = U_X * (X @ W) / (U_X @ WtW + EPS)
    U_Y = U_Y * (Y @ W) / (U_Y @ WtW + EPS)
    num = X.T @ U_X + alpha * (W @ (U_Y.T @ U_Y))
    den = W @ (U_X.T @ U_X) + alpha * (Y.T @ U_Y)
    ratio = num / (den + EPS)
    W = W * (ratio if damping == 1.0 else ratio**damping)
    return W, U_X, U_Y


def _step(X, Y, W, U_X, U_Y, alpha, damping, likelihood, state):
    if likelihood == "poisson":
        return _step_poisson(X, Y, W, U_X, U_Y, alpha, damping, state["ones_t"], state["ones_b"])
    return _step_gaussian(X, Y, W, U_X, U_Y, alpha, damping)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def reference_fit(
    X: Any,
    Y: Any,
    *,
    n_topics: int,
    alpha: float,
    likelihood: str = "poisson",
    n_iter: int = 100,
    random_state: int = 0,
    damping: float = 0.5,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], Any] | None = None,
    compute_loss: bool = True,
) -> dict[str, Any]:
    """Fit bcNMF with the published full-batch dense multiplicative updates.

    Parameters
    ----------
    X, Y
        Target (n_t x g) and background (n_b x g) data: numpy, scipy sparse or torch.
        Densified up front.
    n_topics
        Number of topics K.
    alpha
        Contrast strength in the paper's (unscaled) objective.
    likelihood
        ``"poisson"`` (generalised KL) or ``"gaussian"`` (squared Frobenius).
    n_iter
        Number of full iterations (one U_X, U_Y and W update each).
    random_state
        Seed of a private ``torch.Generator`` (uniform random init).
    damping
        Exponent applied to the W update ratio (published: 0.5; 1.0 disables).
    dtype
        Torch dtype of all tensors.
    callback
        Called as ``callback(it, W, U_X, U_Y)`` after each iteration.
    compute_loss
        Record losses in the history (done outside the timed update).

    Returns
    -------
    dict with ``W`` (g x K), ``U_X`` (n_t x K), ``U_Y`` (n_b x K) torch tensors and ``history``,
    a list of per-iteration dicts with ``target_loss``, ``background_loss``, ``objective`` (losses
    after the iteration; NaN when ``compute_loss=False``) and ``seconds`` (time of the update).
    """
    X, Y, W, U_X, U_Y, state = _setup(X, Y, n_topics, likelihood, random_state, dtype)
    alpha = float(alpha)
    history: list[dict[str, float]] = []
    for it in range(int(n_iter)):
        t0 = time.perf_counter()
        W, U_X, U_Y = _step(X, Y, W, U_X, U_Y, alpha, damping, likelihood, state)
        seconds = time.perf_counter() - t0
        if compute_loss:
            t, b, obj = _losses(X, Y, W, U_X, U_Y, alpha, likelihood)
        else:
            t = b = obj = float("nan")
        history.append(dict(target_loss=t, background_loss=b, objective=obj, seconds=seconds))
        if callback is not None:
            callback(it, W, U_X, U_Y)
    return dict(W=W, U_X=U_X, U_Y=U_Y, history=history)


def reference_pass_seconds(
    X: Any,
    Y: Any,
    *,
    n_topics: int,
    alpha: float,
    n_passes: int = 3,
    likelihood: str = "poisson",
    random_state: int = 0,
    damping: float = 0.5,
    dtype: torch.dtype = torch.float32,
    warmup: int = 1,
) -> float:
    """Mean wall seconds per full iteration of the published algorithm, setup excluded.

    Setup (densifying X and Y, the all-ones matrices, the init) is not timed; ``warmup``
    untimed iterations run first, then ``n_passes`` timed ones. Losses are not computed.
    """
    X, Y, W, U_X, U_Y, state = _setup(X, Y, n_topics, likelihood, random_state, dtype)
    alpha = float(alpha)
    for _ in range(int(warmup)):
        W, U_X, U_Y = _step(X, Y, W, U_X, U_Y, alpha, damping, likelihood, state)
    times = []
    for _ in range(int(n_passes)):
        t0 = time.perf_counter()
        W, U_X, U_Y = _step(X, Y, W, U_X, U_Y, alpha, damping, likelihood, state)
        times.append(time.perf_counter() - t0)
    return float(np.mean(times))


def sklearn_kl_fit(X: Any, *, n_topics: int, n_iter: int, random_state: int = 0) -> dict[str, Any]:
    """Plain KL NMF of X with scikit-learn's multiplicative-update solver (alpha = 0 baseline).

    Returns
    -------
    dict with ``W`` (g x K loadings, sklearn's ``components_.T``), ``U`` (n x K usages),
    ``seconds_per_iter`` (fit wall time / iterations run), ``n_iter`` and ``loss``
    (generalised KL of the fit, via sklearn's ``reconstruction_err_`` which is
    ``sqrt(2 * KL)`` for this loss).
    """
    import warnings

    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    model = NMF(
        n_components=int(n_topics),
        beta_loss="kullback-leibler",
        solver="mu",
        init="random",
        max_iter=int(n_iter),
        tol=0,
        random_state=random_state,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        U = model.fit_transform(X)
    seconds = time.perf_counter() - t0
    n_run = max(int(model.n_iter_), 1)
    return dict(
        W=model.components_.T,
        U=U,
        seconds_per_iter=seconds / n_run,
        n_iter=int(model.n_iter_),
        loss=0.5 * float(model.reconstruction_err_) ** 2,
    )
