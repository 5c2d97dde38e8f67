"""Which settings reach a given loss soonest: ``w_update`` × ``usage_steps`` × ``batch_size``.

On one simulated data set (default 20k cells × 2,000 genes, ~10 % density, K = 10, α = 0) a long exact
fit (``w_update="epoch"``, 300 passes) gives a reference loss L*. Every configuration is then fitted for
``--max-epochs`` passes; reported are the passes and the time (wall and CPU, a complete fit from scratch
up to that pass, estimated from the per-pass history plus the fit's setup) until the training loss first
comes within 1 % and within 0.1 % of L*, and the final loss.

Usage::

    python benchmarks/bench_convergence.py --threads 1
    python benchmarks/bench_convergence.py --cells 100000 --max-epochs 40

Writes ``benchmarks/results/convergence.md``.
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings

import numpy as np
import torch
from _common import RESULTS, environment, make_data, markdown_table, write_report

from bcnmf_sc.engine import BCNMF

K = 10


def fit(x, y, **params):
    wall0, cpu0 = time.perf_counter(), time.process_time()
    est = BCNMF(K, model="contrastive", alpha=0.0, tol=0, random_state=0, n_starts=1, **params).fit(x, y)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    losses = np.array([h["target_loss"] for h in est.history_])
    seconds = np.array([h["seconds"] for h in est.history_])
    return est, losses, seconds, wall, cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--reference-epochs", type=int, default=300)
    parser.add_argument("--w-updates", nargs="+", default=["epoch", "online"])
    parser.add_argument("--usage-steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 2048, 8192])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS / "convergence.md"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    env_start = environment()
    x, y = make_data(args.cells)
    _, long_losses, *_ = fit(x, y, w_update="epoch", usage_steps=2, max_epochs=args.reference_epochs)
    best = float(long_losses.min())
    print(f"L* = {best:.6g} per target cell after {args.reference_epochs} exact passes", flush=True)
    rows = []
    for w_update, steps, batch in itertools.product(args.w_updates, args.usage_steps, args.batch_sizes):
        if w_update == "epoch" and batch != args.batch_sizes[0]:
            continue  # the exact update does not depend on the batch size
        _, losses, seconds, wall, cpu = fit(x, y, w_update=w_update, usage_steps=steps, batch_size=batch,
                                            max_epochs=args.max_epochs)
        setup = wall - seconds.sum()
        cpu_per_wall = cpu / wall
        row = {"w_update": w_update, "usage_steps": steps, "batch_size": batch if w_update == "online" else "any",
               "s/pass (wall)": float(np.median(seconds)), "final loss / L*": losses[-1] / best}
        for label, tol in (("1 %", 1e-2), ("0.1 %", 1e-3)):
            hit = np.flatnonzero(losses <= best * (1 + tol))
            if len(hit):
                e = int(hit[0]) + 1
                row[f"passes to {label}"] = e
                row[f"s to {label} (wall)"] = setup + seconds[:e].sum()
                row[f"s to {label} (CPU≈)"] = (setup + seconds[:e].sum()) * cpu_per_wall
            else:
                row[f"passes to {label}"] = f"> {args.max_epochs}"
        rows.append(row)
        print("  " + ", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()),
              flush=True)
    env = environment()
    env["load average"] = f"{env_start['load average']} (start) → {env['load average']} (end)"
    columns = ["w_update", "usage_steps", "batch_size", "s/pass (wall)", "passes to 1 %", "s to 1 % (wall)",
               "s to 1 % (CPU≈)", "passes to 0.1 %", "s to 0.1 % (wall)", "s to 0.1 % (CPU≈)", "final loss / L*"]
    sections = [
        f"## Time to within 1 % and 0.1 % of L* ({args.cells:,} cells × 2,000 genes, K = {K}, α = 0)", "",
        f"L* = {best:.6g} (target loss per cell, best of {args.reference_epochs} exact passes). Times are for a "
        "complete fit from scratch up to the first pass at that loss (setup included); CPU≈ scales the wall time by "
        "the fit's CPU/wall ratio. The training loss of an online pass mixes batches seen under different W.", "",
        markdown_table(rows, columns), "",
    ]
    write_report(__import__("pathlib").Path(args.out), "Convergence: epoch vs online W updates", sections, env)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
