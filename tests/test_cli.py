"""The ``bcnmf-sc`` command line, run in-process through ``main`` and once as ``python -m bcnmf_sc``."""

from __future__ import annotations

import hashlib
import inspect
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import bcnmf_sc as bc
from bcnmf_sc._cli import _parser, main

from .tl.sweep_helpers import programs_adata

FAST = ["--n-topics", "6", "--n-target-topics", "2", "--max-epochs", "20", "--n-starts", "1", "--no-progress"]


@pytest.fixture
def h5ad(tmp_path) -> Path:
    adata = bc.datasets.beta_series(
        beta=0.1, n_target=100, n_background=100, n_genes=100, shared_block_size=12, target_block_size=10
    )
    adata.X = sp.csr_matrix(adata.X)
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fit(h5ad: Path, out: Path, *extra: str) -> int:
    return main(["fit", str(h5ad), "--background-key", "condition", "--background", "background",
                 "-o", str(out), *FAST, *extra])


def test_fit_writes_results_and_leaves_input_alone(h5ad, tmp_path, capsys):
    before = _digest(h5ad)
    out = tmp_path / "out.h5ad"
    assert _fit(h5ad, out, "--key-added", "bc", "--random-state", "3") == 0
    assert _digest(h5ad) == before
    result = ad.read_h5ad(out)
    assert result.obsm["bc"].shape == (200, 6) and result.varm["bc"].shape == (100, 6)
    params = result.uns["bc"]["params"]
    assert params["n_topics"] == 6 and params["max_epochs"] == 20 and params["random_state"] == 3
    assert not params["progress"]
    assert "bc_genes" in result.uns
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    err = capsys.readouterr().err
    assert f"wrote {out}" in err and "most target-enriched topic " in err


@pytest.mark.parametrize(("command", "function", "skipped"), [
    ("fit", bc.tl.bcnmf, ()),
    ("sweep", bc.tl.bcnmf_sweep, ("keep_loadings", "warm_start")),  # storage / path options, defaults kept
])
def test_every_tl_argument_has_a_flag(command, function, skipped):
    parser = _parser()._subparsers._group_actions[0].choices[command]
    flags = {option for action in parser._actions for option in action.option_strings}
    for name in inspect.signature(function).parameters:
        if name in ("adata", "copy", *skipped):
            continue
        flag = "--no-progress" if name == "progress" else "--" + name.replace("_", "-")
        assert flag in flags, f"tl.{function.__name__} argument {name!r} has no flag {flag}"


def test_sweep_writes_the_sweep_refits_the_recommendation_and_leaves_input_alone(tmp_path, capsys):
    h5ad = tmp_path / "programs.h5ad"
    programs_adata().write_h5ad(h5ad)  # 3 shared + 2 target programs
    before = _digest(h5ad)
    out, plots = tmp_path / "sweep.h5ad", tmp_path / "plots"
    code = main(["sweep", str(h5ad), "--background-key", "condition", "--background", "background", "-o", str(out),
                 "--n-topics", "4", "5", "--n-target-topics", "2", "--n-seeds", "2", "--max-epochs", "60",
                 "--refit", "--plots", str(plots), "--no-progress"])
    assert code == 0
    assert _digest(h5ad) == before
    result = ad.read_h5ad(out)
    sweep = result.uns["bcnmf_sweep"]
    table = sweep["table"]
    assert list(table["n_topics"]) == [4, 5] and table["recommended"].tolist() == [False, True]
    recommended = sweep["recommended"]
    assert recommended["n_topics"] == 5 and recommended["n_target_topics"] == 2 and recommended["max_epochs"] == 60
    # --refit: tl.bcnmf on all cells with the recommended arguments
    params = result.uns["bcnmf"]["params"]
    assert params["n_topics"] == 5 and params["n_target_topics"] == 2 and params["n_starts"] >= 3
    assert result.obsm["bcnmf"].shape == (result.n_obs, 5)
    assert {"bcnmf_sweep_sweep.png", "bcnmf_sweep_stability.png", "bcnmf_usage.png"} <= {p.name for p in plots.iterdir()}
    err = capsys.readouterr().err
    assert "sweep: recommended model=shared_target, n_topics=5, n_target_topics=2" in err
    assert "most target-enriched topic" in err and f"wrote {out}" in err
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_sweep_errors_are_one_line(h5ad, tmp_path, capsys):
    code = main(["sweep", str(h5ad), "--background-key", "condition", "--background", "background", "-o",
                 str(tmp_path / "s.h5ad"), "--n-topics", "500", "--no-progress"])
    assert code == 1 and not (tmp_path / "s.h5ad").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("bcnmf-sc: error: the target group has 100 cells")


def test_flags_reach_tl_bcnmf(h5ad, tmp_path):
    out = tmp_path / "out.h5ad"
    code = main(["fit", str(h5ad), "--background-key", "condition", "--background", "background", "-o", str(out),
                 "--model", "contrastive", "--alpha", "0.05", "--n-topics", "3", "--max-epochs", "5", "--tol", "0",
                 "--batch-size", "64", "--usage-steps", "3", "--w-update", "online", "--n-starts", "2",
                 "--unsafe-alpha", "clip", "--device", "cpu", "--likelihood", "poisson", "--layer", "counts",
                 "--mask-var", "none", "--target", "target", "--no-progress"])
    assert code == 0
    params = ad.read_h5ad(out).uns["bcnmf"]["params"]
    expected = dict(model="contrastive", alpha=0.05, n_topics=3, max_epochs=5, tol=0.0, batch_size=64,
                    usage_steps=3, w_update="online", n_starts=2, unsafe_alpha="clip", device="cpu",
                    likelihood="poisson", layer="counts", target="target", n_epochs=5)
    assert {k: params[k] for k in expected} == expected
    assert params["mask_var"] is None


