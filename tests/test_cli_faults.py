"""Faults around the command line: the output is all or nothing, and the input is never modified.

Real faults only: a file-size limit (as a full disk) that makes the write fail half-way, an interrupt
(SIGINT) during the fit, and bad data found mid-run.
"""

from __future__ import annotations

import hashlib
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import bcnmf_sc as bc
from bcnmf_sc._cli import main

ARGS = ["--background-key", "condition", "--background", "ctrl", "--n-topics", "3", "--max-epochs", "10",
        "--no-progress"]


@pytest.fixture
def h5ad(tmp_path, small_adata) -> Path:
    adata = small_adata(fmt="csr", extras=False)
    path = tmp_path / "in" / "input.h5ad"
    path.parent.mkdir()
    adata.write_h5ad(path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state(path: Path) -> tuple[str, int]:
    return _digest(path), path.stat().st_mtime_ns


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _limit_file_size(limit: int):
    def apply():  # runs in the child before exec: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _cli(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "bcnmf_sc", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def test_write_failure_leaves_no_output_and_no_temporary_file(h5ad, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = _state(h5ad)
    result = _cli(["fit", str(h5ad), "-o", str(out_dir / "result.h5ad"), *ARGS], preexec_fn=_limit_file_size(20_000))
    # Known: after a failed write HDF5 itself may crash while closing the file at exit (SIGSEGV, status -11),
    # after our error line; the guarantees below hold either way.
    assert result.returncode != 0
    assert "bcnmf-sc: error:" in result.stderr and "too large" in result.stderr
    assert _leftovers(out_dir) == []  # neither a partial result nor the temporary file
    assert _state(h5ad) == before


def test_write_failure_with_force_keeps_the_previous_output(h5ad, tmp_path):
    out = tmp_path / "result.h5ad"
    assert main(["fit", str(h5ad), "-o", str(out), *ARGS]) == 0
    previous = _digest(out)
    names = _leftovers(tmp_path)
    result = _cli(["fit", str(h5ad), "-o", str(out), "--force", *ARGS, "--random-state", "9"],
                  preexec_fn=_limit_file_size(20_000))
    assert result.returncode != 0 and "bcnmf-sc: error:" in result.stderr
    assert _digest(out) == previous  # the old result is intact, not half overwritten
    assert _leftovers(tmp_path) == names
    ad.read_h5ad(out)  # and still readable


def test_interrupt_during_the_fit_leaves_no_output(h5ad, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = _state(h5ad)
    args = [a if a != "10" else "100000" for a in ARGS]  # a fit that would run for a long time
    process = subprocess.Popen([sys.executable, "-m", "bcnmf_sc", "-v", "fit", str(h5ad), "-o", str(out_dir / "r.h5ad"),
                                *args, "--tol", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        # wait until the library has started (its INFO line "fitting bcNMF on ..." with -v), then interrupt
        seen = ""
        while "fitting bcNMF" not in seen and time.monotonic() < deadline and process.poll() is None:
            seen += process.stderr.readline()
        assert "fitting bcNMF" in seen, seen
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert _leftovers(out_dir) == []
    assert _state(h5ad) == before


def test_bad_data_found_mid_run_leaves_no_output(tmp_path, small_adata):
    adata = small_adata(fmt="csr", extras=False)
    m = adata.X.toarray()
    m[70, 3] = np.nan  # a background cell: found after the target cells were read
    adata.X = sp.csr_matrix(m)
    path = tmp_path / "input.h5ad"
    adata.write_h5ad(path)
    before = _state(path)
    out = tmp_path / "out.h5ad"
    for extra in ([], ["--backed"]):
        assert main(["fit", str(path), "-o", str(out), *ARGS, *extra]) == 1
        assert not out.exists()
        assert _leftovers(tmp_path) == ["input.h5ad"]
        assert _state(path) == before


def test_backed_fit_reads_only(h5ad, tmp_path):
    before = _state(h5ad)
    out = tmp_path / "out.h5ad"
    assert main(["fit", str(h5ad), "-o", str(out), *ARGS, "--backed"]) == 0
    assert _state(h5ad) == before
    result = ad.read_h5ad(out)
    assert result.obsm["bcnmf"].shape == (80, 3)
    # the written file holds the data as well as the results
    np.testing.assert_array_equal(result.X.toarray(), ad.read_h5ad(h5ad).X.toarray())


def test_output_in_a_missing_directory_is_refused_up_front(h5ad, tmp_path):
    before = _state(h5ad)
    assert main(["fit", str(h5ad), "-o", str(tmp_path / "nope" / "out.h5ad"), *ARGS]) == 2
    assert not (tmp_path / "nope").exists()
    assert _state(h5ad) == before
