"""Why the shared + target model starts from background-only shared topics.

Compares, on the β series (raw counts, K = 10 with 2 target topics, Poisson), the default
initialisation (shared topics learned on the background first, target topics started from the
target's unexplained residual) with a random joint start (all topics random, fitted together).

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


def target_ari(model: BCNMF, subtype) -> float:
    usages = model.target_usages_
    features = usages[:, model.topic_kind_ == "target"] / usages.sum(axis=1, keepdims=True)
    return adjusted_rand_score(subtype, KMeans(2, n_init=10, random_state=0).fit_predict(features))


def main() -> None:
    lines = ["# Shared + target initialisation", "", "Command: `python benchmarks/bench_init.py`", "",
             "| β | seed | init | ARI | target loss/cell | background loss/cell | epochs | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for beta in (1, 16):
        for seed in range(3):
            adata = bc.datasets.beta_series(beta=beta, random_state=seed)
            is_target = (adata.obs["condition"] == "target").to_numpy()
            subtype = adata.obs["subtype"].to_numpy()[is_target]
            X, Y = adata.X[is_target], adata.X[~is_target]
            rng = np.random.default_rng(seed)
            for name in ("background first (default)", "random joint"):
                start = time.perf_counter()
                model = BCNMF(10, n_target_topics=2, random_state=seed)
                init = rng.random((adata.n_vars, 10)) if name == "random joint" else None
                model.fit(X, Y, init_loadings=init)
                last = model.history_[-1]
                lines.append(f"| {beta} | {seed} | {name} | {target_ari(model, subtype):.3f} | {last['target_loss']:.1f} | "
                             f"{last['background_loss']:.1f} | {model.n_epochs_} | {time.perf_counter() - start:.1f} |")
                print(lines[-1], flush=True)
    out = Path(__file__).parent / "results" / "init.md"
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
