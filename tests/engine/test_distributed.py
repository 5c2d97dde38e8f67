"""Data-parallel fitting: 2 CPU processes (gloo, launched with torchrun) give the factors of 1 process.

The worker script is written to a temporary folder and started with ``python -m torch.distributed.run
--standalone --nproc_per_node=2`` (a free localhost port is chosen by the rendezvous). Every rank is
given the full data and reads only its shard; rank 0 saves what it returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bcnmf_sc.engine import BCNMF

pytestmark = pytest.mark.distributed

CONFIGS = {
    # name: (estimator parameters, input format)
    "shared_target_sparse_f64": (dict(model="shared_target", n_target_topics=1, dtype="float64"), "csr"),
    "contrastive_sparse_f32": (dict(model="contrastive", alpha=0.005), "csr"),
    "gaussian_dense_f64": (dict(model="shared_target", likelihood="gaussian", n_target_topics=1, dtype="float64"), "dense"),
    "presharded_f64": (dict(model="contrastive", alpha=0.005, dtype="float64"), "shards"),
}
COMMON = dict(max_epochs=12, tol=0.0, batch_size=48, random_state=3, n_starts=2)

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, scipy.sparse as sp, torch
    import torch.distributed as dist
    from bcnmf_sc.engine import BCNMF, RowSource, fit_distributed

    data = np.load(sys.argv[1])
    configs = json.loads(sys.argv[2])
    common = json.loads(sys.argv[3])
    out = sys.argv[4]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for name, (params, fmt) in configs.items():
        params = dict(params)
        if "dtype" in params:
            params["dtype"] = getattr(torch, params["dtype"])
        x, y = data["x"], data["y"]
        if fmt == "csr":
            x, y = sp.csr_matrix(x), sp.csr_matrix(y)
        elif fmt == "shards":
            x, y = RowSource(sp.csr_matrix(x)).shard(rank, world), RowSource(sp.csr_matrix(y)).shard(rank, world)
        if params.get("likelihood") == "gaussian":
            x, y = np.log1p(x), np.log1p(y)
        est = fit_distributed(BCNMF(3, **params, **common), x, y)
        for attr in ("loadings_", "target_usages_", "background_usages_"):
            results[f"{name}/{attr}"] = getattr(est, attr)
        results[f"{name}/objective"] = np.array([h["objective"] for h in est.history_])
    online = fit_distributed(BCNMF(3, w_update="online", **common), sp.csr_matrix(data["x"]), sp.csr_matrix(data["y"]))
    results["online/loadings_"] = online.loadings_
    gathered = [None] * world
    dist.all_gather_object(gathered, online.loadings_)
    results["online/ranks_agree"] = np.array(all(np.array_equal(g, gathered[0]) for g in gathered))
    results["world_size"] = np.array(world)
    if rank == 0:
        np.savez(out, **results)
    dist.destroy_process_group()
    """
)


def _counts(n_cells: int, n_genes: int, seed: int, shared_only: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.gamma(0.5, 1.0, (n_genes, 3))
    u = rng.gamma(1.0, 3.0, (n_cells, 3))
    if shared_only:
        u[:, 2] = 0
    return rng.poisson(u @ w.T * (0.3 / (u @ w.T).mean()) * 3).astype(np.float64)


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    x = _counts(101, 40, seed=0, shared_only=False)  # odd sizes: shards of unequal length
    y = _counts(87, 40, seed=1, shared_only=True)
    np.savez(tmp / "data.npz", x=x, y=y)
    (tmp / "worker.py").write_text(WORKER)
    import json

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp / "worker.py"), str(tmp / "data.npz"), json.dumps(CONFIGS), json.dumps(COMMON), str(tmp / "out.npz")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return x, y, dict(np.load(tmp / "out.npz"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_processes_give_the_factors_of_one(two_process_results, name):
    x, y, results = two_process_results
    assert int(results["world_size"]) == 2
    params, fmt = CONFIGS[name]
    params = dict(params)
    if "dtype" in params:
        params["dtype"] = getattr(torch, params["dtype"])
    if fmt in ("csr", "shards"):
        x, y = sp.csr_matrix(x), sp.csr_matrix(y)
    if params.get("likelihood") == "gaussian":
        x, y = np.log1p(x), np.log1p(y)
    single = BCNMF(3, **params, **COMMON).fit(x, y)
    # float64: only the order of summation differs; float32: per-batch sums round differently
    rtol = 1e-9 if params.get("dtype") == torch.float64 else 2e-4
    for attr in ("loadings_", "target_usages_", "background_usages_"):
        expected = getattr(single, attr)
        np.testing.assert_allclose(results[f"{name}/{attr}"], expected, rtol=rtol, atol=rtol * np.abs(expected).max())
    np.testing.assert_allclose(results[f"{name}/objective"], [h["objective"] for h in single.history_], rtol=rtol)


def test_online_updates_run_in_lockstep_across_ranks(two_process_results):
    _, _, results = two_process_results
    assert bool(results["online/ranks_agree"])
    w = results["online/loadings_"]
    assert np.all(np.isfinite(w)) and np.allclose(w.sum(axis=0), 1.0)
