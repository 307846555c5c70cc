"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they catch what they forbid.

The contracts: the layers data -> dataloaders -> module -> train -> model -> criticism (a lower layer never
imports a higher one), and no import cycle among the modules of ``pyrovi.model`` and ``pyrovi.model.base``.
They are checked with import-linter (``lint-imports``), in a subprocess: the import graph is read from the
source files, and a copy of the package with a forbidden import added must break the contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pyrovi

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(project: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package ``pyrovi`` found in ``project``, with ``project``'s pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache", str(project / "pyproject.toml")],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of pyrovi's sources and pyproject.toml, to add forbidden imports to."""
    shutil.copytree(ROOT / "pyrovi", tmp_path / "pyrovi", ignore=shutil.ignore_patterns("__pycache__", "*.h5ad"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _add_import(module: Path, line: str) -> None:
    module.write_text(module.read_text(encoding="utf-8") + f"\n{line}  # added by tests/test_layers.py\n", encoding="utf-8")


def test_the_import_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_the_copy_is_what_is_checked(package_copy):
    # the failing cases below mean something only if an unchanged copy passes
    result = _lint_imports(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("importer", "line"),
    [
        ("data/_view.py", "from ..model import SCVI"),  # data imports the model layer
        ("module/_vae.py", "from ..train import TrainingPlan"),  # module imports train
        ("model/_scvi.py", "from ..criticism import PosteriorPredictiveCheck"),  # model imports criticism
        ("_checks.py", "from .data import AnnDataManager"),  # a shared private module imports a layer
    ],
)
def test_a_lower_layer_importing_a_higher_one_breaks_the_layers_contract(package_copy, importer, line):
    _add_import(package_copy / "pyrovi" / importer, line)
    result = _lint_imports(package_copy)
    assert result.returncode != 0
    assert "Layers: a lower layer never imports a higher one BROKEN" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("importer", "line"),
    [
        ("model/base/_save_load.py", "from ._base_model import BaseModelClass"),  # the cycle issue 18 removed
        ("model/base/_queries.py", "from ._de_mixin import DEMixin"),  # _de_mixin imports _queries
    ],
)
def test_an_import_cycle_in_the_model_package_breaks_the_acyclic_contract(package_copy, importer, line):
    _add_import(package_copy / "pyrovi" / importer, line)
    result = _lint_imports(package_copy)
    assert result.returncode != 0
    assert "No import cycles among the modules of pyrovi.model and pyrovi.model.base BROKEN" in result.stdout, result.stdout


def test_no_module_imports_another_modules_private_names():
    """A name starting with '_' is private to its module: shared helpers are public (kept out of __all__)."""
    import ast
    import pathlib

    package = pathlib.Path(pyrovi.__file__).parent
    offences = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            internal = isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("pyrovi"))
            if internal:
                offences += [f"{path.relative_to(package)}: {alias.name}" for alias in node.names
                             if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert offences == []
