"""Exceptions raised by the engine."""


class UnsafeAlphaError(ValueError):
    """α is at or above the safe fraction of α*, where the Poisson contrastive objective is unbounded."""


class CollapseError(RuntimeError):
    """Every start of a fit collapsed (non-finite factors, exploding losses or loadings at the floor)."""
