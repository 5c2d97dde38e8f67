"""Choosing K and α without labels: does ``tl.bcnmf_sweep`` recommend settings that recover the truth?

Labels are used only to score the recommendation afterwards, never by the sweep.

Parts (each writes ``benchmarks/results/selection_<part>.json``; ``report`` turns them into
``benchmarks/results/selection.md``)::

    python benchmarks/bench_selection.py beta           # β-series, β = 1, 8, 16 × generator seeds 0, 1, 2
    python benchmarks/bench_selection.py digits         # digits on textures, 5 pipeline seeds
    python benchmarks/bench_selection.py misspecified   # far too large α (contrastive), tracking along α
    python benchmarks/bench_selection.py report

``beta``: shared + target sweep over ``n_topics ∈ {5, 7, 9}`` × ``n_target_topics ∈ {2, 3}`` (truth: 5 shared
+ 2 target programs, i.e. K = 7 with 2 target topics), 3 seeds, 20 % held out. The recommendation is refitted
on all cells with ``tl.bcnmf(adata, **recommended)``; ARI = KMeans(2) on the target usages of the topics the
refit marks ``enriched`` (``uns["bcnmf"]["enrichment"]["enriched"]``), normalised per cell to proportions,
vs ``obs["subtype"]``. The cost of a wrong choice is the ARI at every other setting, from that setting's
sweep loadings (each seed's loadings, usages of all cells solved with the loadings fixed, enrichment and
ARI as above, mean over seeds). Also reported: ARI on the setting's ``target``-kind topics (which need not
all pass ``enriched``: log2FC ≥ 1, active share ≥ 0.2 and p < 0.05).

``digits``: Gaussian likelihood, shared + target sweep over ``n_topics ∈ {3, 4, 6, 8}`` ×
``n_target_topics ∈ {1, 2}``, 3 seeds; for each pipeline seed s = 0…4 the sweep and the refit use
``random_state = s``. ARI = KMeans(2) on the refit's target usages (the target topics), as raw usages and as
proportions, vs ``obs["digit"]``; also for :func:`bcnmf_sc.tl.consensus` of the sweep's seeds.

``misspecified``: contrastive α sweeps with far too large α on the β-series (Poisson, β = 8) and on the
digits (Gaussian), with the topic tracking along α.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import bcnmf_sc as bc
from bcnmf_sc.engine._heldout import solve_usages
from bcnmf_sc.tl._enrichment import enrichment_table

RESULTS = Path(__file__).parent / "results"
logger = logging.getLogger("bench_selection")

BETAS = (1, 8, 16)
GENERATOR_SEEDS = (0, 1, 2)
BETA_GRID = dict(n_topics=[5, 7, 9], n_target_topics=[2, 3])
DIGITS_GRID = dict(n_topics=[3, 4, 6, 8], n_target_topics=[1, 2])
PIPELINE_SEEDS = (0, 1, 2, 3, 4)
GROUPS = dict(background_key="condition", background="background")


# ------------------------------------------------------------------------------------------ scoring
def kmeans_ari(usages: np.ndarray, labels: np.ndarray, *, proportions: bool) -> float:
    """ARI of KMeans(2) on ``usages`` (optionally normalised per cell to proportions) vs ``labels``."""
    if usages.shape[1] == 0:
        return float("nan")
    if proportions:
        usages = usages / np.maximum(usages.sum(axis=1, keepdims=True), 1e-12)
    clusters = KMeans(2, n_init=10, random_state=0).fit_predict(usages)
    return float(adjusted_rand_score(labels, clusters))


def fit_scores(adata, key: str, label_key: str) -> dict:
    """ARIs of a tl.bcnmf / tl.consensus result: enriched topics and target-kind topics."""
    target = (adata.obs["condition"] == "target").to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()[target]
    usages = adata.obsm[key][target]
    enrichment = adata.uns[key]["enrichment"]
    enriched = enrichment["enriched"].to_numpy(dtype=bool)
    kind = (enrichment["kind"].astype(str) != "shared").to_numpy()
    return dict(
        ari_enriched=kmeans_ari(usages[:, enriched], labels, proportions=True),
        ari_target_kind=kmeans_ari(usages[:, kind], labels, proportions=True),
        ari_target_kind_raw=kmeans_ari(usages[:, kind], labels, proportions=False),
        n_enriched=int(enriched.sum()),
    )


def loadings_scores(adata, loadings: np.ndarray, kinds: np.ndarray, likelihood: str, label_key: str) -> dict:
    """Mean ARIs over a setting's seed loadings (usages of all cells solved with the loadings fixed)."""
    target = (adata.obs["condition"] == "target").to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()[target]
    scores = []
    for w in loadings:
        u_t = solve_usages(adata.X[target], w, likelihood=likelihood)
        u_b = solve_usages(adata.X[~target], w, likelihood=likelihood)
        table = enrichment_table(u_t, u_b, [str(i) for i in range(w.shape[1])], kinds, n_permutations=199)
        enriched = table["enriched"].to_numpy(dtype=bool)
        kind = kinds != "shared"
        scores.append(
            (kmeans_ari(u_t[:, enriched], labels, proportions=True), kmeans_ari(u_t[:, kind], labels, proportions=True))
        )
    scores = np.array(scores)
    return dict(
        ari_enriched=float(np.nanmean(scores[:, 0])) if np.isfinite(scores[:, 0]).any() else float("nan"),
        ari_target_kind=float(np.nanmean(scores[:, 1])),
    )


