"""Saving results with the data: ``write_h5ad`` → ``read_h5ad`` reloads every slot we write identically, and
nothing we write needs pickle (only h5ad-native types, each element with a known anndata encoding)."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

import bcnmf_sc as bc

FAST = dict(background_key="condition", background="ctrl", n_topics=3, max_epochs=10, progress=False)

#: encodings anndata writes for the value types we use (anything else would be a surprise to check)
NATIVE_ENCODINGS = {
    "dict", "array", "string", "string-array", "numeric-scalar", "null", "dataframe", "categorical", "rec-array",
    "nullable-integer", "nullable-boolean", "nullable-string-array", "csr_matrix", "csc_matrix",
}


def _assert_native(value, where: str) -> None:
    """Only h5ad-native types: dicts of str keys, str, numbers, bools, None, numeric/str/bool arrays, frames."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), f"{where}: non-string key {key!r}"
            _assert_native(item, f"{where}[{key!r}]")
    elif isinstance(value, pd.DataFrame):
        for column in value.columns:
            series = value[column]
            kind = series.dtype.kind if not isinstance(series.dtype, pd.CategoricalDtype) else "c"
            assert kind in "biufcO" or str(series.dtype).startswith("string"), f"{where}.{column}: {series.dtype}"
            if kind == "O":
                assert all(isinstance(v, str) for v in series), f"{where}.{column}: non-string objects"
        assert value.index.dtype.kind in "iuO" or isinstance(value.index, pd.RangeIndex), f"{where}: index"
    elif isinstance(value, np.ndarray):
        if value.dtype.names:
            for name in value.dtype.names:
                _assert_native(np.asarray(value[name]), f"{where}.{name}")
        elif value.dtype.kind == "O":
            assert all(isinstance(v, str) for v in value.ravel()), f"{where}: object array of non-strings"
        else:
            assert value.dtype.kind in "biufU", f"{where}: dtype {value.dtype}"
    else:
        assert value is None or isinstance(value, (str, bool, int, float, np.generic)), f"{where}: {type(value)}"


def _assert_h5_encoded(path, keys) -> None:
    """Every element under our uns/obsm/varm keys carries a known anndata encoding; no opaque or pickled bytes."""
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            encoding = obj.attrs.get("encoding-type")
            if encoding is not None:
                encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
                assert encoding in NATIVE_ENCODINGS, f"{name}: encoding {encoding!r}"
            if isinstance(obj, h5py.Dataset):
                dtype = obj.dtype
                assert dtype.kind != "V" or dtype.names, f"{name}: opaque dtype {dtype}"
                if dtype.kind == "O":
                    assert h5py.check_string_dtype(dtype) is not None, f"{name}: object dtype that is not a string"

        for group, key in keys:
            element = f[group][key]
            assert "encoding-type" in element.attrs, f"{group}/{key} has no anndata encoding"
            visit(f"{group}/{key}", element)
            if isinstance(element, h5py.Group):
                element.visititems(visit)


def _roundtrip(adata, tmp_path, name="fit.h5ad"):
    path = tmp_path / name
    adata.write_h5ad(path)
    return path, ad.read_h5ad(path)


