"""Reproducibility: seeds, batch sizes (W updated once per epoch), processes and devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import bcnmf_sc as bc
from bcnmf_sc.engine import BCNMF, match_topics

FAST = dict(background_key="condition", background="ctrl", n_topics=3, max_epochs=15, progress=False)


def _history(adata, key="bcnmf"):
    return adata.uns[key]["history"].drop(columns="seconds")


def _assert_same_result(a, b, key_a="bcnmf", key_b="bcnmf"):
    np.testing.assert_array_equal(a.obsm[key_a], b.obsm[key_b])
    np.testing.assert_array_equal(a.varm[key_a], b.varm[key_b])
    pd.testing.assert_frame_equal(a.uns[key_a]["enrichment"], b.uns[key_b]["enrichment"])
    pd.testing.assert_frame_equal(_history(a, key_a), _history(b, key_b))


@pytest.mark.parametrize("model", ["shared_target", "contrastive"])
def test_same_seed_same_result_different_seed_different(small_adata, model):
    kwargs = dict(FAST, model=model, alpha=0.1, n_starts=2)
    a, b, c = small_adata(fmt="csr"), small_adata(fmt="csr"), small_adata(fmt="csr")
    bc.tl.bcnmf(a, **kwargs, random_state=11)
    bc.tl.bcnmf(b, **kwargs, random_state=11)
    bc.tl.bcnmf(c, **kwargs, random_state=12)
    _assert_same_result(a, b)
    assert not np.allclose(a.varm["bcnmf"], c.varm["bcnmf"])


def test_online_updates_are_reproducible_too(small_adata):
    kwargs = dict(FAST, w_update="online", batch_size=16, random_state=3)
    a, b = small_adata(), small_adata()
    bc.tl.bcnmf(a, **kwargs)
    bc.tl.bcnmf(b, **kwargs)
    _assert_same_result(a, b)


_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from conftest import make_adata
import bcnmf_sc as bc
adata = make_adata(fmt="csr")
bc.tl.bcnmf(adata, background_key="condition", background="ctrl", n_topics=3, max_epochs=15, progress=False,
            n_starts=2, random_state=5)
print(json.dumps(dict(obsm=adata.obsm["bcnmf"].tolist(), varm=adata.varm["bcnmf"].tolist())))
"""


def test_identical_across_processes(small_adata):
    """A fresh interpreter (new hash seed, fresh torch state) gives bit-identical results."""
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(tests=tests_dir)], capture_output=True, text=True,
                         env=env, check=True, timeout=300)
    other = json.loads(out.stdout.strip().splitlines()[-1])
    adata = small_adata(fmt="csr")
    bc.tl.bcnmf(adata, **FAST, n_starts=2, random_state=5)
    np.testing.assert_array_equal(np.array(other["obsm"]), adata.obsm["bcnmf"])
    np.testing.assert_array_equal(np.array(other["varm"]), adata.varm["bcnmf"])


# --------------------------------------------------------------------------------------------- batch size
@pytest.mark.parametrize("likelihood", ["poisson", "gaussian"])
@pytest.mark.parametrize("model", ["shared_target", "contrastive"])
def test_epoch_updates_do_not_depend_on_batch_size(planted, model, likelihood):
    """With w_update='epoch' W's update is the exact full-data MU step and each cell's usage update depends only
    on its own row and W, so the batch size changes only the order of float sums (measured: ≤ 1e-6 relative)."""
    x, y, _ = planted(n_target=60, n_background=50, n_genes=24, likelihood=likelihood)
    kwargs = dict(model=model, likelihood=likelihood, alpha=0.1, w_update="epoch", max_epochs=25, tol=0, random_state=4)
    reference = BCNMF(3, batch_size=10_000, **kwargs).fit(x, y)
    for batch_size in (1, 7, 33, 110):
        est = BCNMF(3, batch_size=batch_size, **kwargs).fit(x, y)
        np.testing.assert_allclose(est.loadings_, reference.loadings_, rtol=1e-4, atol=1e-7, err_msg=str(batch_size))
        top = reference.target_usages_.max()
        np.testing.assert_allclose(est.target_usages_, reference.target_usages_, rtol=1e-4, atol=1e-5 * top)
        np.testing.assert_allclose(est.background_usages_, reference.background_usages_, rtol=1e-4, atol=1e-5 * top)
        assert est.n_epochs_ == reference.n_epochs_


def test_epoch_updates_do_not_depend_on_batch_size_through_tl(small_adata):
    results = []
    for batch_size in (5, 64, 4096):
        adata = small_adata(fmt="csr")
        bc.tl.bcnmf(adata, **FAST, batch_size=batch_size, tol=0, w_update="epoch")
        results.append(adata)
    for adata in results[1:]:
        np.testing.assert_allclose(adata.varm["bcnmf"], results[0].varm["bcnmf"], rtol=1e-4, atol=1e-7)
        top = results[0].obsm["bcnmf"].max()
        np.testing.assert_allclose(adata.obsm["bcnmf"], results[0].obsm["bcnmf"], rtol=1e-4, atol=1e-5 * top)


# ------------------------------------------------------------------------------------------------- devices
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("likelihood", ["poisson", "gaussian"])
@pytest.mark.parametrize("model", ["shared_target", "contrastive"])
def test_cpu_and_cuda_agree(planted, model, likelihood):
    x, y, _ = planted(likelihood=likelihood, seed=2)
    kwargs = dict(model=model, likelihood=likelihood, alpha=0.1, max_epochs=150, random_state=0)
    cpu = BCNMF(3, device="cpu", **kwargs).fit(x, y)
    gpu = BCNMF(3, device="cuda", **kwargs).fit(x, y)
    assert gpu.device_.type == "cuda"
    matched, similarity = match_topics(cpu.loadings_, gpu.loadings_)
    np.testing.assert_array_equal(matched, np.arange(3))  # same start, so the same topic order
    assert similarity.min() > 0.999, similarity
    rel = np.abs(gpu.target_usages_ - cpu.target_usages_).max() / cpu.target_usages_.max()
    assert rel < 1e-2, rel
    np.testing.assert_allclose(gpu.loadings_.sum(axis=0), 1.0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_agree_through_tl(small_adata):
    a, b = small_adata(fmt="csr"), small_adata(fmt="csr")
    bc.tl.bcnmf(a, **FAST, device="cpu")
    bc.tl.bcnmf(b, **FAST, device="cuda")
    assert b.uns["bcnmf"]["params"]["device_used"].startswith("cuda")
    top = a.obsm["bcnmf"].max()
    np.testing.assert_allclose(b.obsm["bcnmf"], a.obsm["bcnmf"], rtol=1e-3, atol=1e-3 * top)


def test_projection_does_not_depend_on_batch_size(planted):
    """Regression: transform stopped each batch on the batch's total change, so a cell's usages depended on
    the cells it was batched with."""
    x, y, _ = planted(n_target=60, n_background=60, n_genes=24)
    est = BCNMF(3, max_epochs=20, random_state=0).fit(x, y)
    reference = est.transform(y)
    for batch_size in (1, 7, 50):
        est.batch_size = batch_size
        np.testing.assert_allclose(est.transform(y), reference, rtol=1e-5, atol=1e-5 * reference.max())
