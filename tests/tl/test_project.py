"""``tl.project``: new cells onto a fitted result."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from .tl_helpers import FAST, assert_untouched, small_adata

import bcnmf_sc as bc
from bcnmf_sc.tl._enrichment import auroc


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).sum() / np.abs(b).sum())


def test_reproduces_the_usages_of_the_fit(fitted):
    new = fitted.copy()
    del new.obsm["bcnmf"]
    bc.tl.project(new, reference=fitted)
    is_background = (fitted.obs["condition"] == "background").to_numpy()
    # background cells were projected by tl.bcnmf the same way
    np.testing.assert_allclose(new.obsm["bcnmf"][is_background], fitted.obsm["bcnmf"][is_background], rtol=1e-3,
                               atol=1e-4)
    # target cells carry their fitted usages; projecting them again agrees to within the fit's convergence
    assert _relative_error(new.obsm["bcnmf"][~is_background], fitted.obsm["bcnmf"][~is_background]) < 0.05


def test_held_out_cells_and_gene_order():
    data = small_adata(n_cells=200)
    train, new = data[::2].copy(), data[1::2].copy()  # fit on half of the cells, project the other half
    bc.tl.bcnmf(train, background_key="condition", background="background", **FAST)
    order = np.random.default_rng(0).permutation(new.n_vars)
    shuffled = new[:, order].copy()
    bc.tl.project(new, reference=train, key_added="proj")
    bc.tl.project(shuffled, reference=train, key_added="proj")
    np.testing.assert_allclose(shuffled.obsm["proj"], new.obsm["proj"], rtol=1e-4, atol=1e-6)
    # the target topics tell the held-out target cells from the held-out background (training cells: 0.86)
    is_target = (new.obs["condition"] == "target").to_numpy()
    target_usage = new.obsm["proj"][:, 5:].sum(axis=1, keepdims=True)
    assert auroc(target_usage[is_target], target_usage[~is_target])[0] > 0.8


def test_missing_genes_warn_and_stay_close(fitted):
    new = fitted[:, 5:].copy()  # 5 of 100 fitted genes missing
    with pytest.warns(UserWarning, match="5 of the 100 fitted genes are missing"):
        bc.tl.project(new, reference=fitted, key_added="proj")
    full = bc.tl.project(fitted.copy(), reference=fitted, key_added="proj", copy=True)
    assert _relative_error(new.obsm["proj"], full.obsm["proj"]) < 0.1


def test_layer_backed_and_copy(fitted, tmp_path):
    new = small_adata(random_state=3)
    new.layers["raw"] = new.X.copy()
    new.X = new.X * 0  # the layer must be used, not X
    result = bc.tl.project(new, reference=fitted, layer="raw", copy=True)
    assert "bcnmf" not in new.obsm and result.obsm["bcnmf"].shape == (new.n_obs, 7)
    path = tmp_path / "new.h5ad"
    plain = small_adata(random_state=3)
    plain.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    bc.tl.project(backed, reference=fitted)
    np.testing.assert_allclose(backed.obsm["bcnmf"], result.obsm["bcnmf"], rtol=1e-4, atol=1e-6)
    backed.file.close()


@pytest.mark.parametrize(
    ("change", "kwargs", "error", "match"),
    [
        (lambda a: a[:, :40].copy(), {}, ValueError, r"only 40 of the 100 genes of the fit are in adata\.var_names"),
        (lambda a: a, dict(key="nope"), KeyError, "reference has no bcNMF result under key 'nope'"),
        (lambda a: a, dict(layer="missing"), KeyError, "layer='missing' is not in adata.layers"),
    ],
)
def test_errors_leave_adata_untouched(fitted, change, kwargs, error, match):
    new = change(small_adata(random_state=5))
    before = new.copy()
    with pytest.raises(error, match=match):
        bc.tl.project(new, reference=fitted, **kwargs)
    assert_untouched(before, new)


def test_renamed_genes_are_a_clear_error(fitted):
    new = small_adata(random_state=5)
    new.var_names = [f"ENSG{i:05d}" for i in range(new.n_vars)]
    with pytest.raises(ValueError, match="same gene identifiers"):
        bc.tl.project(new, reference=fitted)
    assert "bcnmf" not in new.obsm
