"""How the shared + target model starts: target topics from clusters of the residual, or not.

Three starts of the same fit (one start each, so the starting point alone is compared):

* ``residual clusters`` (the default): shared topics learned on the background first; each target topic
  starts from one cluster (spherical k-means) of the target cells' positive residuals;
* ``mean residual``: shared topics as above; every target topic starts from the mean residual times noise;
* ``random joint``: all topics random, fitted together from the start.

Data: digits on textures (Gaussian, 8 topics of which 2 target, 5 seeds) and the β series (raw counts,
Poisson, 7 topics of which 2 target — the truth — at β = 1 and 16, 3 seeds). ARI: KMeans(2) on the
target cells' usages of the target topics, as proportions, against the digit / the subtype.

    python benchmarks/bench_init.py            # writes benchmarks/results/init.md
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import bcnmf_sc as bc
from bcnmf_sc.engine import BCNMF

STARTS = ("residual clusters", "mean residual", "random joint")


def target_ari(model: BCNMF, labels) -> float:
    usages = model.target_usages_[:, model.topic_kind_ == "target"]
    features = usages / np.maximum(usages.sum(axis=1, keepdims=True), 1e-12)
    return adjusted_rand_score(labels, KMeans(2, n_init=10, random_state=0).fit_predict(features))


def fit(start: str, X, Y, *, n_topics: int, likelihood: str, seed: int) -> BCNMF:
    model = BCNMF(n_topics, n_target_topics=2, likelihood=likelihood, random_state=seed)
    model._target_start = "mean" if start == "mean residual" else "clusters"
    init = None
    if start == "random joint":
        init = np.random.default_rng(seed).random((X.shape[1], n_topics))
        init /= init.sum(axis=0)
    return model.fit(X, Y, init_loadings=init)


def datasets():
    digits = bc.datasets.digits_on_textures()
    for seed in range(5):
        yield "digits", seed, digits, "digit", 8, "gaussian"
    for beta in (1, 16):
        for seed in range(3):
            yield f"β = {beta}", seed, bc.datasets.beta_series(beta=beta, random_state=seed), "subtype", 7, "poisson"


def main() -> None:
    lines = ["# Shared + target: where the target topics start", "", "Command: `python benchmarks/bench_init.py` "
             "(one start per fit; see the module docstring).", "",
             "| data | seed | start | ARI | target loss/cell | background loss/cell | epochs | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    scores: dict[tuple[str, str], list[float]] = {}
    for name, seed, adata, label_key, n_topics, likelihood in datasets():
        is_target = (adata.obs["condition"] == "target").to_numpy()
        labels = adata.obs[label_key].astype(str).to_numpy()[is_target]
        X, Y = adata.X[is_target], adata.X[~is_target]
        for start in STARTS:
            clock = time.perf_counter()
            model = fit(start, X, Y, n_topics=n_topics, likelihood=likelihood, seed=seed)
            ari = target_ari(model, labels)
            scores.setdefault((name, start), []).append(ari)
            last = model.history_[-1]
            lines.append(f"| {name} | {seed} | {start} | {ari:.3f} | {last['target_loss']:.4g} | "
                         f"{last['background_loss']:.4g} | {model.n_epochs_} | {time.perf_counter() - clock:.1f} |")
            print(lines[-1], flush=True)
    lines += ["", "Mean ARI:", "", "| data | " + " | ".join(STARTS) + " |", "|---|" + "---|" * len(STARTS)]
    for name in dict.fromkeys(n for n, _ in scores):
        lines.append(f"| {name} | " + " | ".join(f"{np.mean(scores[(name, s)]):.3f}" for s in STARTS) + " |")
    out = Path(__file__).parent / "results" / "init.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
