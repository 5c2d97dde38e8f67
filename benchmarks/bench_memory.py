"""Peak memory of fitting from CSR in memory and from a backed h5ad, against the budget.

Each measurement runs in a fresh child process. The data (cells × 2,000 genes, ~10 % density, half
target) are generated once, streamed to an h5ad file. In the child, after the libraries are imported and
the data loaded, the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``), the fit runs, and
the peak resident memory *during the fit* is read back (``VmHWM``; it includes the interpreter, the
libraries and the loaded data). The whole-process peak (``ru_maxrss``) is reported as well.

Modes:

* ``engine``: ``BCNMF.fit`` on the target and background CSR matrices (loaded, then split);
* ``tl``: ``bcnmf_sc.tl.bcnmf`` on the in-memory AnnData (cells selected by ``obs["condition"]``; the
  background is projected with all topics afterwards, as ``tl.bcnmf`` does);
* ``tl_sorted``: as ``tl`` after sorting the cells by condition (each group one run of rows, as after
  ``ad.concat([background, target])``): batches are then views of X instead of gathered copies;
* ``backed``: ``bcnmf_sc.tl.bcnmf`` on ``read_h5ad(path, backed="r")``: rows are streamed, X never loaded.

Budgets (from the performance issue): in memory, peak ≤ 3 × CSR bytes + (cells + genes) × K × 8 bytes
+ 500 MB; backed, peak ≤ 2 GB + (cells + genes) × K × 8 bytes.

Usage::

    python benchmarks/bench_memory.py                          # 50k cells: engine, tl, backed
    python benchmarks/bench_memory.py --sizes 50000 1000000     # adds 1M cells
    python benchmarks/bench_memory.py --sizes 1000000 --modes backed --w-update online

Writes ``benchmarks/results/memory.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, environment, markdown_table, write_report

K = 10
MB = 1024**2


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(mode: str, path: str, params: dict) -> dict:
    import resource

    import anndata as ad
    import numpy as np
    import scipy.sparse as sp
    import torch

    import bcnmf_sc as bc
    from bcnmf_sc.engine import BCNMF

    threads = params.pop("_threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    rss_libraries = _status("VmRSS:")
    if mode == "backed":
        adata = ad.read_h5ad(path, backed="r")
    else:
        adata = ad.read_h5ad(path)
    if mode == "tl_sorted":  # each group one run of rows, as after ad.concat([background, target])
        order = np.argsort((adata.obs["condition"] == "target").to_numpy(), kind="stable")
        adata = adata[order].copy()
        gc.collect()
    n_cells, n_genes = adata.shape
    if mode == "engine":
        is_target = (adata.obs["condition"] == "target").to_numpy()
        x, y = sp.csr_matrix(adata.X[is_target]), sp.csr_matrix(adata.X[~is_target])
        del adata
        gc.collect()
        nnz, csr = x.nnz + y.nnz, sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in (x, y))
    else:
        if mode == "backed":
            group = adata.file["X"]
            nnz = int(group["data"].shape[0])
            csr = int(nnz * (group["data"].dtype.itemsize + group["indices"].dtype.itemsize)
                      + group["indptr"].shape[0] * group["indptr"].dtype.itemsize)
        else:
            nnz, csr = adata.X.nnz, adata.X.data.nbytes + adata.X.indices.nbytes + adata.X.indptr.nbytes
    gc.collect()
    rss_loaded = _status("VmRSS:")
    epoch_rss = _trace_epochs()
    reset = _reset_peak()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if mode == "engine":
        est = BCNMF(K, **params).fit(x, y)
        history, converged = est.history_, est.converged_
    else:
        bc.tl.bcnmf(adata, background_key="condition", background="background", n_topics=K, progress=False, **params)
        import pandas as pd

        uns = adata.uns["bcnmf"]
        history = pd.DataFrame(uns["history"]).to_dict("records")
        converged = uns.get("converged", uns.get("params", {}).get("converged"))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak_fit = _status("VmHWM:") if reset else -1
    fit_epochs = [h for h in history if h.get("stage", "fit") == "fit"]
    return dict(
        mode=mode, cells=n_cells, genes=n_genes, nnz=nnz, csr_bytes=csr, rss_libraries=rss_libraries,
        rss_loaded=rss_loaded, peak_fit=peak_fit, peak_process=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        wall=wall, cpu=cpu, epochs=len(history), fit_epochs=len(fit_epochs),
        converged=None if converged is None else bool(converged),
        objective=float(history[-1]["objective"]) if history else float("nan"), threads=torch.get_num_threads(),
        epoch_rss=epoch_rss,
    )


def _trace_epochs() -> list[tuple[str, int]]:
    """``(start and stage, RSS bytes)`` at the end of every epoch, read when the engine logs the epoch (DEBUG)."""
    import logging

    trace: list[tuple[str, int]] = []

    class RSSAtEpoch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if " epoch " in message:  # "start 0, fit epoch 12: objective …"
                trace.append((message.split(" epoch ")[0], _status("VmRSS:")))

    engine_logger = logging.getLogger("bcnmf_sc.engine._model")
    engine_logger.setLevel(logging.DEBUG)
    engine_logger.addHandler(RSSAtEpoch(logging.DEBUG))
    return trace


def growth_per_epoch(trace: list) -> tuple[float, float, float]:
    """(first, last, largest least-squares slope per epoch within one stage) of the RSS trace, in MB.

    A new stage (background-only, then the full fit) prepares the batches of another group once, which
    steps the RSS up; growth is therefore measured within each stage of at least 6 epochs, skipping its
    first 2 epochs.
    """
    import itertools

    import numpy as np

    if len(trace) < 4:
        return float("nan"), float("nan"), float("nan")
    slopes = []
    for _, segment in itertools.groupby(trace, key=lambda entry: entry[0]):
        values = np.asarray([rss for _, rss in segment], dtype=float)[2:] / MB
        if len(values) >= 4:
            slopes.append(float(np.polyfit(np.arange(len(values)), values, 1)[0]))
    return trace[0][1] / MB, trace[-1][1] / MB, max(slopes) if slopes else float("nan")


def ensure_data(n_cells: int, data_dir: Path) -> Path:
    path = data_dir / f"sparse_counts_{n_cells}.h5ad"
    if not path.exists():
        from _common import make_data

        print(f"generating {n_cells:,} cells → {path}", flush=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        adata = make_data(n_cells, path=path)
        adata.file.close()
    return path


def budget(result: dict) -> int:
    factors = (result["cells"] + result["genes"]) * K * 8
    if result["mode"] == "backed":
        return 2 * 1024**3 + factors
    return 3 * result["csr_bytes"] + factors + 500 * MB


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000])
    parser.add_argument("--modes", nargs="+", default=["engine", "tl", "backed"], choices=["engine", "tl", "tl_sorted", "backed"])
    parser.add_argument("--data-dir", default="/tmp/bcnmf_bench")
    parser.add_argument("--w-update", default=None, help="passed to the fit (default: the package default)")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--tol", type=float, default=None)
    parser.add_argument("--n-starts", type=int, default=1, help="starts per fit (the package default may be more)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--out", default=str(RESULTS / "memory.md"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.path, json.loads(args.params))), flush=True)
        return

    params = {k: v for k, v in dict(w_update=args.w_update, max_epochs=args.max_epochs, tol=args.tol,
                                    n_starts=args.n_starts).items() if v is not None}
    shown = dict(params)
    if args.threads:
        params["_threads"] = args.threads
    env_start = environment()
    rows = []
    for n_cells in args.sizes:
        path = ensure_data(n_cells, Path(args.data_dir))
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--child", mode, "--path", str(path), "--params", json.dumps(params)]
            print(f"{n_cells:,} cells, {mode}: running", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(proc.stdout[-2000:], proc.stderr[-4000:], flush=True)
                rows.append({"cells": f"{n_cells:,}", "mode": mode, "within budget": f"failed (exit {proc.returncode})"})
                continue
            r = json.loads(lines[-1][len("RESULT "):])
            limit = budget(r)
            row = {
                "cells": f"{n_cells:,}", "mode": mode, "nnz": f"{r['nnz']:,}", "CSR MB": r["csr_bytes"] / MB,
                "libraries MB": r["rss_libraries"] / MB, "loaded MB": r["rss_loaded"] / MB,
                "peak during fit MB": r["peak_fit"] / MB, "process peak MB": r["peak_process"] / MB,
                "budget MB": limit / MB, "within budget": "yes" if r["peak_fit"] <= limit else "NO",
                "fit s (wall)": r["wall"], "fit s (CPU)": r["cpu"], "epochs": r["epochs"],
                "converged": r["converged"],
            }
            first, last, slope = growth_per_epoch(r.get("epoch_rss", []))
            row.update({"RSS epoch 1 MB": first, "RSS last epoch MB": last, "RSS growth MB/epoch (within a stage)": slope})
            rows.append(row)
            print("  " + ", ".join(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()),
                  flush=True)
            gc.collect()

    env = environment()
    env["load average"] = f"{env_start['load average']} (start) → {env['load average']} (end)"
    columns = ["cells", "mode", "nnz", "CSR MB", "libraries MB", "loaded MB", "peak during fit MB", "process peak MB",
               "budget MB", "within budget", "fit s (wall)", "fit s (CPU)", "epochs", "converged"]
    growth_columns = ["cells", "mode", "epochs", "RSS epoch 1 MB", "RSS last epoch MB", "RSS growth MB/epoch (within a stage)"]
    sections = [
        "## Peak resident memory", "",
        f"Fit parameters: `{shown or 'package defaults'}` (K = {K}). `libraries`: RSS after importing; `loaded`: "
        "after loading the data; `peak during fit`: highest RSS from the start of the fit to its end (libraries "
        "and data included); `process peak`: the child's lifetime peak (includes reading the file). Budget: "
        "in memory 3 × CSR + (cells + genes) × K × 8 B + 500 MB; backed 2 GB + (cells + genes) × K × 8 B.", "",
        markdown_table(rows, columns), "",
        "## Resident memory across epochs", "",
        "RSS read at the end of every epoch (when the engine logs it at DEBUG level), all starts and stages. A "
        "new stage (background only, then the full fit) prepares another group's batches once, a step up; the "
        "growth is the largest least-squares slope within one stage, after its first 2 epochs.", "",
        markdown_table(rows, growth_columns), "",
    ]
    write_report(Path(args.out), "Memory: peak RSS of bcnmf_sc fits", sections, env)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
