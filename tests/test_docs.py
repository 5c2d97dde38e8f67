"""The documentation builds without a single warning (``-W``)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    out = tmp_path / "html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(ROOT / "docs"),
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    for page in ("index", "api", "model", "cli", "tutorials/quickstart", "generated/bcnmf_sc.tl.bcnmf"):
        assert (out / f"{page}.html").is_file(), page
    api = (out / "api.html").read_text()
    for name in ("bcnmf_sc.tl.bcnmf", "bcnmf_sc.pl.usage", "bcnmf_sc.datasets.kang_pbmc", "bcnmf_sc.BCNMF"):
        assert name in api
    assert "<img" in (out / "tutorials" / "quickstart.html").read_text()  # stored outputs are rendered
