"""Compact (int16) cached indices vs int32: fit time per epoch and cache size, measured side by side.

The prepared batches that a fit keeps in host memory store their index arrays as int16 where the axis
allows, and widen them to int32 on every visit (what torch's sparse kernels take). This script fits the
same data with that layout and with plain int32 indices (``COMPACT_INDEX_MAX = -1``), alternating the
two, and prints the time ratio and the bytes of the cache for batches that are views of X (each group
one run of rows) and for gathered batches (the groups' cells interleaved, as in many AnnData objects).

    python benchmarks/bench_indices.py --cells 100000 --epochs 5 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import scipy.sparse as sp
import torch
from _common import environment, make_data, markdown_table

import bcnmf_sc.engine._batches as batches
from bcnmf_sc.engine import BCNMF, RowSource

BATCH_SIZE = 2048  # the package default


def sources(x, y, layout: str) -> tuple[RowSource, RowSource]:
    if layout == "views":
        return RowSource(x, name="target"), RowSource(y, name="background")
    # the two groups' rows interleaved in one matrix, each group read through its positions (a gather)
    perm = np.random.default_rng(0).permutation(x.shape[0] + y.shape[0])
    mixed = sp.csr_matrix(sp.vstack([x, y], format="csr")[perm])
    is_target = perm < x.shape[0]
    return (RowSource(mixed, rows=np.flatnonzero(is_target), name="target"),
            RowSource(mixed, rows=np.flatnonzero(~is_target), name="background"))


def cache_bytes(source: RowSource) -> int:
    """Bytes the prepared batches of ``source`` add to memory (views of the matrix not counted)."""
    n = source.n_rows
    plan = batches.BatchPlan(source, -(-n // BATCH_SIZE), device=torch.device("cpu"), dtype=torch.float32,
                             sparse=True, expected_nnz=None)
    total = 0
    for i in range(len(plan)):
        plan.get(i)
        host = plan._cached[i]
        for t in (host.col, host.values, host.t_row, host.t_values):
            if not any(np.may_share_memory(t.numpy(), array) for array in plan._shared):
                total += t.numel() * t.element_size()
    return total


def seconds_per_epoch(target: RowSource, background: RowSource, epochs: int) -> float:
    """Median time of the full fit's epochs after its first (which prepares the target's batches)."""
    est = BCNMF(10, max_epochs=epochs, tol=0, n_starts=1, random_state=0, batch_size=BATCH_SIZE,
                progress=False).fit(target, background)
    steady = [h["seconds"] for h in est.history_ if h["stage"] == "fit"][1:]
    return statistics.median(steady)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the full fit (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", nargs="+", default=["views", "gathered"], choices=["views", "gathered"])
    args = parser.parse_args(argv)
    x, y = make_data(args.cells)
    compact = batches.COMPACT_INDEX_MAX
    rows = []
    for layout in args.layouts:
        target, background = sources(x, y, layout)
        times = {"int16": [], "int32": []}
        sizes = {}
        variants = [("int16", compact), ("int32", -1)]
        for name, limit in variants:
            batches.COMPACT_INDEX_MAX = limit
            sizes[name] = cache_bytes(target) + cache_bytes(background)
        for repeat in range(args.repeats):
            for name, limit in variants if repeat % 2 == 0 else variants[::-1]:  # ABBA: no order bias
                batches.COMPACT_INDEX_MAX = limit
                times[name].append(seconds_per_epoch(target, background, args.epochs))
        batches.COMPACT_INDEX_MAX = compact
        t16, t32 = statistics.median(times["int16"]), statistics.median(times["int32"])
        rows.append({"layout": layout, "cache MB int32": sizes["int32"] / 2**20, "cache MB int16": sizes["int16"] / 2**20,
                     "cache saved": f"{1 - sizes['int16'] / sizes['int32']:.0%}", "s/epoch int32": t32,
                     "s/epoch int16": t16, "epoch time int16 ÷ int32": t16 / t32})
    env = environment()
    print("Environment: " + "; ".join(f"{k}: `{v}`" for k, v in env.items()))
    print(f"\n{args.cells:,} cells × 2,000 genes, K = 10, batch size {BATCH_SIZE}, epochs 2–{args.epochs} of the "
          f"full fit timed, {args.repeats} repeats in alternating order (median)\n")
    print(markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
