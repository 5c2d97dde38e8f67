"""Faults during a fit: an exception or KeyboardInterrupt mid-epoch leaves the AnnData untouched.

The faults are real: a scipy CSR matrix (subclass) or a :class:`RowSource` whose reads fail after a number of
batches, as a dropped network file system or a dying disk would, and a real SIGINT-style interrupt of the
main thread while it fits.
"""

from __future__ import annotations

import _thread
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp

import bcnmf_sc as bc
from bcnmf_sc.engine import BCNMF, RowSource

FAST = dict(background_key="condition", background="ctrl", n_topics=3, max_epochs=20, progress=False)


class DiskFault(OSError):
    """Raised by the failing matrices below."""


class FailingCSR(sp.csr_matrix):
    """A CSR matrix whose row reads start failing after ``budget`` reads (a disk that goes away)."""

    budget = 10**9
    reads = 0
    error: type[BaseException] = DiskFault
    fail_rows_from: int | None = None  # only reads touching rows ≥ this index fail

    def __getitem__(self, key):
        rows = key[0] if isinstance(key, tuple) else key
        type(self).reads += 1
        touches = True
        if self.fail_rows_from is not None:
            index = np.arange(self.shape[0])[rows]
            touches = bool(np.any(np.atleast_1d(index) >= self.fail_rows_from))
        if type(self).reads > type(self).budget and touches:
            raise type(self).error("injected read failure")
        return super().__getitem__(key)


def _failing_matrix(m, *, budget, error=DiskFault, fail_rows_from=None):
    cls = type("FailingCSRInstance", (FailingCSR,), dict(budget=budget, reads=0, error=error,
                                                          fail_rows_from=fail_rows_from))
    return cls(m)


def _subset_of_genes(adata):
    """A var mask: with a column selection the reads go through the matrix's own row indexing."""
    mask = np.ones(adata.n_vars, bool)
    mask[-1] = False
    return mask


@pytest.mark.parametrize("error", [DiskFault, KeyboardInterrupt])
@pytest.mark.parametrize("layer", [None, "counts"])
def test_failure_mid_epoch_leaves_adata_untouched(small_adata, adata_guard, error, layer):
    take, check = adata_guard
    adata = small_adata(fmt="csr")
    matrix = _failing_matrix(adata.layers["counts"] if layer else adata.X, budget=6, error=error)
    if layer:
        adata.layers["counts"] = matrix
    else:
        adata.X = matrix
    before = take(adata)
    with pytest.raises(error, match="injected read failure"):
        bc.tl.bcnmf(adata, **FAST, layer=layer, batch_size=8, mask_var=_subset_of_genes(adata))
    assert type(matrix).reads > 6  # the fault did fire: past the summary pass, inside the epochs
    check(before, adata)
    # the same object fits normally once the "disk" is back
    type(matrix).budget = 10**9
    bc.tl.bcnmf(adata, **FAST, layer=layer, batch_size=8, mask_var=_subset_of_genes(adata))
    assert np.all(np.isfinite(adata.obsm["bcnmf"]))


def test_failure_while_projecting_other_cells_leaves_adata_untouched(small_adata, adata_guard):
    """The fit succeeds but reading the cells outside both groups fails: still nothing may be written."""
    take, check = adata_guard
    adata = small_adata(n_other=6, fmt="csr")
    first_other = adata.n_obs - 6
    adata.X = _failing_matrix(adata.X, budget=0, fail_rows_from=first_other)
    before = take(adata)
    with pytest.raises(DiskFault):
        bc.tl.bcnmf(adata, **FAST, target="stim", mask_var=_subset_of_genes(adata))
    check(before, adata)


def test_copy_true_with_a_fault_returns_nothing_and_changes_nothing(small_adata, adata_guard):
    take, check = adata_guard
    adata = small_adata(fmt="csr")
    adata.X = _failing_matrix(adata.X, budget=5)
    before = take(adata)
    with pytest.raises(DiskFault):
        bc.tl.bcnmf(adata, **FAST, copy=True, batch_size=8, mask_var=_subset_of_genes(adata))
    check(before, adata)


def test_keyboard_interrupt_from_another_thread(small_adata, adata_guard):
    """A real interrupt (as Ctrl-C delivers it) of the main thread during a long fit."""
    take, check = adata_guard
    adata = small_adata(n_target=100, n_background=100, fmt="csr")
    before = take(adata)
    timer = threading.Timer(1.0, _thread.interrupt_main)
    started = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            bc.tl.bcnmf(adata, **{**FAST, "max_epochs": 100_000}, tol=0, batch_size=16)
    finally:
        timer.cancel()
    assert time.perf_counter() - started < 120  # interrupted, not run to the end
    check(before, adata)


# ------------------------------------------------------------------------------------------------ engine
class FailingSource(RowSource):
    """A real RowSource whose reads fail after ``budget`` calls."""

    def __init__(self, *args, budget: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.budget, self.calls = budget, 0

    def _tick(self):
        self.calls += 1
        if self.calls > self.budget:
            raise DiskFault("injected read failure")

    def read(self, positions):
        self._tick()
        return super().read(positions)

    def read_csr(self, positions):
        self._tick()
        return super().read_csr(positions)


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("model", ["shared_target", "contrastive"])
def test_engine_fault_propagates_and_leaves_no_fitted_state(planted, fmt, model):
    x, y, _ = planted(n_target=64, n_background=64, n_genes=20)
    convert = sp.csr_matrix if fmt == "csr" else np.asarray
    est = BCNMF(3, model=model, alpha=0.1, batch_size=16, max_epochs=10, random_state=0)
    target = FailingSource(convert(x), budget=4, name="target")
    with pytest.raises(DiskFault):
        est.fit(target, convert(y))
    assert target.calls > 4
    for attribute in ("loadings_", "target_usages_", "background_usages_", "history_"):
        assert not hasattr(est, attribute), attribute
    # the estimator is still usable
    est.fit(convert(x), convert(y))
    np.testing.assert_allclose(est.loadings_.sum(axis=0), 1.0, atol=1e-6)