def table_records(table: pd.DataFrame) -> list[dict]:
    keep = [
        "n_topics",
        "n_target_topics",
        "alpha",
        "target_loss",
        "target_excess",
        "target_excess_se",
        "background_excess",
        "leakage",
        "n_enriched",
        "stability_min",
        "n_fitted",
        "n_stuck",
        "n_collapsed",
        "unsafe",
        "flags",
        "within_1se",
        "recommended",
        "seconds",
    ]
    return json.loads(table[keep].to_json(orient="records"))


def _setting_kinds(row: dict, model: str) -> np.ndarray:
    k, k_t = int(row["n_topics"]), int(row["n_target_topics"])
    if model == "contrastive":
        return np.array(["contrastive"] * k)
    return np.array(["shared"] * (k - k_t) + ["target"] * k_t)


# ------------------------------------------------------------------------------------------ parts
def part_beta() -> dict:
    out = []
    for beta in BETAS:
        for gen in GENERATOR_SEEDS:
            adata = bc.datasets.beta_series(beta=beta, random_state=gen)
            start = time.perf_counter()
            table = bc.tl.bcnmf_sweep(
                adata, **GROUPS, **BETA_GRID, n_seeds=3, keep_loadings="all", random_state=0, progress=False
            )
            sweep_seconds = time.perf_counter() - start
            result = adata.uns["bcnmf_sweep"]
            records = table_records(table)
            for index, record in enumerate(records):
                loadings = result["all_loadings"].get(str(index))
                if loadings is not None:
                    record.update(
                        loadings_scores(adata, loadings, _setting_kinds(record, "shared_target"), "poisson", "subtype")
                    )
            rec = result["recommended"]
            refit = None
            if rec is not None:
                start = time.perf_counter()
                bc.tl.bcnmf(adata, **rec | dict(progress=False))
                refit = fit_scores(adata, "bcnmf", "subtype") | dict(seconds=time.perf_counter() - start)
            entry = dict(
                beta=beta,
                generator_seed=gen,
                sweep_seconds=sweep_seconds,
                table=records,
                recommended=None
                if rec is None
                else dict(n_topics=rec["n_topics"], n_target_topics=rec["n_target_topics"]),
                refit=refit,
            )
            logger.info(
                "β=%s seed %s: recommended %s, refit %s (sweep %.0fs)",
                beta,
                gen,
                entry["recommended"],
                refit,
                sweep_seconds,
            )
            out.append(entry)
            _write("beta", dict(runs=out))
    return dict(runs=out)


