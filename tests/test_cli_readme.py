"""The main job and the README's promises: two set-up commands, CI running the test one unchanged."""

import re
from pathlib import Path

import numpy as np

import pyrovi
from pyrovi.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup, flags=re.S)


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    quickstart, tests = commands
    assert quickstart.endswith("pyrovi quickstart")
    assert "pytest" in tests and ".[dev]" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), "'.ci/run' must call the README's test command unchanged"


def test_quickstart_trains_saves_and_plots(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path), "--max-epochs", "3"]) == 0
    printed = capsys.readouterr().out
    assert "Final validation loss" in printed and "Trained 3 epochs" in printed
    png = tmp_path / "latent_pbmc.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    adata = pyrovi.datasets.pbmc68k_reduced()
    model = pyrovi.model.SCVI.load(tmp_path / "scvi_pbmc", adata)
    assert model.is_trained and len(model.history["elbo_validation"]) == 3
    assert np.isfinite(model.get_latent_representation(indices=np.arange(5))).all()
