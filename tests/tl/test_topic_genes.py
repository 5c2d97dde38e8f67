"""``tl.topic_genes``: the specificity score and scanpy's ``rank_genes_groups`` layout."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from .tl_helpers import assert_untouched

import bcnmf_sc as bc
from bcnmf_sc.tl._topic_genes import PSEUDO, specificity

matplotlib.use("Agg")


def test_specificity_prefers_specific_genes_over_housekeeping():
    # gene 0: high everywhere (housekeeping); gene 1: lower, but only in topic 0; gene 2: tiny, only in topic 0
    loadings = np.array([[0.50, 0.50, 0.50], [0.20, 0.01, 0.01], [1e-6, 1e-20, 1e-20], [0.29, 0.49, 0.49]])
    scores, ratio = specificity(loadings)
    assert np.argmax(loadings[:, 0]) == 0 and np.argmax(scores[:, 0]) == 1
    assert abs(scores[0, 0]) < 1e-12  # same loading everywhere: no specificity
    assert 0 < scores[2, 0] < 1e-3 * scores[1, 0]  # a specific but negligible gene stays small
    assert scores[3, 0] < 0  # below its level in the other topics
    np.testing.assert_allclose(ratio[1, 0], np.log2((0.20 + PSEUDO / 4) / (0.01 + PSEUDO / 4)))


def test_specificity_scores_sum_to_kl_divergence():
    rng = np.random.default_rng(0)
    loadings = rng.gamma(0.5, size=(300, 5))
    loadings /= loadings.sum(axis=0)
    scores, _ = specificity(loadings)
    for k in range(5):
        others = np.delete(loadings, k, axis=1).mean(axis=1)
        kl = np.sum(loadings[:, k] * np.log2(loadings[:, k] / others))
        assert scores[:, k].sum() == pytest.approx(kl, rel=0.05)
    single, _ = specificity(loadings[:, :1])  # one topic: against the uniform distribution
    assert single.sum() == pytest.approx(np.sum(loadings[:, 0] * np.log2(loadings[:, 0] * 300)), rel=0.05)


def test_layout_matches_rank_genes_groups(fitted):
    ranked = fitted.uns["bcnmf_genes"]
    topics = list(fitted.uns["bcnmf"]["topics"])
    assert {"params", "names", "scores", "logfoldchanges", "pvals", "pvals_adj"} == set(ranked)
    assert ranked["params"]["method"] == "specificity" and ranked["params"]["reference"] == "rest"
    for field in ("names", "scores", "logfoldchanges", "pvals", "pvals_adj"):
        assert isinstance(ranked[field], np.recarray) and list(ranked[field].dtype.names) == topics
    # scores are the loading times the log-ratio stored as logfoldchanges
    loadings = pd.DataFrame(fitted.varm["bcnmf"], index=fitted.var_names, columns=topics)
    top = ranked["names"]["target_1"][:5]
    np.testing.assert_allclose(
        ranked["scores"]["target_1"][:5], loadings.loc[top, "target_1"] * ranked["logfoldchanges"]["target_1"][:5]
    )


def test_scanpy_readers_and_plot_work_unchanged(fitted, tmp_path):
    table = sc.get.rank_genes_groups_df(fitted, group=None, key="bcnmf_genes")
    assert list(table.columns) == ["group", "names", "scores", "logfoldchanges", "pvals", "pvals_adj"]
    assert len(table) == 7 * 100
    one = sc.get.rank_genes_groups_df(fitted, group="target_1", key="bcnmf_genes")
    assert list(one["names"]) == list(fitted.uns["bcnmf_genes"]["names"]["target_1"])
    axes = sc.pl.rank_genes_groups(fitted, key="bcnmf_genes", n_genes=5, show=False)
    assert len(axes) == 7 and axes[5].get_title() == "target_1 vs. rest"
    path = tmp_path / "fit.h5ad"
    fitted.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(sc.get.rank_genes_groups_df(back, group=None, key="bcnmf_genes"), table)


def test_rerank_all_genes_under_new_key(fitted):
    data = fitted.copy()
    before = data.copy()
    result = bc.tl.topic_genes(data, n_genes=None, key_added="all_genes", copy=True)
    assert_untouched(before, data)
    names = result.uns["all_genes"]["names"]
    assert len(names) == data.n_vars  # every gene was fitted
    assert sorted(names["shared_1"]) == sorted(data.var_names)
    np.testing.assert_array_equal(names["target_1"][:100], data.uns["bcnmf_genes"]["names"]["target_1"])


def test_genes_outside_the_fit_are_not_ranked(fitted):
    data = fitted.copy()
    data.varm["bcnmf"][50:] = 0  # as if only the first 50 genes had been fitted
    bc.tl.topic_genes(data, n_genes=None)
    assert set(data.uns["bcnmf_genes"]["names"]["target_1"]) == set(data.var_names[:50])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(key="other"), KeyError, "no bcNMF result under key 'other'"),
        (dict(n_genes=0), ValueError, "n_genes must be a positive integer"),
    ],
)
def test_errors(fitted, kwargs, error, match):
    data = fitted.copy()
    before = data.copy()
    with pytest.raises(error, match=match):
        bc.tl.topic_genes(data, **kwargs)
    assert_untouched(before, data)
