"""The notebooks run: their code cells are executed in order, as a user would."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    import pyrovi

    monkeypatch.chdir(tmp_path)  # the notebook writes its model next to it
    monkeypatch.setattr(pyrovi.settings, "progress_bar", False)
    namespace: dict = {}
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{path.name}", "exec"), namespace)
    assert (tmp_path / "pbmc_model" / "model.safetensors").is_file()
