"""Paper parity and beyond: ARI on the β series, digits on textures and mice protein.

Usage::

    python benchmarks/bench_parity.py                 # everything, writes benchmarks/results/parity.md
    python benchmarks/bench_parity.py --only beta     # one part: beta | raw | digits | mice
    python benchmarks/bench_parity.py --seeds 1       # quicker

Protocols (see ../shared/data/README.md):

* β series, paper protocol: CP10k + log1p on all cells, Gaussian likelihood, contrastive model,
  K = 2, paper α = 2 (ours = paper · n_b / n_t = 2), 300 epochs, KMeans(2) on the target usages vs subtype.
  Plain NMF is the same fit with α = 0.
* β series on raw counts ("beyond the paper"): ``tl.bcnmf`` with only ``n_topics=10`` given (the
  defaults), KMeans(2) on the usages of the topics that ``enrichment["enriched"]`` marks, each taken as
  a fraction of the cell's total usage (removes library size).
* Digits on textures: Gaussian, contrastive, K = 2, paper α = 2 (ours = 2 · 150 / 200 = 1.5), 300 epochs,
  KMeans(2) on target usages vs digit.
* Mice protein: target = S/C & Saline (Control + Ts65Dn), background = C/S & Saline & Control; Gaussian,
  K = 15, paper α = 1 (ours = 1 · 135 / 270 = 0.5), 100 epochs; KMeans(2) on a 2-D UMAP of the target
  usages vs genotype.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import bcnmf_sc as bc
from bcnmf_sc.engine import BCNMF

BETAS = (0, 1, 2, 4, 8, 16)
PAPER_BCNMF = dict(zip(BETAS, (1.000, 1.000, 0.999, 0.997, 0.998, 0.965)))
RESULTS = Path(__file__).parent / "results"


def cp10k_log1p(matrix) -> sp.csr_matrix:
    matrix = sp.csr_matrix(matrix, dtype=np.float64)
    library = np.asarray(matrix.sum(axis=1)).ravel()
    matrix = (sp.diags(1e4 / np.maximum(library, 1e-12)) @ matrix).tocsr()
    matrix.data = np.log1p(matrix.data)
    return matrix


def kmeans_ari(features: np.ndarray, labels) -> float:
    predicted = KMeans(2, n_init=10, random_state=0).fit_predict(features)
    return float(adjusted_rand_score(np.asarray(labels), predicted))


def beta_paper_protocol(seeds: int) -> list[str]:
    rows = ["| β | paper bcNMF | ours bcNMF (mean ± sd) | ours per seed | plain NMF α=0 (mean) | seconds/fit |",
            "|---|---|---|---|---|---|"]
    for beta in BETAS:
        ours, plain, seconds = [], [], []
        for seed in range(seeds):
            adata = bc.datasets.beta_series(beta=beta, random_state=seed)
            is_target = (adata.obs["condition"] == "target").to_numpy()
            data = cp10k_log1p(adata.X)
            subtype = adata.obs["subtype"].to_numpy()[is_target]
            for alpha, store in ((2.0, ours), (0.0, plain)):
                start = time.perf_counter()
                model = BCNMF(2, model="contrastive", likelihood="gaussian", alpha=alpha, max_epochs=300, tol=0.0,
                              random_state=seed).fit(data[is_target], data[~is_target])
                if alpha:
                    seconds.append(time.perf_counter() - start)
                store.append(kmeans_ari(model.target_usages_, subtype))
        rows.append(f"| {beta} | {PAPER_BCNMF[beta]:.3f} | {np.mean(ours):.3f} ± {np.std(ours):.3f} | "
                    f"{', '.join(f'{a:.3f}' for a in ours)} | {np.mean(plain):.3f} | {np.mean(seconds):.1f} |")
        logging.info(rows[-1])
    return rows


def enriched_fraction_features(adata) -> np.ndarray:
    usages = adata.obsm["bcnmf"]
    enriched = adata.uns["bcnmf"]["enrichment"]["enriched"].to_numpy()
    return usages[:, enriched] / np.maximum(usages.sum(axis=1, keepdims=True), 1e-12)


def beta_raw_counts(seeds: int) -> list[str]:
    rows = ["| β | defaults: ARI (mean, min) | enriched topics | epochs | seconds/fit |", "|---|---|---|---|---|"]
    for beta in BETAS:
        scores, n_enriched, epochs, seconds = [], [], [], []
        for seed in range(seeds):
            adata = bc.datasets.beta_series(beta=beta, random_state=seed)
            start = time.perf_counter()
            bc.tl.bcnmf(adata, background_key="condition", background="background", n_topics=10, progress=False)
            seconds.append(time.perf_counter() - start)
            is_target = (adata.obs["condition"] == "target").to_numpy()
            features = enriched_fraction_features(adata)[is_target]
            n_enriched.append(features.shape[1])
            epochs.append(adata.uns["bcnmf"]["params"]["n_epochs"])
            scores.append(kmeans_ari(features, adata.obs["subtype"].to_numpy()[is_target]) if features.shape[1] else 0.0)
        rows.append(f"| {beta} | {np.mean(scores):.3f}, {np.min(scores):.3f} | {n_enriched} | {epochs} | "
                    f"{np.mean(seconds):.1f} |")
        logging.info(rows[-1])
    return rows


def digits(seeds: int) -> list[str]:
    adata = bc.datasets.digits_on_textures()
    is_target = (adata.obs["condition"] == "target").to_numpy()
    data = np.asarray(adata.X, dtype=np.float64)
    digit = adata.obs["digit"].to_numpy()[is_target]
    n_t, n_b = is_target.sum(), (~is_target).sum()
    alpha = 2.0 * n_b / n_t
    rows = ["| method | ARI per seed | mean |", "|---|---|---|"]
    settings = (
        (f"bcNMF, ours α={alpha:g} (= paper α 2 by the n_t/n_b conversion)", alpha),
        ("bcNMF, ours α=2 (the paper's number taken as a per-cell α)", 2.0),
        ("plain NMF (α=0)", 0.0),
    )
    for name, a in settings:
        scores = []
        for seed in range(seeds):
            model = BCNMF(2, model="contrastive", likelihood="gaussian", alpha=a, max_epochs=300, tol=0.0,
                          random_state=seed).fit(data[is_target], data[~is_target])
            scores.append(kmeans_ari(model.target_usages_, digit))
        rows.append(f"| {name} | {', '.join(f'{s:.3f}' for s in scores)} | {np.mean(scores):.3f} |")
        logging.info(rows[-1])
    return rows


def mice(seeds: int) -> list[str]:
    import umap

    adata = bc.datasets.mice_protein()
    obs = adata.obs
    saline = obs["Treatment"] == "Saline"
    is_target = ((obs["Behavior"] == "S/C") & saline).to_numpy()
    is_background = ((obs["Behavior"] == "C/S") & saline & (obs["Genotype"] == "Control")).to_numpy()
    data = np.asarray(adata.X, dtype=np.float64)
    genotype = obs["Genotype"].to_numpy()[is_target]
    alpha = 1.0 * is_background.sum() / is_target.sum()
    rows = ["| seed | ARI (UMAP of usages → KMeans(2) vs genotype) |", "|---|---|"]
    scores = []
    for seed in range(seeds):
        model = BCNMF(15, model="contrastive", likelihood="gaussian", alpha=alpha, max_epochs=100, tol=0.0,
                      random_state=seed).fit(data[is_target], data[is_background])
        embedding = umap.UMAP(n_components=2, random_state=seed).fit_transform(model.target_usages_)
        scores.append(kmeans_ari(embedding, genotype))
        rows.append(f"| {seed} | {scores[-1]:.3f} |")
        logging.info(rows[-1])
    rows.append(f"| mean | {np.mean(scores):.3f} (published 0.789) |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("beta", "raw", "digits", "mice"), nargs="*")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 3; digits/mice 5)")
    parser.add_argument("--out", type=Path, default=RESULTS / "parity.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parts = args.only or ["beta", "raw", "digits", "mice"]
    sections = {
        "beta": ("β series, paper protocol (CP10k+log1p, Gaussian, K=2, α=2, 300 epochs)", beta_paper_protocol, 3),
        "raw": ("β series on raw counts, `tl.bcnmf` defaults with n_topics=10", beta_raw_counts, 3),
        "digits": ("Digits on textures (Gaussian, K=2, paper α=2, 300 epochs)", digits, 5),
        "mice": ("Mice protein (Gaussian, K=15, paper α=1, 100 epochs, UMAP → KMeans)", mice, 5),
    }
    lines = ["# Paper parity", "", f"Command: `python benchmarks/bench_parity.py --only {' '.join(parts)}`", ""]
    for part in parts:
        title, function, default_seeds = sections[part]
        start = time.perf_counter()
        rows = function(args.seeds or default_seeds)
        lines += [f"## {title}", "", *rows, "", f"({time.perf_counter() - start:.0f} s)", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists() and args.only:
        previous = args.out.read_text()
        lines = [previous.rstrip(), "", *lines[3:]]
    args.out.write_text("\n".join(lines) + "\n")
    logging.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
