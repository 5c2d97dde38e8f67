"""Bad input through ``tl.bcnmf``: a clear error naming the problem, and the AnnData left exactly as it was.

Every refusal is checked against a deep snapshot of X, layers, obs, var, obsm, varm and uns taken before the
call (``adata_guard`` in conftest).
"""

from __future__ import annotations

import hashlib
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import bcnmf_sc as bc
from bcnmf_sc.engine import UnsafeAlphaError

FAST = dict(background_key="condition", background="ctrl", n_topics=3, max_epochs=5, progress=False)


def _refused(adata, guard, exc, match, **kwargs):
    """``tl.bcnmf`` raises ``exc`` matching ``match`` and ``adata`` is unchanged in every slot."""
    take, check = guard
    before = take(adata)
    with pytest.raises(exc, match=match):
        bc.tl.bcnmf(adata, **{**FAST, **kwargs})
    check(before, adata)


def _set(adata, row, col, value, *, layer=None):
    m = adata.X if layer is None else adata.layers[layer]
    if sp.issparse(m):
        m = m.tolil()
        m[row, col] = value
        m = m.tocsr()
    else:
        m = m.copy()
        m[row, col] = value
    if layer is None:
        adata.X = m
    else:
        adata.layers[layer] = m


# ------------------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("layer", [None, "counts"])
@pytest.mark.parametrize(
    ("value", "message"),
    [(-1.0, "contains negative values"), (np.nan, "contains NaN or infinite"), (np.inf, "contains NaN or infinite")],
)
def test_bad_values_are_refused(small_adata, adata_guard, fmt, layer, value, message):
    adata = small_adata(fmt=fmt)
    _set(adata, 3, 4, value, layer=layer)  # a target cell
    _refused(adata, adata_guard, ValueError, f"target cells {message}", layer=layer)
    adata = small_adata(fmt=fmt)
    _set(adata, 50, 4, value, layer=layer)  # a background cell
    _refused(adata, adata_guard, ValueError, f"background cells {message}", layer=layer)


def test_bad_values_outside_the_fitted_genes_do_not_matter(small_adata):
    adata = small_adata()
    _set(adata, 3, 0, -5.0)
    mask = np.ones(adata.n_vars, bool)
    mask[0] = False
    bc.tl.bcnmf(adata, **FAST, mask_var=mask)
    assert np.all(np.isfinite(adata.obsm["bcnmf"]))
    np.testing.assert_array_equal(adata.varm["bcnmf"][0], 0.0)


def test_bad_values_in_other_cells_are_refused_before_writing(small_adata, adata_guard):
    """Cells in neither group are projected after the fit; their bad values must still leave adata intact."""
    adata = small_adata(n_other=10)
    _set(adata, adata.n_obs - 1, 2, np.nan)
    _refused(adata, adata_guard, ValueError, "other cells contains NaN", target="stim")


def test_non_integer_values_with_poisson_warn_and_fit(small_adata):
    """Documented behaviour: non-integer data with likelihood='poisson' is fitted (generalised KL is defined
    for any non-negative data) with a UserWarning pointing to likelihood='gaussian'."""
    adata = small_adata()
    adata.X = np.log1p(adata.X)
    with pytest.warns(UserWarning, match="likelihood='poisson' expects raw counts.*non-integer.*gaussian"):
        bc.tl.bcnmf(adata, **FAST)
    assert np.all(np.isfinite(adata.obsm["bcnmf"]))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*expects raw counts.*")
        bc.tl.bcnmf(adata, **FAST, likelihood="gaussian", key_added="gauss")
    assert "gauss" in adata.uns


@pytest.mark.parametrize("dtype", [bool, object, np.complex64])
def test_unsupported_dtypes_are_refused(small_adata, adata_guard, dtype):
    adata = small_adata()
    adata.X = adata.X.astype(dtype)
    _refused(adata, adata_guard, TypeError, f"dtype {np.dtype(dtype)}.*not supported")


def test_unsupported_sparse_dtype_in_a_layer_is_refused(small_adata, adata_guard):
    adata = small_adata()
    adata.layers["flags"] = sp.csr_matrix(np.asarray(adata.X) > 2)
    _refused(adata, adata_guard, TypeError, "dtype bool", layer="flags")


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.int64, np.float16, np.float64])
def test_integer_and_float_dtypes_are_accepted(small_adata, dtype):
    adata = small_adata(dtype=dtype, fmt="dense" if dtype == np.float16 else "csr")  # scipy has no float16
    bc.tl.bcnmf(adata, **FAST)
    assert adata.X.dtype == dtype  # never converted in place
    assert np.all(np.isfinite(adata.obsm["bcnmf"]))


