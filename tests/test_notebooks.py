"""The notebooks run, and are committed executed.

``test_notebook_runs`` executes each notebook's code cells in order, as a user would, on the notebook's own
fast settings (``PYROVI_FAST=1``: few epochs and posterior samples, the same code). ``test_notebook_has_outputs``
checks that every committed notebook was executed top to bottom (with its real settings) before it was committed:
a tutorial without its figures is not one.
"""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert "scvi_quickstart.ipynb" in names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    import pyrovi

    monkeypatch.chdir(tmp_path)  # a notebook may write a model next to it
    monkeypatch.setenv("PYROVI_FAST", "1")
    # notebooks change global settings; restore them for the tests that follow
    monkeypatch.setattr(pyrovi.settings, "progress_bar", False)
    monkeypatch.setattr(pyrovi.settings, "verbosity", pyrovi.settings.verbosity)
    monkeypatch.setattr(pyrovi.settings, "batch_size", pyrovi.settings.batch_size)
    namespace: dict = {"__name__": "__main__"}
    cells = _code_cells(path)
    assert cells, f"{path.name} has no code"
    try:
        for cell in cells:
            exec(compile("".join(cell["source"]), f"{path.name}", "exec"), namespace)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")  # the notebooks' pyplot figures
    assert namespace.get("FAST") is True  # the notebook read PYROVI_FAST
    assert "pyrovi" in namespace  # every notebook imports the library it shows
    if path.name == "scvi_quickstart.ipynb":  # the one that shows saving
        assert (tmp_path / "pbmc_model" / "model.safetensors").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_outputs(path):
    cells = _code_cells(path)
    unexecuted = [i for i, c in enumerate(cells) if c.get("execution_count") is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} were not executed; run the notebook before committing"
    counts = [c["execution_count"] for c in cells]
    assert counts == sorted(counts), f"{path.name} was not executed top to bottom (execution counts {counts})"
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} holds an error output: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    figures = [o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} has no figure output (image/png)"