def part_digits() -> dict:
    out = []
    base = bc.datasets.digits_on_textures()
    for seed in PIPELINE_SEEDS:
        adata = base.copy()
        start = time.perf_counter()
        table = bc.tl.bcnmf_sweep(
            adata,
            **GROUPS,
            **DIGITS_GRID,
            likelihood="gaussian",
            n_seeds=3,
            keep_loadings="all",
            random_state=seed,
            progress=False,
        )
        sweep_seconds = time.perf_counter() - start
        result = adata.uns["bcnmf_sweep"]
        records = table_records(table)
        for index, record in enumerate(records):
            loadings = result["all_loadings"].get(str(index))
            if loadings is not None:
                record.update(
                    loadings_scores(adata, loadings, _setting_kinds(record, "shared_target"), "gaussian", "digit")
                )
        rec = result["recommended"]
        refit = consensus = None
        if rec is not None:
            start = time.perf_counter()
            bc.tl.bcnmf(adata, **rec | dict(progress=False))
            refit = fit_scores(adata, "bcnmf", "digit") | dict(seconds=time.perf_counter() - start)
            try:
                bc.tl.consensus(adata, sweep_key="bcnmf_sweep", min_stability=0.0)
                consensus = fit_scores(adata, "bcnmf_consensus", "digit") | dict(
                    stability=adata.uns["bcnmf_consensus"]["consensus"]["stability"].round(3).tolist()
                )
            except ValueError as error:  # fewer than two successful seeds
                consensus = dict(error=str(error))
        entry = dict(
            pipeline_seed=seed,
            sweep_seconds=sweep_seconds,
            table=records,
            recommended=None if rec is None else dict(n_topics=rec["n_topics"], n_target_topics=rec["n_target_topics"]),
            refit=refit,
            consensus=consensus,
        )
        logger.info(
            "digits seed %s: recommended %s, refit %s, consensus %s (sweep %.0fs)",
            seed,
            entry["recommended"],
            refit,
            consensus,
            sweep_seconds,
        )
        out.append(entry)
        _write("digits", dict(runs=out))
    return dict(runs=out)


def part_misspecified() -> dict:
    out = {}
    cases = [
        (
            "beta8_poisson_contrastive",
            bc.datasets.beta_series(beta=8, random_state=0),
            "poisson",
            "subtype",
            dict(n_topics=[7], alpha=[0.0, 0.05, 0.2, 0.5, 1.0, 4.0]),
        ),
        (
            "digits_gaussian_contrastive",
            bc.datasets.digits_on_textures(),
            "gaussian",
            "digit",
            dict(n_topics=[4], alpha=[0.0, 0.5, 1.0, 2.0, 4.0, 16.0]),
        ),
    ]
    for name, adata, likelihood, label_key, grid in cases:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            table = bc.tl.bcnmf_sweep(
                adata,
                **GROUPS,
                **grid,
                model="contrastive",
                likelihood=likelihood,
                n_seeds=3,
                keep_loadings="all",
                random_state=0,
                progress=False,
            )
        seconds = time.perf_counter() - start
        result = adata.uns["bcnmf_sweep"]
        records = table_records(table)
        for index, record in enumerate(records):
            loadings = result["all_loadings"].get(str(index))
            if loadings is not None:
                record.update(
                    loadings_scores(adata, loadings, _setting_kinds(record, "contrastive"), likelihood, label_key)
                )
        tracking = result["tracking"]
        events = tracking[tracking["event"] != ""][["seed", "alpha", "track", "state", "event", "similarity"]]
        first_seed = tracking[tracking["seed"] == 0].pivot(index="track", columns="alpha", values="state")
        unsafe = result["runs"][result["runs"]["status"] == "unsafe"]["message"]
        out[name] = dict(
            seconds=seconds,
            table=records,
            recommended=result["recommended"]
            and dict(n_topics=result["recommended"]["n_topics"], alpha=result["recommended"]["alpha"]),
            events=json.loads(events.to_json(orient="records")),
            states_seed0={str(k): v for k, v in first_seed.to_dict(orient="index").items()},
            unsafe_message=unsafe.iloc[0] if len(unsafe) else "",
        )
        logger.info("%s done in %.0fs: recommended %s", name, seconds, out[name]["recommended"])
        _write("misspecified", out)
    return out


