"""Quick speed regression check for CI: ratios of ours to the baselines on a small problem.

Prints per-pass ratios (reference ÷ ours, sklearn ÷ ours; wall clock and CPU time) and the ratio of the
reference's time for ``--reference-iters`` passes to our time to reach its loss. Nothing is gated on
absolute time; pass ``--min-ratio R`` to fail (exit 1) when the CPU per-pass ratio to the reference
drops below ``R``. ``--quick`` (6,000 cells × 2,000 genes, 30 reference passes) runs in well under a
minute on 2 cores.

Usage::

    python benchmarks/bench_regression.py --quick
    python benchmarks/bench_regression.py --cells 10000 --genes 2000 --min-ratio 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import bench_speed as bs
import scipy.sparse as sp
import torch
from _common import make_data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6,000 cells × 2,000 genes, 30 reference passes")
    parser.add_argument("--cells", type=int, default=5000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--reference-iters", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-ratio", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the ratios as one JSON line too")
    args = parser.parse_args(argv)
    if args.quick:
        args.cells, args.genes, args.reference_iters = 6000, 2000, 30
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    x, y = make_data(args.cells, n_genes=args.genes)
    all_cells = sp.vstack([x, y]).tocsr()
    best = {}
    for _ in range(args.rounds):
        for name, measure in (("reference", lambda: bs.reference_per_pass(x, y, 3)),
                              ("sklearn", lambda: bs.sklearn_per_pass(all_cells, 3)),
                              ("exact", lambda: bs.ours_per_pass(x, y, bs.EXACT, 12)),
                              ("online", lambda: bs.ours_per_pass(x, y, bs.ONLINE, 12))):
            wall, cpu = measure()
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], wall), min(old[1], cpu))
    reference = bs.reference_100(x, y, args.reference_iters, 0.5)
    to_loss = bs.time_to_reference_loss(x, y, bs.ONLINE, reference["loss"], args.reference_iters)
    ratios = {
        "per_pass_vs_reference_wall": best["reference"][0] / best["exact"][0],
        "per_pass_vs_reference_cpu": best["reference"][1] / best["exact"][1],
        "per_pass_vs_sklearn_wall": best["sklearn"][0] / best["exact"][0],
        "per_pass_vs_sklearn_cpu": best["sklearn"][1] / best["exact"][1],
        "online_per_pass_vs_reference_cpu": best["reference"][1] / best["online"][1],
        "time_to_reference_loss_wall": reference["wall"] / to_loss["wall"],
        "time_to_reference_loss_cpu": reference["cpu"] / to_loss["cpu"],
        "passes_to_reference_loss": to_loss["epochs"],
    }
    print(f"{args.cells:,} cells × {args.genes:,} genes, {x.nnz + y.nnz:,} non-zeros, K = {bs.K}, "
          f"{torch.get_num_threads()} threads")
    for key, value in ratios.items():
        print(f"  {key:36s} {value:8.2f}")
    print(f"  (reference {args.reference_iters} passes: loss {reference['loss']:.6g}; ours reached it after "
          f"{to_loss['epochs']} online passes; total benchmark time {time.perf_counter() - start:.1f} s)")
    if args.json:
        print(json.dumps(ratios))
    if args.min_ratio is not None and ratios["per_pass_vs_reference_cpu"] < args.min_ratio:
        print(f"FAIL: per-pass CPU ratio {ratios['per_pass_vs_reference_cpu']:.2f} < {args.min_ratio}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
