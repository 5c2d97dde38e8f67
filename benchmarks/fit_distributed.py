"""Fit bcNMF data-parallel on an h5ad file: one process per CPU group or GPU, launched with torchrun.

Every rank opens the file backed (``read_h5ad(path, backed="r")``), selects the target and background
cells by an ``obs`` column and calls :func:`bcnmf_sc.engine.fit_distributed`, which shards the cells by
rank (each rank reads only its own rows), all-reduces W's statistics and returns the same fit on every
rank. Rank 0 writes the loadings, all usages and the history to ``--out`` (npz).

CPU (gloo), 2 processes::

    torchrun --standalone --nproc_per_node=2 benchmarks/fit_distributed.py data.h5ad \\
        --background-key condition --background ctrl --n-topics 10 --out fit.npz

GPUs (nccl), one process per GPU on one machine::

    torchrun --standalone --nproc_per_node=4 benchmarks/fit_distributed.py data.h5ad \\
        --background-key condition --background ctrl --device cuda --batch-size 65536 --out fit.npz

Several machines: the same command on each, with ``--nnodes=N --node_rank=i
--rdzv_backend=c10d --rdzv_endpoint=HOST:PORT`` instead of ``--standalone``.
"""

from __future__ import annotations

import argparse
import os
import time

import anndata as ad
import numpy as np

from bcnmf_sc.engine import BCNMF, RowSource, fit_distributed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--background-key", required=True)
    parser.add_argument("--background", required=True, nargs="+")
    parser.add_argument("--layer", default=None, help="an X-like layer stored as CSR (default: X)")
    parser.add_argument("--n-topics", type=int, default=10)
    parser.add_argument("--model", default="shared_target")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--w-update", default="epoch")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--n-starts", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--out", default="bcnmf_distributed.npz")
    args = parser.parse_args(argv)

    adata = ad.read_h5ad(args.path, backed="r")
    matrix = adata.X if args.layer is None else adata.layers[args.layer]
    is_background = adata.obs[args.background_key].astype(str).isin(args.background).to_numpy()
    target = RowSource(matrix, rows=np.flatnonzero(~is_background), name="target cells")
    background = RowSource(matrix, rows=np.flatnonzero(is_background), name="background cells")
    estimator = BCNMF(args.n_topics, model=args.model, alpha=args.alpha, w_update=args.w_update,
                      batch_size=args.batch_size, max_epochs=args.max_epochs, n_starts=args.n_starts,
                      device=args.device, random_state=args.random_state)
    start = time.perf_counter()
    fit_distributed(estimator, target, background)
    seconds = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) == 0:
        np.savez(args.out, loadings=estimator.loadings_, target_usages=estimator.target_usages_,
                 background_usages=estimator.background_usages_,
                 objective=np.array([h["objective"] for h in estimator.history_]),
                 topic_kind=estimator.topic_kind_)
        world = os.environ.get("WORLD_SIZE", "1")
        print(f"fitted {target.n_rows:,} target and {background.n_rows:,} background cells on {world} process(es) "
              f"in {seconds:.1f} s ({estimator.n_epochs_} epochs, converged: {estimator.converged_}); wrote {args.out}")
    adata.file.close()


if __name__ == "__main__":
    main()
