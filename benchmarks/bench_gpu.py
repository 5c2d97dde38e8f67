"""GPU throughput: non-zeros per second at 1M and 10M cells, GPU vs CPU, peak device memory.

One prepared script for a session that has a CUDA GPU (it exits with a message otherwise). The same
engine code runs on both devices; only ``device=`` differs.

* Data: cells × 2,000 genes at ~10 % density, Poisson counts of a rank-10 model, generated chunk by chunk
  *on the GPU* (``torch.poisson``; seconds even for 10M cells) and kept as scipy CSR matrices in host
  memory (half target, half background), exactly what a user passes to ``BCNMF.fit``.
* Per size and device: a fit of ``1 + --passes`` passes (``model="contrastive", alpha=0``, K = 10,
  ``--batch-size`` cells per step); seconds per pass = median of the passes after the first (the first
  also prepares and caches the batches); throughput = non-zeros ÷ seconds per pass.
* Peak device memory: ``torch.cuda.max_memory_allocated`` during the fit.
* CPU: the same fit on the host CPU at the sizes in ``--cpu-sizes`` (all cores, torch's default).

Usage (about 5–10 minutes on one H100/H200-class GPU with a 16-core host)::

    python benchmarks/bench_gpu.py
    python benchmarks/bench_gpu.py --sizes 1000000 --cpu-sizes 1000000 --passes 3

Writes ``benchmarks/results/gpu.md``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from _common import RESULTS, environment, markdown_table, write_report

from bcnmf_sc.engine import BCNMF

K = 10


def gpu_counts(n_cells: int, n_genes: int = 2000, density: float = 0.1, seed: int = 0, chunk: int = 200_000,
               device: str = "cuda") -> sp.csr_matrix:
    """Poisson counts ``X ~ Poisson(U Wᵀ)`` (rank 10) at about ``density`` non-zeros, built on the GPU."""
    gen = torch.Generator(device=device).manual_seed(seed)
    w = torch.rand(n_genes, K, generator=gen, device=device) ** 4
    w /= w.sum(dim=0, keepdim=True)
    rate = -np.log1p(-density)  # P(x > 0) = 1 − e^(−μ) ≈ density for an average μ
    pieces_indptr, pieces_indices, pieces_data = [np.zeros(1, dtype=np.int64)], [], []
    offset = 0
    for start in range(0, n_cells, chunk):
        n = min(chunk, n_cells - start)
        u = -torch.log(torch.rand(n, K, generator=gen, device=device).clamp_min(1e-12))  # Exp(1) usages
        mu = u @ w.T
        mu *= rate / mu.mean(dim=1, keepdim=True)
        x = torch.poisson(mu, generator=gen)
        csr = x.to_sparse_csr()
        indptr = csr.crow_indices().cpu().numpy().astype(np.int64)
        pieces_indptr.append(indptr[1:] + offset)
        pieces_indices.append(csr.col_indices().cpu().numpy().astype(np.int32))
        pieces_data.append(csr.values().cpu().numpy().astype(np.float32))
        offset += int(indptr[-1])
        del u, mu, x, csr
    out = sp.csr_matrix((n_cells, n_genes), dtype=np.float32)
    out.data = np.concatenate(pieces_data)
    out.indices = np.concatenate(pieces_indices)
    indptr = np.concatenate(pieces_indptr)
    # scipy wants one index dtype for indices and indptr
    out.indptr = indptr.astype(np.int32) if offset < np.iinfo(np.int32).max else indptr
    if out.indptr.dtype != out.indices.dtype:
        out.indices = out.indices.astype(out.indptr.dtype)
    return out


def per_pass(x, y, device: str, batch_size: int, passes: int, usage_steps: int) -> dict:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    est = BCNMF(K, model="contrastive", alpha=0.0, usage_steps=usage_steps, batch_size=batch_size,
                max_epochs=1 + passes, tol=0, random_state=0, n_starts=1, device=device).fit(x, y)
    total = time.perf_counter() - start
    seconds = float(np.median([h["seconds"] for h in est.history_[1:]]))
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else float("nan")
    return dict(seconds=seconds, total=total, first=est.history_[0]["seconds"], peak=peak)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--cpu-sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--batch-size", type=int, default=131_072, help="GPU cells per step")
    parser.add_argument("--cpu-batch-size", type=int, default=8192)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--usage-steps", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "gpu.md"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    if not torch.cuda.is_available():
        print("no CUDA device: bench_gpu.py was not run (it needs a GPU).")
        sys.exit(0)
    env = environment()
    env["gpu"] = torch.cuda.get_device_name(0)
    env["gpu memory GB"] = f"{torch.cuda.get_device_properties(0).total_memory / 1e9:.0f}"
    rows = []
    for n_cells in sorted(set(args.sizes) | set(args.cpu_sizes)):
        t0 = time.perf_counter()
        half = n_cells // 2  # target and background generated apart: each keeps 32-bit indices up to ~1e9 nnz
        x, y = gpu_counts(half, seed=0), gpu_counts(n_cells - half, seed=1)
        nnz = x.nnz + y.nnz
        print(f"{n_cells:,} cells, {nnz:,} non-zeros ({nnz / (n_cells * 2000):.1%}), generated in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        results = {}
        if n_cells in args.sizes:
            results["cuda"] = per_pass(x, y, "cuda", args.batch_size, args.passes, args.usage_steps)
            torch.cuda.empty_cache()
        if n_cells in args.cpu_sizes:
            results["cpu"] = per_pass(x, y, "cpu", args.cpu_batch_size, args.passes, args.usage_steps)
        for device, r in results.items():
            row = {"cells": f"{n_cells:,}", "nnz": f"{nnz:,}", "device": device,
                   "batch size": args.batch_size if device == "cuda" else args.cpu_batch_size,
                   "s/pass": r["seconds"], "nnz/s": nnz / r["seconds"], "first pass s": r["first"],
                   "fit s": r["total"], "peak device GB": r["peak"] / 1e9}
            if device == "cuda" and "cpu" in results:
                row["GPU ÷ CPU speed"] = results["cpu"]["seconds"] / r["seconds"]
            rows.append(row)
            print("  " + ", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()),
                  flush=True)
        del x, y
        gc.collect()
    sections = [
        "## Throughput (K = 10, α = 0, 2,000 genes, ~10 % density)", "",
        f"`usage_steps={args.usage_steps}`; a pass visits every cell once and updates W. The first pass also prepares "
        "the batches (on the GPU they stay in device memory when they fit).", "",
        markdown_table(rows, ["cells", "nnz", "device", "batch size", "s/pass", "nnz/s", "first pass s", "fit s",
                              "peak device GB", "GPU ÷ CPU speed"]), "",
    ]
    write_report(__import__("pathlib").Path(args.out), "GPU throughput of bcnmf_sc", sections, env)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
