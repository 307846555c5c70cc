"""Names the docstring examples of ``pyrovi`` use, as the guides use them (``adata``, ``model``, ...).

``python -m pytest --doctest-modules pyrovi`` runs every example. Each example sees the imports a notebook
has (``pyrovi``, ``np``, ``pd``, ``torch``, ``pyro``, ``dist`` and the models ``SCVI``, ``TOTALVI``,
``CellAssign``, ``SCANVI``) and, when its text names them:

- ``adata``: a fresh copy of a small synthetic dataset (200 cells, 50 genes, batch and labels) set up for
  :class:`pyrovi.model.SCVI`, and ``manager``, its :class:`~pyrovi.data.AnnDataManager`;
- ``mdata``: a fresh synthetic MuData (modalities ``"rna"`` and ``"protein_expression"``);
- ``model``: an SCVI trained on it for a few epochs (fresh for each example, so an example may train,
  save or move it);
- ``nb_model`` / ``poisson_model``: SCVIs with negative binomial and Poisson likelihoods, and ``ppc``, a
  :class:`~pyrovi.criticism.PosteriorPredictiveCheck` of the two on ``adata``;
- ``totalvi`` / ``citeseq``: a TOTALVI and its CITE-seq data; ``cellassign`` / ``markers``: a CellAssign
  and its marker table; ``scanvi_model``: a SCANVI on ``adata`` with every other cell's label hidden
  (``cell_type``, unlabelled category ``"Unknown"``).

In TOTALVI's and CellAssign's own docstrings ``model`` and ``adata`` are that model and its data, as in
their guides.

Models are trained once per session and loaded per example, which keeps all the examples together to
seconds. Each example runs in its own temporary directory, so examples that save files leave none behind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_SEED = 0


def _trained(model_cls: type, adata: Any, save_to: Path, **model_kwargs: Any) -> Path:
    model = model_cls(adata, **model_kwargs)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    model.save(save_to, save_anndata=True)
    return save_to


class _DoctestObjects:
    """The session's datasets and trained models, each built the first time an example names it."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._cache: dict[str, Any] = {}

    def _once(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def scvi_adata(self) -> Any:
        def build() -> Any:
            import pyrovi

            adata = pyrovi.datasets.synthetic_iid(n_cells=200, n_genes=50, seed=_SEED)
            pyrovi.model.SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
            return adata

        return self._once("scvi_adata", build)

    def scvi_dir(self) -> Path:
        import pyrovi

        return self._once(
            "scvi_dir",
            lambda: _trained(pyrovi.model.SCVI, self.scvi_adata().copy(), self._root / "scvi", n_hidden=16),
        )

    def likelihood_model_dir(self, gene_likelihood: str) -> Path:
        import pyrovi

        return self._once(
            f"scvi_{gene_likelihood}",
            lambda: _trained(pyrovi.model.SCVI, self.scvi_adata().copy(), self._root / f"scvi_{gene_likelihood}",
                             n_hidden=16, gene_likelihood=gene_likelihood),
        )

    def citeseq(self) -> Any:
        def build() -> Any:
            import pyrovi

            adata = pyrovi.datasets.synthetic_citeseq(n_cells=200, n_genes=50, n_proteins=8, seed=_SEED)
            pyrovi.model.TOTALVI.setup_anndata(
                adata, protein_expression_obsm_key="protein_expression", batch_key="batch"
            )
            return adata

        return self._once("citeseq", build)

    def totalvi_dir(self) -> Path:
        import pyrovi

        return self._once(
            "totalvi_dir",
            lambda: _trained(pyrovi.model.TOTALVI, self.citeseq().copy(), self._root / "totalvi", n_hidden=16),
        )

    def scanvi_dir(self) -> Path:
        import pyrovi

        def build() -> Path:
            adata = self.scvi_adata().copy()
            adata.obs["cell_type"] = adata.obs["labels"].astype(str)
            adata.obs.loc[adata.obs_names[::2], "cell_type"] = "Unknown"
            pyrovi.model.SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category="Unknown",
                                              batch_key="batch")  # fmt: skip
            return _trained(pyrovi.model.SCANVI, adata, self._root / "scanvi", n_hidden=16)

        return self._once("scanvi_dir", build)

    def cellassign_adata(self) -> Any:
        def build() -> Any:
            import pyrovi

            adata = pyrovi.datasets.synthetic_cellassign(n_cells=200, seed=_SEED)
            pyrovi.model.CellAssign.setup_anndata(adata, size_factor_key="size_factor", batch_key="batch")
            return adata

        return self._once("cellassign_adata", build)

    def cellassign_dir(self) -> Path:
        import pyrovi

        def build() -> Path:
            adata = self.cellassign_adata().copy()
            return _trained(pyrovi.model.CellAssign, adata, self._root / "cellassign",
                            cell_type_markers=adata.varm["cell_type_markers"])

        return self._once("cellassign_dir", build)