@pytest.mark.parametrize("model", ["shared_target", "contrastive"])
def test_bcnmf_results_reload_identically(small_adata, same_value, tmp_path, model):
    adata = small_adata(n_other=6, fmt="csr")
    mask = np.ones(adata.n_vars, bool)
    mask[:3] = False
    bc.tl.bcnmf(adata, **FAST, target=["stim"], model=model, alpha=0.1, n_starts=2, mask_var=mask, layer="counts",
                key_added="fit")
    keys = [("obsm", "fit"), ("varm", "fit"), ("uns", "fit"), ("uns", "fit_genes")]
    for group, key in keys:
        assert key in getattr(adata, group), f"{group}[{key}] was not written"
    _assert_native(adata.uns["fit"], "uns['fit']")
    _assert_native(adata.uns["fit_genes"], "uns['fit_genes']")

    path, reloaded = _roundtrip(adata, tmp_path)
    _assert_h5_encoded(path, keys)
    np.testing.assert_array_equal(reloaded.obsm["fit"], adata.obsm["fit"])
    np.testing.assert_array_equal(reloaded.varm["fit"], adata.varm["fit"])
    assert reloaded.obsm["fit"].dtype == adata.obsm["fit"].dtype
    same_value(adata.uns["fit"], reloaded.uns["fit"], "uns['fit']")
    same_value(adata.uns["fit_genes"], reloaded.uns["fit_genes"], "uns['fit_genes']")
    # tables keep their index, column order and dtypes (enriched stays boolean, kind stays categorical)
    for table in ("enrichment", "history"):
        pd.testing.assert_frame_equal(reloaded.uns["fit"][table], adata.uns["fit"][table])
    assert reloaded.uns["fit"]["enrichment"]["enriched"].dtype == bool
    # a second round trip is a fixed point
    _, again = _roundtrip(reloaded, tmp_path, "again.h5ad")
    same_value(reloaded.uns["fit"], again.uns["fit"], "uns['fit'] (second round trip)")


def test_reloaded_results_still_work(small_adata, tmp_path):
    """What we saved is enough to carry on: rank genes again and project new cells from the reloaded object."""
    adata = small_adata(fmt="csr")
    bc.tl.bcnmf(adata, **FAST)
    _, reloaded = _roundtrip(adata, tmp_path)
    bc.tl.topic_genes(reloaded, n_genes=5, key_added="again")
    fresh = small_adata(seed=3, fmt="csr")
    bc.tl.project(fresh, reference=reloaded, key_added="proj")
    expected = small_adata(seed=3, fmt="csr")
    bc.tl.project(expected, reference=adata, key_added="proj")
    np.testing.assert_allclose(fresh.obsm["proj"], expected.obsm["proj"], rtol=1e-6, atol=1e-8)
    path, back = _roundtrip(fresh, tmp_path, "projected.h5ad")
    _assert_h5_encoded(path, [("obsm", "proj")])
    np.testing.assert_array_equal(back.obsm["proj"], fresh.obsm["proj"])
    _assert_native(reloaded.uns["again"], "uns['again']")


def test_topic_genes_results_reload_identically(small_adata, same_value, tmp_path):
    adata = small_adata(fmt="csr")
    bc.tl.bcnmf(adata, **FAST)
    bc.tl.topic_genes(adata, n_genes=7, key_added="ranked")
    _assert_native(adata.uns["ranked"], "uns['ranked']")
    path, reloaded = _roundtrip(adata, tmp_path)
    _assert_h5_encoded(path, [("uns", "ranked")])
    same_value(adata.uns["ranked"], reloaded.uns["ranked"], "uns['ranked']")


def test_sweep_and_consensus_results_reload_identically(small_adata, same_value, tmp_path):
    adata = small_adata(n_target=40, n_background=40, fmt="csr")
    common = dict(background_key="condition", background="ctrl", max_epochs=5, progress=False)
    bc.tl.bcnmf_sweep(adata, **common, n_topics=(2, 3), n_seeds=2, key_added="sweep")
    bc.tl.consensus(adata, **common, n_topics=3, n_starts=3, key_added="cons")
    keys = [("uns", "sweep"), ("uns", "cons"), ("obsm", "cons"), ("varm", "cons")]
    _assert_native(adata.uns["sweep"], "uns['sweep']")
    _assert_native(adata.uns["cons"], "uns['cons']")
    path, reloaded = _roundtrip(adata, tmp_path)
    _assert_h5_encoded(path, keys)
    same_value(adata.uns["sweep"], reloaded.uns["sweep"], "uns['sweep']")
    same_value(adata.uns["cons"], reloaded.uns["cons"], "uns['cons']")
    np.testing.assert_array_equal(reloaded.obsm["cons"], adata.obsm["cons"])
    np.testing.assert_array_equal(reloaded.varm["cons"], adata.varm["cons"])
