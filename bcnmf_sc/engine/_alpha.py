"""α*, the largest α for which the Poisson contrastive objective stays bounded below.

With per-cell scaling (each side's loss divided by its number of cells), driving the loading of gene g
to zero changes the objective by ``(mean_X[g] − α · mean_Y[g]) · log(1/w_g)``: the target pays, the
background "gains". Once ``α > mean_X[g] / mean_Y[g]`` for any gene expressed in the background, the
objective has no minimum and the published updates collapse. So

    α* = min over genes with mean_Y > 0 of mean_X / mean_Y,

computed after genes with zero target total are set aside (for those the ratio is 0, which would make
every α > 0 unsafe; they carry no target signal, so the contrastive fit leaves their loadings at zero).
The squared-error objective is bounded for every α (the best background fit costs at most ‖Y‖²), so
α* is infinite there.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from ._errors import UnsafeAlphaError

logger = logging.getLogger(__name__)

#: an α at or above ALPHA_SAFETY · α* is refused (or clipped to it); the margin keeps the fit away
#: from the edge where the objective flattens and loadings of the limiting gene drift to the floor.
ALPHA_SAFETY = 0.5


def alpha_star(target_col_sums: np.ndarray, background_col_sums: np.ndarray, n_target: int, n_background: int) -> float:
    """α* (our scale-free α) from per-gene totals; genes with zero target total must be excluded first."""
    mean_x = np.asarray(target_col_sums, dtype=np.float64) / n_target
    mean_y = np.asarray(background_col_sums, dtype=np.float64) / n_background
    expressed = mean_y > 0
    if not np.any(expressed):
        return float("inf")
    return float(np.min(mean_x[expressed] / mean_y[expressed]))


def check_alpha(alpha: float, a_star: float, *, on_unsafe: str) -> float:
    """Apply the safety rule: α < ALPHA_SAFETY · α* passes; otherwise raise or clip with a warning."""
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number ≥ 0, got {alpha!r}.")
    limit = ALPHA_SAFETY * a_star
    if alpha < limit or alpha == 0:
        return float(alpha)
    message = (
        f"alpha={alpha:g} is at or above the safe limit {limit:.4g} (= {ALPHA_SAFETY} · α*, α* = {a_star:.4g}): "
        "the Poisson contrastive objective is unbounded for α > α* and its fit collapses. "
        "Use a smaller alpha, likelihood='gaussian' on log-normalised data, or model='shared_target'."
    )
    if on_unsafe == "raise":
        raise UnsafeAlphaError(message)
    if on_unsafe == "clip":
        clipped = float(np.nextafter(limit, 0.0))
        warnings.warn(message + f" Clipping alpha to {clipped:.4g}.", UserWarning, stacklevel=3)
        return clipped
    raise ValueError(f"unsafe_alpha must be 'raise' or 'clip', got {on_unsafe!r}.")