def _names_used(item: pytest.Item) -> set[str]:
    source = "\n".join(example.source for example in item.dtest.examples)
    return set(re.findall(r"\b[A-Za-z_]\w*\b", source))


@pytest.fixture(scope="session")
def _doctest_objects(tmp_path_factory: pytest.TempPathFactory) -> _DoctestObjects:
    return _DoctestObjects(tmp_path_factory.mktemp("doctest_models"))


@pytest.fixture(autouse=True)
def _doctest_environment(request: pytest.FixtureRequest) -> Iterator[None]:
    """For a docstring example: the notebook names it uses, a seed, and a temporary working directory."""
    from _pytest.doctest import DoctestItem

    if not isinstance(request.node, DoctestItem):
        yield
        return
    import numpy as np
    import pandas as pd
    import pyro
    import pyro.distributions as dist
    import torch

    import pyrovi

    objects: _DoctestObjects = request.getfixturevalue("_doctest_objects")
    namespace = request.node.dtest.globs
    used = _names_used(request.node)
    notebook = {"pyrovi": pyrovi, "np": np, "pd": pd, "torch": torch, "pyro": pyro, "dist": dist,
                "SCVI": pyrovi.model.SCVI, "TOTALVI": pyrovi.model.TOTALVI, "CellAssign": pyrovi.model.CellAssign,
                "SCANVI": pyrovi.model.SCANVI}
    for name, value in notebook.items():
        namespace.setdefault(name, value)
    # a model's own docstrings call their model and data ``model`` and ``adata``, as its guide does
    name = request.node.dtest.name
    if name.startswith("pyrovi.model._totalvi."):
        adata, load = objects.citeseq, lambda: pyrovi.model.TOTALVI.load(objects.totalvi_dir())
    elif name.startswith("pyrovi.model._cellassign."):
        adata, load = objects.cellassign_adata, lambda: pyrovi.model.CellAssign.load(objects.cellassign_dir())
    else:
        adata, load = objects.scvi_adata, lambda: pyrovi.model.SCVI.load(objects.scvi_dir())
    if "adata" in used or "manager" in used or "ppc" in used:
        namespace["adata"] = adata().copy()
    if "manager" in used:
        namespace["manager"] = pyrovi.model.SCVI(namespace["adata"], n_hidden=8).adata_manager
    if "mdata" in used:
        namespace["mdata"] = pyrovi.data.synthetic_iid(return_mudata=True, seed=_SEED)
    if "model" in used:
        namespace["model"] = load()
    for name, likelihood in (("nb_model", "nb"), ("poisson_model", "poisson")):
        if name in used or "ppc" in used:
            namespace[name] = pyrovi.model.SCVI.load(objects.likelihood_model_dir(likelihood))
    if "ppc" in used:
        namespace["ppc"] = pyrovi.criticism.PosteriorPredictiveCheck(
            namespace["adata"], {"NB": namespace["nb_model"], "Poisson": namespace["poisson_model"]}, n_samples=5
        )
    if "citeseq" in used:
        namespace["citeseq"] = objects.citeseq().copy()
    if "totalvi" in used:
        namespace["totalvi"] = pyrovi.model.TOTALVI.load(objects.totalvi_dir())
    if "markers" in used:
        namespace["markers"] = objects.cellassign_adata().varm["cell_type_markers"].copy()
    if "cellassign" in used:
        namespace["cellassign"] = pyrovi.model.CellAssign.load(objects.cellassign_dir())
    if "scanvi_model" in used:
        namespace["scanvi_model"] = pyrovi.model.SCANVI.load(objects.scanvi_dir())
    saved_settings = {name: getattr(pyrovi.settings, name) for name in pyrovi.settings._NAMES}
    pyrovi.settings.seed = _SEED
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: extra intra-op threads only add overhead
    cwd = Path.cwd()
    os.chdir(request.getfixturevalue("tmp_path"))
    try:
        yield
    finally:
        os.chdir(cwd)
        torch.set_num_threads(previous_threads)
        for name, value in saved_settings.items():  # an example may change a setting
            setattr(pyrovi.settings, name, value)
