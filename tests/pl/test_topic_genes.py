import numpy as np
import pytest
from matplotlib.figure import Figure

import bcnmf_sc as bc


def _png_ok(path):
    assert path.stat().st_size > 5000
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_topic_genes_renders_enriched_first(fitted, tmp_path):
    path = tmp_path / "genes.png"
    axes = bc.pl.topic_genes(fitted, n_genes=7, show=False, save=path)
    _png_ok(path)
    enrichment = fitted.uns["bcnmf"]["enrichment"]
    assert len(axes) == len(enrichment)
    titles = [ax.get_title() for ax in axes]
    enriched = ["★" in title for title in titles]
    assert enriched == sorted(enriched, reverse=True)  # starred (enriched) panels first
    assert sum(enriched) == int(enrichment["enriched"].sum())
    for ax, title in zip(axes, titles):
        assert len(ax.patches) == 7  # one bar per gene
        assert title.split()[0] in enrichment.index


def test_topic_genes_shows_the_stored_ranking(fitted):
    ax = bc.pl.topic_genes(fitted, topics="target_1", n_genes=5, show=False)
    shown = [label.get_text() for label in ax.get_yticklabels()]
    ranked = fitted.uns["bcnmf_genes"]
    assert shown == list(np.asarray(ranked["names"]["target_1"][:5]).astype(str))  # best gene first ...
    positions = [bar.get_y() for bar in ax.patches]
    assert positions == sorted(positions, reverse=True)  # ... drawn at the top
    np.testing.assert_allclose([bar.get_width() for bar in ax.patches], ranked["scores"]["target_1"][:5])
    assert ax.get_xlabel() == "specificity score"


def test_topic_genes_ranks_from_loadings_without_stored_ranking(fitted):
    expected = bc.pl.topic_genes(fitted, topics=[0, "target_1"], n_genes=4, show=False)
    expected = [[label.get_text() for label in ax.get_yticklabels()] for ax in expected]
    del fitted.uns["bcnmf_genes"]
    axes = bc.pl.topic_genes(fitted, topics=[0, "target_1"], n_genes=4, show=False)
    assert [[label.get_text() for label in ax.get_yticklabels()] for ax in axes] == expected
    assert "bcnmf_genes" not in fitted.uns  # plotting writes nothing


def test_topic_genes_gene_symbols_and_return_fig(fitted):
    fitted.var["symbol"] = [f"sym{i}" for i in range(fitted.n_vars)]
    fig = bc.pl.topic_genes(fitted, topics=["target_1", "shared_1"], gene_symbols="symbol", return_fig=True)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert all(label.get_text().startswith("sym") for label in fig.axes[0].get_yticklabels())


def test_topic_genes_errors(fitted):
    with pytest.raises(KeyError, match="no bcNMF result"):
        bc.pl.topic_genes(fitted, key="other")
    with pytest.raises(KeyError, match="not a topic"):
        bc.pl.topic_genes(fitted, topics="target_9")
    with pytest.raises(KeyError, match="gene_symbols"):
        bc.pl.topic_genes(fitted, gene_symbols="nope")
    with pytest.raises(ValueError, match="n_genes"):
        bc.pl.topic_genes(fitted, n_genes=0)