# ------------------------------------------------------------------------------------------------ groups
def test_missing_background_key_lists_columns(small_adata, adata_guard):
    _refused(small_adata(), adata_guard, KeyError, r"background_key='cond' is not a column.*'condition'",
             background_key="cond")


def test_unknown_background_level_lists_the_levels(small_adata, adata_guard):
    _refused(small_adata(), adata_guard, ValueError, r"\['control'\] is not a level.*levels present: 'ctrl', 'stim'",
             background="control")
    _refused(small_adata(), adata_guard, ValueError, r"\['STIM'\] is not a level.*'ctrl', 'stim'", target="STIM")


def test_empty_target_group(small_adata, adata_guard):
    _refused(small_adata(), adata_guard, ValueError, "target group is empty", background=["ctrl", "stim"])
    adata = small_adata()
    adata.obs["condition"] = adata.obs["condition"].cat.add_categories(["treated"])
    _refused(adata, adata_guard, ValueError, r"target group is empty \(target='treated'\)", target="treated")


def test_empty_background_group_from_an_unused_category(small_adata, adata_guard):
    adata = small_adata()
    adata.obs["condition"] = adata.obs["condition"].cat.add_categories(["dmso"])
    _refused(adata, adata_guard, ValueError, r"background group is empty \(background='dmso'\)", background="dmso")


def test_boolean_column_and_bad_columns(small_adata, adata_guard):
    adata = small_adata()
    bc.tl.bcnmf(adata, **{**FAST, "background_key": "is_ctrl", "background": None})
    assert adata.uns["bcnmf"]["params"]["n_background_cells"] == 40
    _refused(small_adata(), adata_guard, ValueError, r"background=None needs a boolean column.*'ctrl'",
             background=None)
    adata = small_adata()
    adata.obs["condition"] = adata.obs["condition"].astype(object)
    adata.obs.iloc[0, 0] = np.nan
    _refused(adata, adata_guard, ValueError, "missing values")
    _refused(small_adata(n_other=5), adata_guard, ValueError, "both target and background",
             target=["stim", "ctrl"])


@pytest.mark.parametrize(
    ("sizes", "kwargs", "match"),
    [
        (dict(n_target=2), {}, "target group has 2 cells, fewer than n_topics=3"),
        (dict(n_background=1), {}, "background group has 1 cells, fewer than its 2 topics"),
        (dict(n_background=2), dict(model="contrastive", alpha=0.1), "background group has 2 cells, fewer than its 3"),
    ],
)
def test_group_smaller_than_the_topics(small_adata, adata_guard, sizes, kwargs, match):
    _refused(small_adata(**sizes), adata_guard, ValueError, match, **kwargs)


# ------------------------------------------------------------------------------------------------- genes
def test_too_few_genes_for_the_topics(small_adata, adata_guard):
    _refused(small_adata(n_genes=2), adata_guard, ValueError, "only 2 genes can be fitted, fewer than n_topics=3")
    adata = small_adata()
    mask = np.zeros(adata.n_vars, bool)
    mask[:2] = True
    _refused(adata, adata_guard, ValueError, "only 2 genes", mask_var=mask)


def test_mask_var_problems(small_adata, adata_guard):
    adata = small_adata()
    _refused(adata, adata_guard, ValueError, "mask_var selects no genes", mask_var=np.zeros(adata.n_vars, bool))
    adata.var["none"] = False
    _refused(adata, adata_guard, ValueError, "mask_var selects no genes", mask_var="none")
    _refused(adata, adata_guard, KeyError, "mask_var='hvg' is not a column", mask_var="hvg")
    _refused(adata, adata_guard, ValueError, "boolean mask over the 30 genes", mask_var=np.ones(5, bool))


def test_default_mask_var_is_highly_variable(small_adata):
    adata = small_adata()
    adata.var["highly_variable"] = np.arange(adata.n_vars) < 12
    bc.tl.bcnmf(adata, **FAST)
    assert adata.uns["bcnmf"]["params"]["n_genes_fitted"] == 12
    np.testing.assert_array_equal(adata.varm["bcnmf"][12:], 0.0)


def test_missing_layer_lists_layers(small_adata, adata_guard):
    _refused(small_adata(), adata_guard, KeyError, r"layer='raw' is not in adata.layers.*'counts'", layer="raw")


