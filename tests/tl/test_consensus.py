"""``tl.consensus``: consensus topics over starts or a sweep's seeds, unstable topics dropped."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import bcnmf_sc as bc
from bcnmf_sc.engine._heldout import solve_usages
from bcnmf_sc.engine._matching import match_topics

from .sweep_helpers import programs_adata
from .tl_helpers import assert_untouched

SETTING = dict(
    background_key="condition", background="background", n_topics=5, n_target_topics=2, max_epochs=100, progress=False
)


@pytest.fixture(scope="module")
def consensus_fit() -> ad.AnnData:
    adata = programs_adata()
    bc.tl.consensus(adata, n_starts=4, **SETTING)
    return adata


def test_consensus_writes_stable_topics_and_refits_usages(consensus_fit):
    adata = consensus_fit
    result = adata.uns["bcnmf_consensus"]
    table = result["consensus"]
    assert list(table.index) == ["shared_1", "shared_2", "shared_3", "target_1", "target_2"]
    assert table["kept"].all() and (table["stability"] > 0.95).all()
    assert result["similarity"].shape == (4, 5) and np.all(result["similarity"] > 0.9)
    loadings = adata.varm["bcnmf_consensus"]
    np.testing.assert_allclose(loadings.sum(axis=0), 1.0, rtol=1e-6)
    assert adata.obsm["bcnmf_consensus"].shape == (adata.n_obs, 5)
    # usages are solved with the consensus loadings fixed (all topics available) for every cell
    np.testing.assert_allclose(
        adata.obsm["bcnmf_consensus"], solve_usages(adata.X, loadings, likelihood="poisson"), rtol=1e-5, atol=1e-6
    )
    enrichment = result["enrichment"]
    assert list(enrichment.index) == list(result["topics"])
    np.testing.assert_allclose(enrichment["stability"], table["stability"])
    assert enrichment.loc[["target_1", "target_2"], "log2fc"].min() > 2
    assert result["params"]["source"] == "starts" and result["params"]["n_runs"] == 4


def test_consensus_survives_an_h5ad_round_trip(consensus_fit, tmp_path):
    consensus_fit.write_h5ad(tmp_path / "consensus.h5ad")
    back = ad.read_h5ad(tmp_path / "consensus.h5ad")
    np.testing.assert_allclose(back.varm["bcnmf_consensus"], consensus_fit.varm["bcnmf_consensus"])
    assert list(back.uns["bcnmf_consensus"]["consensus"].index) == list(
        consensus_fit.uns["bcnmf_consensus"]["consensus"].index
    )


def test_consensus_agrees_with_a_single_fit(consensus_fit):
    adata = consensus_fit.copy()
    bc.tl.bcnmf(adata, **SETTING)
    _, similarity = match_topics(adata.varm["bcnmf"], adata.varm["bcnmf_consensus"])
    assert np.all(similarity > 0.98)


def test_topics_below_min_stability_are_dropped():
    adata = programs_adata(n_cells=80)
    bc.tl.consensus(adata, n_starts=3, min_stability=0.0, **SETTING | dict(n_topics=7, n_target_topics=3))
    stability = adata.uns["bcnmf_consensus"]["consensus"]["stability"].to_numpy()
    weakest = int(np.argmin(stability))
    threshold = (np.sort(stability)[0] + np.sort(stability)[1]) / 2
    bc.tl.consensus(
        adata, n_starts=3, min_stability=threshold, key_added="strict", **SETTING | dict(n_topics=7, n_target_topics=3)
    )
    table = adata.uns["strict"]["consensus"]
    assert not table["kept"].iloc[weakest] and table["kept"].sum() == 6
    assert adata.varm["strict"].shape == (adata.n_vars, 6) and adata.obsm["strict"].shape == (adata.n_obs, 6)
    assert table.index[weakest] not in list(adata.uns["strict"]["topics"])


def test_consensus_from_a_sweep_uses_the_seeds_of_the_recommended_setting():
    adata = programs_adata(n_cells=100)
    bc.tl.bcnmf_sweep(
        adata,
        background_key="condition",
        background="background",
        n_topics=[5],
        n_target_topics=[2],
        n_seeds=3,
        max_epochs=100,
        progress=False,
    )
    seeds = adata.uns["bcnmf_sweep"]["loadings"]
    bc.tl.consensus(adata, sweep_key="bcnmf_sweep")
    result = adata.uns["bcnmf_consensus"]
    assert result["params"]["source"] == "sweep" and result["params"]["n_runs"] == len(seeds)
    assert result["history"].empty
    _, similarity = match_topics(seeds[0], adata.varm["bcnmf_consensus"])
    assert np.all(similarity > 0.95)


def test_errors_leave_the_input_alone():
    adata = programs_adata(n_cells=60)
    before = adata.copy()
    with pytest.raises(ValueError, match="n_starts"):
        bc.tl.consensus(adata, n_starts=1, **SETTING)
    with pytest.raises(KeyError, match="bcnmf_sweep"):
        bc.tl.consensus(adata, sweep_key="bcnmf_sweep")
    with pytest.raises(ValueError, match="min_stability"):
        bc.tl.consensus(adata, min_stability=1.5, **SETTING)
    with pytest.raises(ValueError, match="no consensus topic reaches"):
        bc.tl.consensus(adata, n_starts=2, min_stability=1.0, **SETTING | dict(max_epochs=10))
    assert_untouched(before, adata)
