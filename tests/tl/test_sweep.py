"""``tl.bcnmf_sweep``: held-out diagnostics, flags, the label-free rule and its recommendation."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import bcnmf_sc as bc
from bcnmf_sc.engine._matching import match_topics
from bcnmf_sc.tl import _sweep

from .sweep_helpers import log_normalised, programs_adata
from .tl_helpers import assert_untouched

SWEEP = dict(background_key="condition", background="background", n_seeds=3, max_epochs=100, progress=False)


@pytest.fixture(scope="module")
def swept() -> ad.AnnData:
    """3 shared + 2 target programs; the grid has too few shared topics (K = 3, 4) and the right model (K = 5)."""
    adata = programs_adata()
    bc.tl.bcnmf_sweep(adata, n_topics=[3, 4, 5], n_target_topics=[2], **SWEEP)
    return adata


def _row(table: pd.DataFrame, **where) -> pd.Series:
    mask = np.ones(len(table), dtype=bool)
    for column, value in where.items():
        mask &= table[column].to_numpy() == value
    assert mask.sum() == 1
    return table[mask].iloc[0]


def test_too_few_shared_topics_are_flagged_and_the_right_model_is_recommended(swept):
    table = swept.uns["bcnmf_sweep"]["table"]
    for k in (3, 4):  # 1 or 2 shared topics for 3 shared programs: target topics absorb shared structure
        row = _row(table, n_topics=k)
        assert "leaky" in row["flags"] and not row["acceptable"] and not row["recommended"]
        assert row["leakage"] > _sweep.MAX_LEAKAGE
    right = _row(table, n_topics=5)
    assert right["flags"] == "" and right["acceptable"] and right["recommended"] and right["within_1se"]
    assert right["leakage"] < 0.1 and right["stability_min"] > 0.95 and right["n_enriched"] == 2
    # the held-out loss, compared seed by seed, is best for the right model, beyond one standard error
    assert right["target_excess"] == 0.0
    for k in (3, 4):
        row = _row(table, n_topics=k)
        assert row["target_excess"] > row["target_excess_se"] > 0 and not row["within_1se"]
    assert table["recommended"].sum() == 1


def test_uns_layout_and_return_value(swept):
    result = swept.uns["bcnmf_sweep"]
    assert set(result) == {"table", "runs", "tracking", "recommended", "loadings", "kinds", "params"}
    table, runs = result["table"], result["runs"]
    assert len(table) == 3 and len(runs) == 9
    assert set(runs["status"]) <= {"ok", "stuck"}
    for column in (
        "target_loss",
        "background_loss",
        "target_excess",
        "auroc",
        "leakage",
        "n_enriched",
        "stability",
        "stability_min",
        "flags",
        "acceptable",
        "within_1se",
        "recommended",
        "seconds",
    ):
        assert column in table
    assert result["tracking"].empty  # only the contrastive model walks an α path
    n_ok = int(_row(table, n_topics=5)["n_fitted"])
    assert result["loadings"].shape == (n_ok, swept.n_vars, 5)
    np.testing.assert_allclose(result["loadings"].sum(axis=1), 1.0, rtol=1e-6)
    assert list(result["kinds"]) == ["shared"] * 3 + ["target"] * 2
    assert result["params"]["n_seeds"] == 3 and "leaky" in result["params"]["flags"]


def test_recommendation_refits_with_tl_bcnmf(swept):
    recommended = swept.uns["bcnmf_sweep"]["recommended"]
    assert recommended["n_topics"] == 5 and recommended["n_target_topics"] == 2
    assert recommended["background_key"] == "condition" and recommended["background"] == "background"
    assert recommended["n_starts"] == _sweep.REFIT_STARTS  # the refit keeps the best of several starts
    adata = swept.copy()
    bc.tl.bcnmf(adata, **recommended | {"progress": False})
    enrichment = adata.uns["bcnmf"]["enrichment"]
    assert list(enrichment["kind"]) == ["shared"] * 3 + ["target"] * 2
    # the refit on all cells finds the target topics the sweep's seeds found
    _, similarity = match_topics(adata.varm["bcnmf"][:, 3:], swept.uns["bcnmf_sweep"]["loadings"][0][:, 3:])
    assert np.all(similarity > 0.9)
    target = (adata.obs["condition"] == "target").to_numpy()
    usage = adata.obsm["bcnmf"][target][:, 3:]
    subtype = adata.obs["subtype"].to_numpy()[target]
    dominant = usage.argmax(axis=1)
    agreement = max(np.mean(dominant == (subtype == "T1")), np.mean(dominant == (subtype == "T0")))
    assert agreement > 0.95


def test_sweep_survives_an_h5ad_round_trip(swept, tmp_path):
    path = tmp_path / "swept.h5ad"
    swept.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(
        back.uns["bcnmf_sweep"]["table"], swept.uns["bcnmf_sweep"]["table"], check_dtype=False, check_categorical=False
    )
    assert back.uns["bcnmf_sweep"]["recommended"]["n_topics"] == 5


def test_copy_returns_a_new_object_and_leaves_the_input_alone():
    adata = programs_adata(n_cells=60)
    before = adata.copy()
    out = bc.tl.bcnmf_sweep(
        adata, n_topics=[5], n_target_topics=[2], copy=True, **SWEEP | dict(n_seeds=2, max_epochs=20)
    )
    assert isinstance(out, ad.AnnData) and "bcnmf_sweep" in out.uns
    assert_untouched(before, adata)
    table = bc.tl.bcnmf_sweep(
        adata, n_topics=[5], n_target_topics=[2], key_added="mine", **SWEEP | dict(n_seeds=2, max_epochs=20)
    )
    assert isinstance(table, pd.DataFrame) and table is adata.uns["mine"]["table"]


def test_contrastive_sweep_flags_unsafe_alpha_warm_starts_and_tracks_topics(monkeypatch, tmp_path):
    adata = programs_adata(n_cells=80)
    calls = []
    fit = bc.engine.BCNMF.fit

    def spy(self, X, Y, *, init_loadings=None):
        calls.append((self.alpha, init_loadings is not None))
        return fit(self, X, Y, init_loadings=init_loadings)

    monkeypatch.setattr(bc.engine.BCNMF, "fit", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = bc.tl.bcnmf_sweep(
            adata, model="contrastive", n_topics=[3], alpha=[0.0, 0.01, 100.0], **SWEEP | dict(n_seeds=2, max_epochs=30)
        )
    # α walks up per seed; every fit after the first starts from the previous α's loadings
    assert calls == [(0.0, False), (0.01, True), (100.0, True)] * 2
    far = _row(table, alpha=100.0)
    assert far["unsafe"] and "unsafe" in far["flags"] and not far["recommended"]
    assert not np.isfinite(far["target_loss"])
    tracking = adata.uns["bcnmf_sweep"]["tracking"]
    assert list(tracking.columns) == _sweep._TRACKING_COLUMNS
    assert len(tracking) == 2 * 3 * 2  # seeds × tracks × fitted α steps
    first = tracking[tracking["alpha"] == 0.0]
    assert first["similarity"].isna().all()
    later = tracking[tracking["alpha"] == 0.01]
    assert (later["similarity"] > 0.9).all() and later["persisted"].all()  # a tiny α step keeps the topics
    assert set(tracking["state"]) <= {"target", "shared", "mixed"}
    adata.write_h5ad(tmp_path / "contrastive.h5ad")  # NaN-free where h5ad needs it, strings elsewhere
    back = ad.read_h5ad(tmp_path / "contrastive.h5ad")
    assert len(back.uns["bcnmf_sweep"]["tracking"]) == len(tracking)


def test_gaussian_contrastive_far_too_large_alpha_is_flagged():
    adata = log_normalised(programs_adata(n_cells=80))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = bc.tl.bcnmf_sweep(
            adata,
            model="contrastive",
            likelihood="gaussian",
            n_topics=[3],
            alpha=[0.0, 0.3, 1000.0],
            **SWEEP | dict(n_seeds=2, max_epochs=60),
        )
    far = _row(table, alpha=1000.0)
    assert {"collapsed", "poor_fit"} & set(far["flags"].split(",")) and not far["recommended"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(alpha=[0.5]), "alpha applies"),
        (dict(model="contrastive", n_target_topics=[2]), "n_target_topics applies"),
        (dict(n_topics=[3], n_target_topics=[3]), "leaves at least one shared"),
        (dict(test_size=1.0), "test_size"),
        (dict(n_seeds=0), "n_seeds"),
        (dict(n_topics=[]), "n_topics"),
        (dict(model="plain"), "model"),
        (dict(model="contrastive", alpha=[-1.0]), "alpha"),
        (dict(n_topics=[70]), "too few"),
    ],
)
def test_invalid_arguments_raise_before_fitting(kwargs, match):
    adata = programs_adata(n_cells=60)
    before = adata.copy()
    with pytest.raises(ValueError, match=match):
        bc.tl.bcnmf_sweep(adata, background_key="condition", background="background", progress=False, **kwargs)
    assert_untouched(before, adata)


# ------------------------------------------------------------------------------------- the rule alone
def _synthetic(rows: list[dict], losses: dict[int, list[float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = pd.DataFrame(rows)
    table["acceptable"] = table["flags"] == ""
    table["within_1se"] = False
    run_rows = [
        dict(setting=i, seed=s, status="ok", target_loss=v) for i, vals in losses.items() for s, v in enumerate(vals)
    ]
    runs = pd.DataFrame(run_rows)
    best = runs.groupby("seed")["target_loss"].min()
    table["target_excess"] = [np.mean([v - best[s] for s, v in enumerate(losses[i])]) for i in range(len(table))]
    return table, runs


def _setting(k, kt, flags="", stability=0.99, fitted=3):
    return dict(n_topics=k, n_target_topics=kt, alpha=np.nan, flags=flags, stability=stability, n_fitted=fitted)


def test_rule_prefers_fewer_topics_within_one_standard_error():
    table, runs = _synthetic(
        [_setting(5, 2), _setting(7, 2), _setting(9, 2)],
        # K=7 is best; K=5 is worse on average by less than the standard error of the paired differences,
        # K=9 is worse on every seed
        {0: [100.5, 89.7, 96.1], 1: [100.0, 90.0, 96.0], 2: [102.0, 92.1, 97.9]},
    )
    assert _sweep._recommend(table, runs, "shared_target") == 0
    assert list(table["within_1se"]) == [True, True, False]
    table, runs = _synthetic(
        [_setting(5, 2), _setting(7, 2)],
        {0: [103.0, 93.0, 99.0], 1: [100.0, 90.0, 96.0]},  # K=5 worse by 3 on every seed
    )
    assert _sweep._recommend(table, runs, "shared_target") == 1
    assert list(table["within_1se"]) == [False, True]


def test_rule_never_picks_a_flagged_setting_when_an_acceptable_one_exists():
    table, runs = _synthetic(
        [_setting(3, 2, "leaky"), _setting(5, 2), _setting(5, 3, "unstable")],
        {0: [90.0, 91.0, 92.0], 1: [80.0, 81.0, 82.0], 2: [85.0, 86.0, 87.0]},
    )
    assert _sweep._recommend(table, runs, "shared_target") == 1


def test_rule_among_equal_sizes_prefers_more_target_topics_then_the_lower_loss_then_stability():
    table, runs = _synthetic(
        # same K; setting: held-out loss on seeds 0, 1, 2. K_t = 1 fits best, K_t = 2 within one standard
        # error of it, K_t = 3 worse on every seed
        [_setting(8, 1, stability=0.99), _setting(8, 2, stability=0.9), _setting(8, 3, stability=0.95)],
        {0: [21.3, 21.2, 21.3], 1: [21.4, 21.1, 21.5], 2: [21.5, 21.3, 21.45]},
    )
    assert _sweep._recommend(table, runs, "shared_target") == 1
    assert list(table["within_1se"]) == [True, True, False]
    table, runs = _synthetic(
        [_setting(5, 2), _setting(5, 2), _setting(5, 2, stability=0.999)],
        {0: [90.2, 80.1, 85.0], 1: [90.0, 80.0, 85.0], 2: [90.0, 80.0, 85.0]},
    )
    assert _sweep._recommend(table, runs, "shared_target") == 2  # equal loss: the more stable
    table, runs = _synthetic(
        [_setting(4, 0), _setting(4, 0), _setting(4, 0)],  # contrastive: α 0.5, 1, 2 all within 1 SE
        {0: [30.0, 31.0, 29.0], 1: [30.2, 30.9, 29.4], 2: [30.5, 31.2, 29.9]},
    )
    table["alpha"] = [0.5, 1.0, 2.0]
    assert _sweep._recommend(table, runs, "contrastive") == 0


def test_rule_falls_back_to_the_least_flagged_and_gives_up_on_fatal_flags():
    table, runs = _synthetic(
        [_setting(3, 2, "no_signal,leaky"), _setting(5, 2, "leaky"), _setting(7, 2, "unsafe")],
        {0: [90.0, 91.0, 92.0], 1: [80.0, 81.0, 82.0], 2: [85.0, 86.0, 87.0]},
    )
    with pytest.warns(UserWarning, match="every setting is flagged"):
        assert _sweep._recommend(table, runs, "shared_target") == 1
    table, runs = _synthetic([_setting(3, 2, "collapsed"), _setting(5, 2, "poor_fit")], {0: [1.0, 2.0], 1: [1.0, 2.0]})
    assert _sweep._recommend(table, runs, "shared_target") is None


def test_a_seed_far_worse_than_the_best_is_marked_stuck():
    runs = [
        dict(status="ok", objective=100.0, scale=100.0),
        dict(status="ok", objective=103.0, scale=103.0),
        dict(status="ok", objective=300.0, scale=300.0),
        dict(status="collapsed"),
    ]
    _sweep._mark_stuck(runs)
    assert [r["status"] for r in runs] == ["ok", "ok", "stuck", "collapsed"]
    assert "local optimum" in runs[2]["message"]


def test_contrastive_sweep_can_start_every_alpha_cold(monkeypatch):
    adata = programs_adata(n_cells=60)
    starts = []
    fit = bc.engine.BCNMF.fit

    def spy(self, X, Y, *, init_loadings=None):
        starts.append(init_loadings is not None)
        return fit(self, X, Y, init_loadings=init_loadings)

    monkeypatch.setattr(bc.engine.BCNMF, "fit", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        bc.tl.bcnmf_sweep(
            adata,
            model="contrastive",
            n_topics=[3],
            alpha=[0.0, 0.01],
            warm_start=False,
            **SWEEP | dict(n_seeds=1, max_epochs=10),
        )
    assert starts == [False, False]
    assert adata.uns["bcnmf_sweep"]["params"]["warm_start"] is False


def test_rule_splits_equal_sizes_by_a_two_standard_error_test():
    # same K; K_t = 1 fits best. K_t = 2 is worse by 1.5 standard errors of the paired differences: outside
    # the one-standard-error set, yet not significantly worse, so the split with more target topics wins
    table, runs = _synthetic(
        [_setting(8, 1), _setting(8, 2)],
        {0: [20.0, 21.0, 22.0], 1: [20.25, 21.0, 22.35]},
    )
    assert _sweep._recommend(table, runs, "shared_target") == 1
    assert list(table["within_1se"]) == [True, False]
    # worse on every seed by a steady margin (many standard errors): the better split is kept
    table, runs = _synthetic(
        [_setting(8, 1), _setting(8, 2)],
        {0: [20.0, 21.0, 22.0], 1: [20.3, 21.31, 22.29]},
    )
    assert _sweep._recommend(table, runs, "shared_target") == 0