# ------------------------------------------------------------------------------------------ report
def _write(part: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"selection_{part}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)


def _load(part: str) -> dict | None:
    path = RESULTS / f"selection_{part}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def report() -> str:
    lines = [
        "# Choosing K and α without labels (`tl.bcnmf_sweep`)",
        "",
        (
            "Generated by `python benchmarks/bench_selection.py report` from the JSON files the parts write "
            "(`beta`, `digits`, `misspecified`; commands in the module docstring). Labels are used only to "
            "score the recommendations."
        ),
        "",
    ]
    beta = _load("beta")
    if beta:
        runs = beta["runs"]
        lines += [
            "## β-series (shared + target model, Poisson)",
            "",
            (
                f"Grid: n_topics {BETA_GRID['n_topics']} × n_target_topics {BETA_GRID['n_target_topics']} "
                "(truth: K = 7, 2 target topics), 3 seeds, 20 % of cells held out. "
                "ARI: KMeans(2) on the refit's target usages of its `enriched` topics, as proportions, vs "
                "subtype (target-kind: the same on the `target` topics)."
            ),
            "",
            (
                "| β | generator seed | recommended (K, K_t) | refit ARI (enriched) | refit ARI (target-kind) | "
                "sweep s | refit s |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for run in runs:
            rec, refit = run["recommended"], run["refit"] or {}
            lines.append(
                f"| {run['beta']} | {run['generator_seed']} | "
                f"{(rec['n_topics'], rec['n_target_topics']) if rec else '–'} | "
                f"{_fmt(refit.get('ari_enriched'))} | {_fmt(refit.get('ari_target_kind'))} | "
                f"{run['sweep_seconds']:.0f} | {_fmt(refit.get('seconds'), 0)} |"
            )
        lines += [
            "",
            (
                "What a wrong choice costs: mean ARI (enriched topics / target-kind topics) of each setting's "
                "sweep loadings, with the flags the sweep raised (every β and generator seed):"
            ),
            "",
        ]
        settings = [(r["n_topics"], r["n_target_topics"]) for r in runs[0]["table"]]
        header = "| β | seed | " + " | ".join(f"K={k}, K_t={kt}" for k, kt in settings) + " |"
        lines += [header, "|" + "---|" * (2 + len(settings))]
        for run in runs:
            cells = []
            for r in run["table"]:
                mark = "**" if r["recommended"] else ""
                flags = f" ({r['flags']})" if r["flags"] else ""
                cells.append(
                    f"{mark}{_fmt(r.get('ari_enriched'), 2)} / {_fmt(r.get('ari_target_kind'), 2)}{mark}{flags}"
                )
            lines.append(f"| {run['beta']} | {run['generator_seed']} | " + " | ".join(cells) + " |")
        refits = [r["refit"]["ari_enriched"] for r in runs if r["refit"]]
        lines += [
            "",
            (
                f"Minimum refit ARI over all β and seeds: **{_fmt(min(refits) if refits else None)}** "
                f"(criterion ≥ 0.98). Total sweep time {sum(r['sweep_seconds'] for r in runs) / 60:.1f} min."
            ),
            "",
        ]
    digits = _load("digits")
    if digits:
        runs = digits["runs"]
        lines += [
            "## Digits on textures (shared + target model, Gaussian)",
            "",
            (
                f"Grid: n_topics {DIGITS_GRID['n_topics']} × n_target_topics {DIGITS_GRID['n_target_topics']}, "
                "3 seeds; each pipeline seed runs the sweep and the refit with that `random_state`. ARI: KMeans(2) "
                "on the refit's target-topic usages vs digit (raw usages; as proportions; enriched topics as "
                "proportions), and the same for `tl.consensus(adata, sweep_key=...)` (proportions)."
            ),
            "",
            (
                "| pipeline seed | recommended (K, K_t) | ARI raw | ARI proportions | ARI enriched | "
                "consensus ARI | sweep s |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for run in runs:
            rec, refit, cons = run["recommended"], run["refit"] or {}, run["consensus"] or {}
            lines.append(
                f"| {run['pipeline_seed']} | {(rec['n_topics'], rec['n_target_topics']) if rec else '–'} | "
                f"{_fmt(refit.get('ari_target_kind_raw'))} | {_fmt(refit.get('ari_target_kind'))} | "
                f"{_fmt(refit.get('ari_enriched'))} | {_fmt(cons.get('ari_target_kind'))} | "
                f"{run['sweep_seconds']:.0f} |"
            )
        means = {
            name: np.nanmean([(r["refit"] or {}).get(name, np.nan) for r in runs])
            for name in ("ari_target_kind_raw", "ari_target_kind", "ari_enriched")
        }
        cons_mean = np.nanmean([(r["consensus"] or {}).get("ari_target_kind", np.nan) for r in runs])
        lines += [
            "",
            (
                f"Mean over the 5 pipeline seeds: raw {_fmt(means['ari_target_kind_raw'])}, proportions "
                f"**{_fmt(means['ari_target_kind'])}**, enriched {_fmt(means['ari_enriched'])}, consensus "
                f"{_fmt(cons_mean)} (criterion ≥ 0.85)."
            ),
            "",
            (
                "Per setting (pipeline seed 0): mean ARI of the sweep loadings (target-kind topics, proportions) "
                "and flags:"
            ),
            "",
            ("| K | K_t | ARI | leakage | stability (min) | target excess | flags | within 1 SE | recommended |"),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in runs[0]["table"]:
            lines.append(
                f"| {r['n_topics']} | {r['n_target_topics']} | {_fmt(r.get('ari_target_kind'), 2)} | "
                f"{_fmt(r['leakage'])} | {_fmt(r['stability_min'])} | {_fmt(r['target_excess'], 2)} | "
                f"{r['flags'] or '–'} | {r['within_1se']} | {r['recommended']} |"
            )
        lines.append("")
    mis = _load("misspecified")
    if mis:
        lines += ["## Far too large α (contrastive model)", ""]
        for name, case in mis.items():
            lines += [
                f"### {name}",
                "",
                f"Sweep time {case['seconds']:.0f} s; recommended: {case['recommended']}.",
                "",
                "| K | α | target excess | leakage | stability (min) | flags | ARI (all topics) |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in case["table"]:
                lines.append(
                    f"| {r['n_topics']} | {r['alpha']:g} | {_fmt(r['target_excess'], 2)} | "
                    f"{_fmt(r['leakage'])} | {_fmt(r['stability_min'])} | {r['flags'] or '–'} | "
                    f"{_fmt(r.get('ari_target_kind'), 2)} |"
                )
            if case["unsafe_message"]:
                lines += ["", f"Unsafe message: “{case['unsafe_message'][:300]}”"]
            lines += [
                "",
                (
                    "Topic states along α (seed 0; `target` = enriched on held-out cells, `shared` = leakage "
                    "above the threshold, `mixed` otherwise):"
                ),
                "",
            ]
            states = case["states_seed0"]
            alphas = sorted({float(a) for s in states.values() for a in s})
            lines += ["| track | " + " | ".join(f"α={a:g}" for a in alphas) + " |", "|---|" + "---|" * len(alphas)]
            for track, row in states.items():
                cells = [str(row.get(str(a), row.get(a, "–"))) for a in alphas]
                lines.append(f"| {track} | " + " | ".join(cells) + " |")
            lines.append("")
    text = "\n".join(lines) + "\n"
    (RESULTS / "selection.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["beta", "digits", "misspecified", "report", "all"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("bcnmf_sc").setLevel(logging.ERROR)
    parts = ["beta", "digits", "misspecified"] if args.part == "all" else [args.part]
    for part in parts:
        if part != "report":
            start = time.perf_counter()
            {"beta": part_beta, "digits": part_digits, "misspecified": part_misspecified}[part]()
            logger.info("part %s took %.1f min", part, (time.perf_counter() - start) / 60)
    print(report())


if __name__ == "__main__":
    main()
