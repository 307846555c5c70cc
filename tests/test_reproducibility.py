"""With pyrovi.settings.seed set, training is bitwise reproducible on the CPU, in one process and across."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

import pyrovi
from pyrovi.model import SCVI, TOTALVI, CellAssign

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).parent.parent


def _fit(kind: str, seed: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Seed, simulate, build and train a tiny model; its state_dict and its per-cell output."""
    pyrovi.settings.seed = seed
    train = {"max_epochs": 3, "batch_size": 16, "accelerator": "cpu", "progress_bar": False}
    if kind == "SCVI":
        adata = pyrovi.datasets.synthetic_iid(n_cells=60, n_genes=20, seed=0)
        SCVI.setup_anndata(adata, batch_key="batch")
        model = SCVI(adata, n_hidden=8, n_latent=2)  # dropout 0.1: the dropout masks must repeat too
        model.train(**train)
        out = model.get_latent_representation()
    elif kind == "TOTALVI":
        adata = pyrovi.datasets.synthetic_citeseq(n_cells=60, n_genes=15, n_proteins=4, seed=0)
        TOTALVI.setup_anndata(adata, "protein_expression", batch_key="batch")
        model = TOTALVI(adata, n_hidden=8, n_latent=2)
        model.train(**train)
        out = model.get_latent_representation()
    else:
        adata = pyrovi.datasets.synthetic_cellassign(n_cells=60, n_types=3, n_markers_per_type=2, seed=0)
        CellAssign.setup_anndata(adata, size_factor_key="size_factor", batch_key="batch")
        model = CellAssign(adata, adata.varm["cell_type_markers"])
        model.train(**train)
        out = model.predict().to_numpy()
    state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    return state, out


def _digest(state: dict[str, torch.Tensor], out: np.ndarray) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].cpu().contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(out).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("kind", ["SCVI", "TOTALVI", "CellAssign"])
def test_two_runs_with_the_same_seed_are_bitwise_identical(kind):
    state_a, out_a = _fit(kind, seed=5)
    # something else consumes random numbers in between: the seed, not the history, decides the run
    torch.rand(100), np.random.rand(100), pyro.sample("unrelated", pyro.distributions.Normal(0.0, 1.0))
    state_b, out_b = _fit(kind, seed=5)
    assert state_a.keys() == state_b.keys()
    differing = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert differing == []
    np.testing.assert_array_equal(out_a, out_b)
    assert len(pyro.get_param_store().keys()) == 0


def test_another_seed_gives_another_fit():
    """The check above can fail: a different seed changes weights and latents."""
    state_a, out_a = _fit("SCVI", seed=5)
    state_b, out_b = _fit("SCVI", seed=6)
    assert any(not torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not np.array_equal(out_a, out_b)


def test_a_fresh_process_with_another_hash_seed_gives_the_same_fit():
    """Nothing in the run depends on the process: import order, earlier models or str hashing (set order)."""
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "import sys; sys.path.insert(0, 'tests')\n"
        "from test_reproducibility import _fit, _digest\n"
        "print(_digest(*_fit('SCVI', seed=5)))\n"
    )
    path = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": path}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == _digest(*_fit("SCVI", seed=5))
