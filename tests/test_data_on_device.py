"""Registered arrays kept on the device: the same minibatches, gathered there."""

import numpy as np
import pytest
import torch

import pyrovi
from pyrovi.dataloaders import AnnDataLoader
from pyrovi.model import SCVI

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(seed=0):
    adata = pyrovi.datasets.synthetic_iid(n_cells=300, n_genes=40, seed=seed)
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    return adata


@pytest.mark.parametrize("sparse", [True, False], ids=["csr", "dense"])
def test_device_loader_serves_the_same_minibatches(sparse):
    adata = _setup()
    if not sparse:
        adata.X = adata.X.toarray()
        SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    manager = SCVI(adata).adata_manager
    host = AnnDataLoader(manager, batch_size=64, shuffle=True, seed=3)
    device = AnnDataLoader(manager, batch_size=64, shuffle=True, seed=3, device="cpu")
    for a, b in zip(host, device):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and not b[key].is_sparse
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_training_with_data_on_device_equals_training_from_host():
    runs = []
    for on_device in (False, True):
        pyrovi.settings.seed = 0
        model = SCVI(_setup(), n_latent=3, n_hidden=16, gene_likelihood="nb")
        model.train(max_epochs=3, batch_size=64, accelerator="cpu", progress_bar=False,
                    load_data_on_device=on_device)
        runs.append(model.get_latent_representation())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_backed_data_cannot_be_put_on_a_device(tmp_path):
    import anndata as ad

    _setup().write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    SCVI.setup_anndata(backed, batch_key="batch")
    with pytest.raises(ValueError, match="backed"):
        AnnDataLoader(SCVI(backed).adata_manager, device="cpu")


def test_a_device_loader_holds_only_its_own_cells():
    manager = SCVI(_setup()).adata_manager
    subset = np.arange(10, 300, 3)
    loader = AnnDataLoader(manager, indices=subset, batch_size=32, device="cpu")
    assert {a.shape[0] for a in loader.dataset._on_device.values()} == {len(subset)}
    served = torch.cat([batch["indices"] for batch in loader]).numpy()
    np.testing.assert_array_equal(served, subset)
    host = AnnDataLoader(manager, indices=subset, batch_size=32)
    for a, b in zip(host, loader):
        torch.testing.assert_close(a["X"], b["X"], rtol=0, atol=0)


def _splitter_under(device: str, load_data_on_device):
    """A DataSplitter as a trainer on ``device`` would see it (no GPU needed: only the choice is tested)."""
    from types import SimpleNamespace

    from pyrovi.dataloaders import DataSplitter

    splitter = DataSplitter(SCVI(_setup()).adata_manager, load_data_on_device=load_data_on_device)
    splitter.trainer = SimpleNamespace(world_size=1, strategy=SimpleNamespace(root_device=torch.device(device)))
    return splitter


def test_automatic_choice_puts_the_data_on_a_gpu_only_when_it_fits(monkeypatch):
    # load_data_on_device=None (model.train's default): on a CUDA device, when the registered arrays take
    # less than a quarter of its free memory; never on the CPU. torch.cuda.mem_get_info is stubbed.
    from pyrovi.dataloaders._minibatch_dataset import device_nbytes

    needed = sum(device_nbytes(a) for a in SCVI(_setup()).adata_manager.get_arrays().values())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * needed + 8, 100 * needed))
    assert _splitter_under("cuda:0", None)._device() == {"device": torch.device("cuda:0")}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * needed - 8, 100 * needed))
    assert _splitter_under("cuda:0", None)._device() == {}
    assert _splitter_under("cpu", None)._device() == {}
    assert _splitter_under("cuda:0", False)._device() == {}
    assert _splitter_under("cpu", True)._device() == {"device": torch.device("cpu")}
