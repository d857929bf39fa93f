"""The notebooks execute top to bottom on the embedded model (nbclient, the venv's python3 kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ["01_quickstart.ipynb", "02_persona_space.ipynb", "03_emergent_misalignment.ipynb"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Shared by the notebooks: notebook 02's fallback resumes notebook 01's ``evil`` run."""
    return tmp_path_factory.mktemp("notebook-runs")


@pytest.mark.slow  # minutes each: the notebooks run the embedded model end to end
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, runs_dir, monkeypatch):
    monkeypatch.setenv("PERSONASPACE_NOTEBOOK_RUNS", str(runs_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel is a third process next to two xdist workers
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    # "python3" is ipykernel's spec; jupyter_client launches it with sys.executable, i.e. this venv
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    plotted = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if o.output_type == "display_data" and "text/html" in o.get("data", {}) and "Plotly" in o["data"]["text/html"]]
    assert plotted, "the notebook should draw at least one plotly figure"
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")
    if name.startswith("01"):
        assert "unsteered" in text and "kept pairs" in text
    elif name.startswith("02"):
        assert "PC1 valence AUROC" in text and "held-out traits" in text
    else:
        assert "corrupt+amplify_evil" in text and "cosine aligned vs corrupted" in text and "loss" in text
