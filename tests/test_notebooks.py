"""The notebooks run: their code cells are executed in order, as a user would."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    import pyrovi

    monkeypatch.chdir(tmp_path)  # a notebook may write a model next to it
    monkeypatch.setattr(pyrovi.settings, "progress_bar", False)
    namespace: dict = {}
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert cells, f"{path.name} has no code"
    for cell in cells:
        exec(compile("".join(cell["source"]), f"{path.name}", "exec"), namespace)
    assert "pyrovi" in namespace  # every notebook imports the library it shows
    if path.name == "scvi_pbmc.ipynb":  # the one that shows saving
        assert (tmp_path / "pbmc_model" / "model.safetensors").is_file()
