"""Every tutorial notebook runs from top to bottom, and the stored copy carries its outputs."""

from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
#: the quick start stays in the default run; the longer comparisons run with ``-m slow``
FAST = {"quickstart.ipynb"}


def _params():
    for path in NOTEBOOKS:
        marks = () if path.name in FAST else (pytest.mark.slow,)
        yield pytest.param(path, id=path.stem, marks=marks)


def test_tutorials_exist():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "kang_pbmc_ifn.ipynb", "digits_on_textures.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_notebook_has_outputs(path):
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count is not None for cell in code), "run the notebook and store it"
    assert not any(output.output_type == "error" for cell in code for output in cell.outputs)
    assert any("image/png" in output.get("data", {}) for cell in code for output in cell.outputs)


@pytest.mark.parametrize("path", list(_params()))
def test_tutorial_executes(path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(TUTORIALS)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
