"""Shared fixtures: tiny simulated data and AnnData factories, and a deep AnnData snapshot.

Everything here is small (tens of cells and genes) so that the whole suite runs in minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

#: settings that make a fit fast enough for unit tests (results are still meaningful on planted data)
FAST = dict(max_epochs=20, progress=False, random_state=0)


def simulate_planted(
    n_target: int = 120,
    n_background: int = 120,
    n_genes: int = 60,
    n_shared: int = 2,
    n_target_programs: int = 1,
    depth: float = 200.0,
    likelihood: str = "poisson",
    seed: int = 0,
):
    """Planted programs on disjoint gene blocks: the background uses only the shared ones.

    Returns ``(X, Y, W)``: target and background matrices (cells × genes; Poisson counts as int64, or
    non-negative continuous values for ``likelihood="gaussian"``) and the true loadings ``W`` (genes ×
    programs, shared programs first, every column summing to 1).
    """
    rng = np.random.default_rng(seed)
    k = n_shared + n_target_programs
    w = np.full((n_genes, k), 0.02)
    for j, block in enumerate(np.array_split(np.arange(n_genes), k)):
        w[block, j] = rng.uniform(1.0, 2.0, len(block))
    w /= w.sum(axis=0)
    u_t = depth * rng.gamma(1.0, 1.0, (n_target, k))
    u_b = depth * rng.gamma(1.0, 1.0, (n_background, k))
    u_b[:, n_shared:] = 0.0
    if likelihood == "poisson":
        return rng.poisson(u_t @ w.T), rng.poisson(u_b @ w.T), w
    noise = 0.05 * depth / n_genes
    x = np.abs(u_t @ w.T + rng.normal(0.0, noise, (n_target, n_genes)))
    y = np.abs(u_b @ w.T + rng.normal(0.0, noise, (n_background, n_genes)))
    return x, y, w


def make_adata(
    n_target: int = 40,
    n_background: int = 40,
    n_other: int = 0,
    n_genes: int = 30,
    *,
    seed: int = 0,
    fmt: str = "dense",
    dtype=np.float32,
    planted: bool = True,
    extras: bool = True,
) -> ad.AnnData:
    """A small AnnData: ``obs["condition"]`` is ``"stim"`` (target), ``"ctrl"`` (background) or ``"other"``.

    Counts are in ``X`` and in ``layers["counts"]``. With ``extras`` it also carries pre-existing
    ``obsm``/``varm``/``uns``/``obs``/``var`` entries, so tests can check that nothing else is touched.
    """
    rng = np.random.default_rng(seed)
    if planted:
        x_t, x_b, _ = simulate_planted(n_target, n_background + n_other, n_genes, depth=60.0, seed=seed)
        counts = np.vstack([x_t, x_b])
    else:
        counts = rng.poisson(3.0, (n_target + n_background + n_other, n_genes))
    counts = counts.astype(dtype)
    labels = ["stim"] * n_target + ["ctrl"] * n_background + ["other"] * n_other
    obs = pd.DataFrame(
        {"condition": pd.Categorical(labels), "is_ctrl": np.array(labels) == "ctrl"},
        index=[f"cell{i}" for i in range(len(labels))],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    matrix = {"dense": lambda m: m, "csr": sp.csr_matrix, "csc": sp.csc_matrix}[fmt](counts)
    adata = ad.AnnData(matrix, obs=obs, var=var)
    adata.layers["counts"] = matrix.copy()
    if extras:
        adata.obs["n_counts"] = counts.sum(axis=1).astype(np.float64)
        adata.var["highly_variable_custom"] = np.arange(n_genes) % 2 == 0
        adata.obsm["X_pca"] = rng.normal(size=(adata.n_obs, 2))
        adata.varm["PCs"] = rng.normal(size=(n_genes, 2))
        adata.uns["note"] = {"created_by": "conftest", "values": np.arange(3)}
    return adata


@pytest.fixture(scope="session")
def planted():
    """Factory of planted (X, Y, W) data, see :func:`simulate_planted`."""
    return simulate_planted


@pytest.fixture(scope="session")
def small_adata():
    """Factory of small AnnData objects, see :func:`make_adata`."""
    return make_adata


# ---------------------------------------------------------------------------------------------- snapshots
def _copy_matrix(m):
    if m is None:
        return None
    if sp.issparse(m):
        return m.copy()
    return np.array(m, copy=True)


def snapshot(adata: ad.AnnData) -> dict:
    """A deep copy of every slot a tool could touch: X, layers, obs, var, obsm, varm, uns, names, shape."""
    return dict(
        shape=adata.shape,
        X=None if adata.isbacked else _copy_matrix(adata.X),
        layers={k: _copy_matrix(v) for k, v in adata.layers.items()},
        obs=adata.obs.copy(deep=True),
        var=adata.var.copy(deep=True),
        obsm={k: _copy_matrix(v) for k, v in adata.obsm.items()},
        varm={k: _copy_matrix(v) for k, v in adata.varm.items()},
        uns=copy.deepcopy(dict(adata.uns)),
        obs_names=adata.obs_names.copy(),
        var_names=adata.var_names.copy(),
    )


def _assert_matrix_equal(a, b, where: str) -> None:
    assert type(a) is type(b), f"{where}: type changed from {type(a).__name__} to {type(b).__name__}"
    if a is None:
        return
    assert a.shape == b.shape, f"{where}: shape changed"
    assert a.dtype == b.dtype, f"{where}: dtype changed from {a.dtype} to {b.dtype}"
    if sp.issparse(a):
        assert a.format == b.format, f"{where}: sparse format changed"
        a, b = a.toarray(), b.toarray()
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)


def assert_same_value(a, b, where: str = "uns") -> None:
    """Deep equality for uns-like nested values (dicts, arrays, frames, scalars, NaN-aware)."""
    if isinstance(a, dict):
        assert isinstance(b, dict), f"{where}: {type(b).__name__} instead of dict"
        assert set(a) == set(b), f"{where}: keys differ: {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for key in a:
            assert_same_value(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where)
    elif isinstance(a, np.ndarray) and a.dtype.names:
        assert b.dtype.names == a.dtype.names, f"{where}: record fields differ"
        for name in a.dtype.names:
            assert_same_value(np.asarray(a[name]), np.asarray(b[name]), f"{where}.{name}")
    elif isinstance(a, (np.ndarray, list, tuple)) or sp.issparse(a):
        a_arr = a.toarray() if sp.issparse(a) else np.asarray(a)
        b_arr = b.toarray() if sp.issparse(b) else np.asarray(b)
        assert a_arr.shape == b_arr.shape, f"{where}: shape {a_arr.shape} vs {b_arr.shape}"
        if a_arr.dtype.kind in "fc":
            np.testing.assert_array_equal(a_arr, b_arr, err_msg=where)
        else:
            assert a_arr.astype(str).tolist() == b_arr.astype(str).tolist(), where
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, (float, np.floating)) and np.isnan(b), f"{where}: {b!r} instead of NaN"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_unchanged(before: dict, adata: ad.AnnData) -> None:
    """Fail unless ``adata`` equals the :func:`snapshot` ``before`` in every slot."""
    after = snapshot(adata)
    assert after["shape"] == before["shape"], "shape changed"
    _assert_matrix_equal(before["X"], after["X"], "X")
    for slot in ("layers", "obsm", "varm"):
        assert set(before[slot]) == set(after[slot]), f"{slot} keys changed: {set(before[slot])} -> {set(after[slot])}"
        for key in before[slot]:
            _assert_matrix_equal(before[slot][key], after[slot][key], f"{slot}[{key!r}]")
    pd.testing.assert_frame_equal(before["obs"], after["obs"], obj="obs")
    pd.testing.assert_frame_equal(before["var"], after["var"], obj="var")
    pd.testing.assert_index_equal(before["obs_names"], after["obs_names"])
    pd.testing.assert_index_equal(before["var_names"], after["var_names"])
    assert_same_value(before["uns"], after["uns"], "uns")


@pytest.fixture(scope="session")
def adata_guard():
    """``(snapshot, assert_unchanged)``: take a deep snapshot of an AnnData and later check nothing changed."""
    return snapshot, assert_unchanged


@pytest.fixture(scope="session")
def same_value():
    """Deep, NaN-aware equality of uns-like values (dicts, arrays, record arrays, DataFrames, scalars)."""
    return assert_same_value