def test_all_zero_genes_and_cells_are_handled(small_adata, adata_guard):
    adata = small_adata(n_other=4)
    m = np.asarray(adata.X).copy()
    m[:, [0, 7]] = 0  # genes with no counts anywhere
    m[[1, 45, adata.n_obs - 1]] = 0  # an empty target, background and other cell
    adata.X = sp.csr_matrix(m)
    for model in ("shared_target", "contrastive"):
        bc.tl.bcnmf(adata, **FAST, model=model, alpha=0.1, key_added=model)
        usages, loadings = adata.obsm[model], adata.varm[model]
        assert np.all(np.isfinite(usages)) and np.all(usages >= 0)
        assert np.all(np.isfinite(loadings)) and np.all(loadings >= 0)
        np.testing.assert_allclose(loadings.sum(axis=0), 1.0, atol=1e-6)
        assert np.all(usages[[1, 45, adata.n_obs - 1]] < 1e-6)
        table = adata.uns[model]["enrichment"]
        numeric = table.drop(columns=["stability"]).select_dtypes("number")
        assert np.all(np.isfinite(numeric.to_numpy())), table


def test_all_zero_target_is_refused(small_adata, adata_guard):
    adata = small_adata()
    m = np.asarray(adata.X).copy()
    m[:40] = 0
    adata.X = m
    _refused(adata, adata_guard, ValueError, "target cells contains only zeros")


# ---------------------------------------------------------------------------------------------------- α
def test_unsafe_alpha_is_refused_and_clipping_is_recorded(small_adata, adata_guard):
    adata = small_adata()
    _refused(adata, adata_guard, UnsafeAlphaError, r"alpha=100 is at or above the safe limit .*α\*",
             model="contrastive", alpha=100.0)
    with pytest.warns(UserWarning, match="Clipping alpha"):
        bc.tl.bcnmf(adata, **FAST, model="contrastive", alpha=100.0, unsafe_alpha="clip")
    params = adata.uns["bcnmf"]["params"]
    assert params["alpha"] == 100.0
    assert params["alpha_used"] < 0.5 * params["alpha_star"]
    assert np.all(np.isfinite(adata.varm["bcnmf"]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(model="nmf"), "model must be one of"),
        (dict(likelihood="nb"), "likelihood must be one of"),
        (dict(n_topics=0), "n_topics must be a positive integer"),
        (dict(n_topics=3, n_target_topics=3), "n_target_topics must be between 1 and n_topics"),
        (dict(model="contrastive", alpha=-1.0), "alpha must be a finite number"),
        (dict(max_epochs=0), "max_epochs must be a positive integer"),
        (dict(batch_size=-5), "batch_size must be a positive integer"),
    ],
)
def test_bad_parameters_are_refused(small_adata, adata_guard, kwargs, match):
    _refused(small_adata(), adata_guard, ValueError, match, **kwargs)


# ------------------------------------------------------------------------------------------------- backed
def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["csr", "dense"])
def test_backed_read_only_works_and_leaves_the_file_alone(small_adata, tmp_path, fmt):
    adata = small_adata(fmt=fmt, extras=False)
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    digest = _digest(path)
    in_memory = adata.copy()
    bc.tl.bcnmf(in_memory, **FAST)
    backed = ad.read_h5ad(path, backed="r")
    try:
        bc.tl.bcnmf(backed, **FAST)
        np.testing.assert_allclose(backed.obsm["bcnmf"], in_memory.obsm["bcnmf"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(backed.varm["bcnmf"], in_memory.varm["bcnmf"], rtol=1e-5, atol=1e-7)
    finally:
        backed.file.close()
    assert _digest(path) == digest  # read-only: the file on disk is untouched


def test_backed_csc_is_refused_with_the_reason(small_adata, adata_guard, tmp_path):
    adata = small_adata(fmt="csc", extras=False)
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    digest = _digest(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        _refused(backed, adata_guard, ValueError, "backed CSC matrix.*needs CSR on disk")
    finally:
        backed.file.close()
    assert _digest(path) == digest


def test_copy_returns_a_new_object_and_leaves_the_input(small_adata, adata_guard):
    take, check = adata_guard
    adata = small_adata()
    before = take(adata)
    result = bc.tl.bcnmf(adata, **FAST, copy=True)
    check(before, adata)
    assert isinstance(result, ad.AnnData) and "bcnmf" in result.obsm and "bcnmf" not in adata.obsm
    # the rest of the copy is the input
    pd.testing.assert_frame_equal(result.obs, adata.obs)
    np.testing.assert_array_equal(result.obsm["X_pca"], adata.obsm["X_pca"])


def test_success_touches_only_our_key(small_adata, adata_guard):
    take, check = adata_guard
    adata = small_adata()
    before = take(adata)
    bc.tl.bcnmf(adata, **FAST, key_added="mine")
    written_uns = {k for k in adata.uns if k.startswith("mine")}
    # remove what we wrote: the rest must be exactly as before
    del adata.obsm["mine"], adata.varm["mine"]
    for key in written_uns:
        del adata.uns[key]
    check(before, adata)
    assert written_uns >= {"mine"}
