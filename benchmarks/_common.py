"""Shared helpers of the benchmark scripts: data, timing, environment notes, markdown tables."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a source checkout
    sys.path.insert(0, str(ROOT))


def make_data(n_cells: int, *, n_genes: int = 2000, density: float = 0.1, seed: int = 0, path=None):
    """Target and background CSR matrices (float32 counts) from :func:`bcnmf_sc.datasets.sparse_counts`.

    With ``path`` the data are streamed to an h5ad file and the backed AnnData is returned instead.
    """
    from bcnmf_sc.datasets import sparse_counts

    adata = sparse_counts(n_cells=n_cells, n_genes=n_genes, density=density, random_state=seed,
                          chunk_size=min(20_000, n_cells), path=path)
    if path is not None:
        return adata
    is_target = (adata.obs["condition"] == "target").to_numpy()
    x, y = adata.X[is_target], adata.X[~is_target]
    return sp.csr_matrix(x), sp.csr_matrix(y)


def csr_bytes(*matrices) -> int:
    """Bytes of the CSR arrays (data, indices, indptr) of the matrices."""
    return int(sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in matrices))


class Clock:
    """Wall and CPU (this process, all threads) seconds of a block."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def environment() -> dict:
    """What the numbers were measured on (load average included: this machine may be shared)."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu cores": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "load average": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        if not np.isfinite(value):
            return "–"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def write_report(path: Path, title: str, sections: list[str], env: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = [f"# {title}", "", "Environment: " + "; ".join(f"{k}: `{v}`" for k, v in env.items()), ""]
    path.write_text("\n".join(head + sections) + "\n")
