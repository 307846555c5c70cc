"""The documentation site builds in strict mode (every MkDocs, mkdocstrings and griffe warning an error).

The docs tools are in the ``dev`` extra, so a missing one is a failure here, not a skip. The notebooks are
rendered without being executed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [
    "scvi_quickstart",
    "posterior_predictive_checks",
    "custom_priors",
    "totalvi",
    "cellassign",
    "scanvi",
    "query_mapping",
    "write_your_own_model",
]
PAGES = [
    "index.html",
    "installation/index.html",
    "architecture/index.html",
    "scaling/index.html",
    "guide/saving/index.html",
    "guide/errors/index.html",
    "guide/query_mapping/index.html",
    "guide/minified/index.html",
    "models/scvi/index.html",
    "models/scanvi/index.html",
    "models/totalvi/index.html",
    "models/cellassign/index.html",
    "api/model/index.html",
    "api/module/index.html",
    *(f"tutorials/{name}/index.html" for name in NOTEBOOKS),
]


def test_docs_build_strict(built_site: Path) -> None:
    site = built_site  # built with --strict: every warning fails the build (tests/conftest.py)
    missing = [page for page in PAGES if not (site / page).is_file()]
    assert not missing, f"pages missing from the built site: {missing}"
    # the API reference is generated from the docstrings, and the models' maths is rendered for MathJax
    model_api = (site / "api/model/index.html").read_text(encoding="utf-8")
    assert 'id="pyrovi.model.SCVI"' in model_api and 'id="pyrovi.model.TOTALVI"' in model_api
    assert "arithmatex" in (site / "models/scvi/index.html").read_text(encoding="utf-8")
    # reStructuredText roles are translated for Markdown (docs/_ext/griffe_rst.py), never shown raw
    for page in site.glob("api/*/index.html"):
        assert ":class:`" not in page.read_text(encoding="utf-8"), page
    # ... and a cross-reference to a documented object is a link to its entry, across pages too
    assert 'href="../train/#pyrovi.train.Trainer"' in model_api


def _load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "_ext" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docstring_markup_translated() -> None:
    rst_to_markdown = _load("griffe_rst").rst_to_markdown
    text = (
        "See :class:`~pyrovi.priors.LatentPrior` and :func:`pyrovi.datasets.pbmc_small`, :math:`z_n`.\n\n"
        ".. math::\n\n    a &= b \\\\\n    c &= d\n\n"
        "Parameters\n----------\nn_hidden, n_latent\n    Sizes.\n"
    )
    out = rst_to_markdown(text)
    assert "`LatentPrior`" in out and "`pyrovi.datasets.pbmc_small`" in out and "$z_n$" in out
    assert "$$\n\\begin{aligned}\na &= b \\\\\nc &= d\n\\end{aligned}\n$$" in out
    # griffe would give every name of a group the first one's type and default: one entry each
    assert "n_hidden\n    Sizes.\nn_latent\n    Sizes." in out


def test_source_quotes_follow_the_code() -> None:
    from mkdocs.exceptions import PluginError

    hooks = _load("hooks")
    block = hooks.quote_source("pyrovi/module/_vae.py", "VAE.model")
    assert block.startswith("```python") and "def model(" in block and 'pyro.sample("x"' in block
    with pytest.raises(PluginError, match="defines no"):
        hooks.quote_source("pyrovi/module/_vae.py", "VAE.no_such_method")
