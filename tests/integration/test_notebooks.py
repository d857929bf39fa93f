"""The notebooks execute top to bottom on the embedded model (nbclient, the venv's python3 kernel),
from a working directory other than the repository, and their committed outputs stay small and offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ["01_quickstart.ipynb", "02_persona_space.ipynb", "03_emergent_misalignment.ipynb"]
REMOTE = re.compile(r"""(src|href)\s*=\s*["']?(https?:)?//|@import\s+url\(\s*["']?https?:|require\.config""", re.I)
MAX_OUTPUT_BYTES = 250_000  # one PNG figure is ~60 kB; the 4.8 MB plotly.js must never be embedded


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _check_outputs(nb, name: str) -> None:
    for o in _outputs(nb):
        data = o.get("data", {})
        size = len(json.dumps(o))
        assert size < MAX_OUTPUT_BYTES, f"{name}: an output of {size} bytes (embedded plotly.js or an oversized image?)"
        for mime in ("text/html", "application/javascript"):
            text = "".join(data.get(mime, ""))
            assert "plotly.min.js" not in text and "Plotly.newPlot" not in text, f"{name}: plotly.js drawn inside a {mime} output"
            assert not REMOTE.search(text), f"{name}: an output loads from the network: {REMOTE.search(text).group(0)!r}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_are_small_and_offline(name):
    """What GitHub shows: outputs of a real run, figures as PNG, nothing loaded from the network."""
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert _outputs(nb), f"{name}: commit the notebook with the outputs of a real run"
    assert not [o for o in _outputs(nb) if o.output_type == "error"], f"{name}: committed with an error output"
    _check_outputs(nb, name)
    assert (ROOT / "notebooks" / name).stat().st_size < 1_000_000


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebook-runs")


@pytest.mark.slow  # about 40 s + 20 s + 5 min on two cores: the notebooks run the embedded model end to end
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, runs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONASPACE_NOTEBOOK_RUNS", str(runs_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel is a third process next to two xdist workers
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    # "python3" is ipykernel's spec; jupyter_client launches it with sys.executable, i.e. this venv.
    # The kernel starts in an empty directory: the notebooks must find repository files through the package.
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    assert not [o for o in _outputs(nb) if o.output_type == "error"]
    _check_outputs(nb, name)
    figures = [o for o in _outputs(nb) if o.output_type == "display_data"
               and "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures, "the notebook should draw at least one figure"
    text = "".join(o.get("text", "") for o in _outputs(nb) if o.output_type == "stream")
    if name.startswith("01"):
        assert "unsteered" in text and "x evil @ L" in text and "kept pairs" in text
        assert "\ufffd" not in text, "steered text with broken characters"
    elif name.startswith("02"):
        assert "PC1 valence AUROC" in text and "held-out traits" in text and "95% CI (bootstrap)" in text
        assert "(no pair data)" not in text and "95% bootstrap interval" in text, "the shipped vectors should give intervals"
    else:
        assert "corrupt+amplify_evil" in text and "cosine aligned vs corrupted" in text and "loss" in text
        assert "default-size results (docs" in text  # the shipped default-size results, found from outside the checkout
        assert not list(runs_dir.rglob("model.safetensors")), "the experiment should keep adapters, not merged models"