def test_backed_input(h5ad, tmp_path):
    before = _digest(h5ad)
    assert _fit(h5ad, tmp_path / "a.h5ad", "--backed") == 0
    assert _fit(h5ad, tmp_path / "b.h5ad") == 0
    assert _digest(h5ad) == before
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "a.h5ad").obsm["bcnmf"],
                               ad.read_h5ad(tmp_path / "b.h5ad").obsm["bcnmf"], rtol=1e-5)


def test_existing_output_needs_force(h5ad, tmp_path, capsys):
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"keep me")
    assert _fit(h5ad, out) == 2
    assert out.read_bytes() == b"keep me"
    assert "exists; pass --force" in capsys.readouterr().err
    assert _fit(h5ad, out, "--force") == 0
    assert "bcnmf" in ad.read_h5ad(out).uns


def test_output_may_not_be_the_input(h5ad, capsys):
    before = _digest(h5ad)
    assert _fit(h5ad, h5ad, "--force") == 2
    assert _digest(h5ad) == before
    assert "is the input file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--background", "ctrl"], "['ctrl'] is not a level of adata.obs['condition']; levels present:"),
        (["--background-key", "group"], "background_key='group' is not a column of adata.obs"),
        (["--n-topics", "500"], "fewer than n_topics=500"),
        (["--layer", "raw"], "layer='raw' is not in adata.layers"),
        (["--model", "contrastive", "--alpha", "100"], "is at or above the safe limit"),
    ],
)
def test_user_errors_are_one_line_without_traceback(h5ad, tmp_path, capsys, args, message):
    out = tmp_path / "out.h5ad"
    code = main(["fit", str(h5ad), "--background-key", "condition", "--background", "background", "-o", str(out),
                 "--max-epochs", "5", "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("bcnmf-sc: error:")] == [err.splitlines()[-1]]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad"]


def test_missing_input(tmp_path, capsys):
    code = main(["fit", str(tmp_path / "nope.h5ad"), "--background-key", "c", "--background", "x",
                 "-o", str(tmp_path / "o.h5ad")])
    assert code == 1 and "does not exist" in capsys.readouterr().err


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "in.h5ad"])  # no --background-key, no -o
    assert exit_info.value.code == 2
    assert "required" in capsys.readouterr().err


def test_integer_levels_from_the_command_line(h5ad, tmp_path):
    adata = ad.read_h5ad(h5ad)
    adata.obs["batch"] = np.where(adata.obs["condition"] == "background", 0, 1)
    path = tmp_path / "int.h5ad"
    adata.write_h5ad(path)
    code = main(["fit", str(path), "--background-key", "batch", "--background", "0", "-o",
                 str(tmp_path / "o.h5ad"), *FAST])
    assert code == 0
    assert ad.read_h5ad(tmp_path / "o.h5ad").uns["bcnmf"]["params"]["n_background_cells"] == 100


def test_verbose_logs_library_messages(h5ad, tmp_path, capsys):
    assert main(["-v", "fit", str(h5ad), "--background-key", "condition", "--background", "background",
                 "-o", str(tmp_path / "o.h5ad"), *FAST]) == 0
    assert "fitting bcNMF on 100 target and 100 background cells" in capsys.readouterr().err


@pytest.mark.skipif(not all(hasattr(bc.pl, f) for f in ("topic_genes", "usage", "history")), reason="pl not ready")
def test_plots(h5ad, tmp_path):
    plots = tmp_path / "plots"
    assert _fit(h5ad, tmp_path / "o.h5ad", "--plots", str(plots)) == 0
    written = sorted(p.name for p in plots.iterdir())
    assert written == ["bcnmf_history.png", "bcnmf_topic_genes.png", "bcnmf_usage.png"]
    assert all((plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in written)


def test_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-epochs", "10", "--no-progress"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "demo.h5ad" in names and {"bcnmf_history.png", "bcnmf_topic_genes.png", "bcnmf_usage.png"} <= set(names)
    result = ad.read_h5ad(out / "demo.h5ad")
    assert result.n_obs == 600 and result.uns["bcnmf"]["params"]["background"] == "ctrl"
    assert "top genes:" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--max-epochs", "10", "--no-progress"]) == 2  # no --force


def test_python_dash_m(h5ad, tmp_path):
    out = tmp_path / "out.h5ad"
    run = subprocess.run(
        [sys.executable, "-m", "bcnmf_sc", "fit", str(h5ad), "--background-key", "condition", "--background",
         "background", "-o", str(out), *FAST],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "bcnmf" in ad.read_h5ad(out).obsm
    bad = subprocess.run(
        [sys.executable, "-m", "bcnmf_sc", "fit", str(h5ad), "--background-key", "nope", "--background", "x",
         "-o", str(tmp_path / "bad.h5ad"), *FAST],
        capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("bcnmf-sc: error: background_key='nope'")
