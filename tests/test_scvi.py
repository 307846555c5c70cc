"""SCVI end to end: training, what the latent space learns, queries, save and load."""

import json
import math
from pathlib import Path

import numpy as np
import pyro
import pandas as pd
import pytest
from _knn import knn_accuracy, pca, same_batch_fraction

import pyrovi
from pyrovi.model import SCVI

N_EPOCHS = 60


@pytest.fixture(scope="module")
def trained():
    """SCVI with batch correction, trained once on structured simulated data (3 labels, 2 batches)."""
    pyrovi.settings.seed = 0
    adata = pyrovi.datasets.synthetic_iid(n_cells=600, n_genes=100, seed=0)
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    model = SCVI(adata, n_latent=5, gene_likelihood="nb")
    model.train(max_epochs=N_EPOCHS, batch_size=128, plan_kwargs={"n_epochs_kl_warmup": 10},
                progress_bar=False)
    return model


def test_validation_elbo_improves(trained):
    val = trained.history["elbo_validation"]["elbo_validation"]
    train = trained.history["elbo_train"]["elbo_train"]
    assert len(val) == N_EPOCHS and len(train) == N_EPOCHS
    assert val.iloc[-1] < val.iloc[0] - 10  # per-cell negative ELBO fell by more than 10 nats
    assert val.iloc[-5:].mean() < val.iloc[:5].mean()
    assert {"reconstruction_loss_validation", "kl_local_validation", "kl_weight"} <= set(trained.history)
    assert trained.history["kl_weight"]["kl_weight"].iloc[-1] == 1.0
    assert trained.is_trained
    # the split is kept and covers the cells
    assert len(trained.train_indices) + len(trained.validation_indices) == 600
    assert not set(trained.train_indices) & set(trained.validation_indices)


def test_latent_separates_labels_and_mixes_batches(trained):
    adata = trained.adata
    z = trained.get_latent_representation()
    assert z.shape == (600, 5) and np.isfinite(z).all()
    labels, batches = adata.obs["labels"].to_numpy(), adata.obs["batch"].to_numpy()
    acc = knn_accuracy(z, labels)
    assert acc > 0.9, acc  # chance is 1/3
    x = np.asarray(adata.X.todense())
    log_norm = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    pca_mixing = same_batch_fraction(pca(log_norm, 10), batches)
    latent_mixing = same_batch_fraction(z, batches)
    # 0.5 is perfect mixing for two batches; PCA of log counts keeps the batches apart
    assert latent_mixing < pca_mixing - 0.1, (latent_mixing, pca_mixing)
    assert latent_mixing < 0.65


def test_latent_sample_differs_from_mean(trained):
    mean = trained.get_latent_representation(indices=np.arange(50))
    draw = trained.get_latent_representation(indices=np.arange(50), give_mean=False)
    assert draw.shape == mean.shape and not np.allclose(draw, mean)
    assert np.abs(draw - mean).mean() < 1.0  # posteriors are concentrated after training


def test_normalized_expression_sums_to_library_size(trained):
    rho = trained.get_normalized_expression(library_size=1e4)
    assert isinstance(rho, pd.DataFrame) and rho.shape == (600, 100)
    assert list(rho.columns) == list(trained.adata.var_names)
    assert list(rho.index) == list(trained.adata.obs_names)
    np.testing.assert_allclose(rho.sum(1), 1e4, rtol=1e-4)
    genes = list(trained.adata.var_names[:7])
    sub = trained.get_normalized_expression(gene_list=genes, indices=np.arange(20), n_samples=3)
    assert sub.shape == (20, 7) and list(sub.columns) == genes
    draws = trained.get_normalized_expression(indices=np.arange(20), n_samples=4, return_mean=False)
    assert draws.shape == (4, 20, 100)
    # decoding every cell as batch_0 changes the expression of the cells from batch_1 only
    as_b0 = trained.get_normalized_expression(transform_batch="batch_0", n_samples=20).to_numpy()
    own = trained.get_normalized_expression(n_samples=20).to_numpy()
    in_b0 = (trained.adata.obs["batch"] == "batch_0").to_numpy()
    assert np.abs(as_b0[in_b0] - own[in_b0]).mean() < 0.2 * np.abs(as_b0[~in_b0] - own[~in_b0]).mean()
    with pytest.raises(ValueError, match="not a batch"):
        trained.get_normalized_expression(transform_batch="batch_9")


def test_posterior_predictive_means_track_observed_means(trained):
    x_rep = trained.posterior_predictive_sample(n_samples=5)
    assert x_rep.shape == (600, 100, 5)
    assert (x_rep >= 0).all() and np.allclose(x_rep, np.round(x_rep))
    observed = np.asarray(trained.adata.X.mean(0)).ravel()
    replicated = x_rep.mean((0, 2))
    assert np.corrcoef(np.log1p(observed), np.log1p(replicated))[0, 1] > 0.98
    np.testing.assert_allclose(replicated.sum(), observed.sum(), rtol=0.05)
    one = trained.posterior_predictive_sample(indices=[0, 1, 2], gene_list=["gene_3", "gene_1"])
    assert one.shape == (3, 2)


def test_marginal_ll_is_at_least_the_elbo(trained):
    cells = np.arange(60)
    elbo = trained.get_elbo(indices=cells, return_mean=False)
    marginal = trained.get_marginal_ll(indices=cells, n_mc_samples=100, return_mean=False)
    assert elbo.shape == marginal.shape == (60,)
    # importance sampling tightens the bound; allow Monte Carlo noise of the one-draw ELBO
    assert marginal.mean() >= elbo.mean() - 0.5
    assert (marginal > elbo - 5).all()
    # and the history logs the same quantity with the opposite sign
    val_elbo = trained.get_elbo(indices=trained.validation_indices)
    assert -val_elbo == pytest.approx(trained.history["elbo_validation"].iloc[-1, 0], rel=0.02)
    # the reconstruction loss is -E_q[log p(x|z)] (scvi-tools' sign): positive, and below -ELBO by the KL
    recon = trained.get_reconstruction_error(indices=cells)["reconstruction_loss"]
    assert 0 < recon < -elbo.mean()


def test_reconstruction_error_per_cell(trained):
    cells = np.arange(40)
    pyro.set_rng_seed(3)
    per_cell = trained.get_reconstruction_error(indices=cells, return_mean=False)["reconstruction_loss"]
    pyro.set_rng_seed(3)
    mean = trained.get_reconstruction_error(indices=cells)["reconstruction_loss"]
    assert per_cell.shape == (40,) and (per_cell > 0).all()
    assert per_cell.mean() == pytest.approx(mean, rel=1e-6)


def test_library_size_and_likelihood_parameters(trained):
    library = trained.get_latent_library_size()
    totals = np.asarray(trained.adata.X.sum(1)).reshape(-1, 1)
    np.testing.assert_allclose(library, totals, rtol=1e-5)  # observed library size
    params = trained.get_likelihood_parameters(indices=np.arange(30))
    assert set(params) == {"mean", "dispersions"}
    assert params["mean"].shape == params["dispersions"].shape == (30, 100)
    np.testing.assert_allclose(params["mean"].sum(1), totals[:30, 0], rtol=1e-4)
    assert (params["dispersions"] > 0).all()


def test_queries_on_new_data_with_reordered_genes(trained):
    adata = trained.adata
    query = adata[:40, ::-1].copy()  # same cells, genes reversed
    del query.uns["_pyrovi_registry"]
    z_query = trained.get_latent_representation(query)
    np.testing.assert_allclose(z_query, trained.get_latent_representation(indices=np.arange(40)), atol=1e-5)
    missing = adata[:10, 5:].copy()
    with pytest.raises(ValueError, match="gene_0"):
        trained.get_latent_representation(missing)


def test_save_load_restores_the_exact_model(trained, tmp_path):
    path = tmp_path / "model"
    trained.save(path)
    files = sorted(p.name for p in Path(path).iterdir())
    assert files == ["model.json", "model.safetensors"]
    for f in Path(path).iterdir():  # no pickle anywhere: JSON text and a safetensors header
        head = f.read_bytes()[:2]
        assert head[:1] != b"\x80", f"{f.name} looks like a pickle"
    meta = json.loads((path / "model.json").read_text())
    assert meta["model_name"] == "SCVI" and meta["init_params"]["n_latent"] == 5
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(path)

    loaded = SCVI.load(path, trained.adata.copy())
    np.testing.assert_array_equal(loaded.get_latent_representation(), trained.get_latent_representation())
    assert loaded.is_trained
    np.testing.assert_array_equal(loaded.validation_indices, trained.validation_indices)
    pd.testing.assert_frame_equal(loaded.history["elbo_validation"], trained.history["elbo_validation"])

    other_genes = trained.adata[:, :50].copy()
    with pytest.raises(ValueError, match="lacks 50 of the model's 100 genes"):
        SCVI.load(path, other_genes)


def test_save_with_anndata_and_overwrite(trained, tmp_path):
    path = tmp_path / "with_data"
    trained.save(path, save_anndata=True)
    trained.save(path, save_anndata=True, overwrite=True)
    loaded = SCVI.load(path)
    assert loaded.adata.shape == trained.adata.shape
    np.testing.assert_allclose(
        loaded.get_latent_representation(indices=np.arange(10)),
        trained.get_latent_representation(indices=np.arange(10)),
        atol=1e-6,
    )
    assert "SCVI(" in repr(loaded) and "trained" in repr(loaded)


def test_latent_from_sparse_minibatches_equals_dense(trained):
    # get_latent_representation feeds the encoder sparse CSR minibatches; the dense path must agree
    import torch

    z_sparse = trained.get_latent_representation(batch_size=100)
    trained.module.eval()
    dense = []
    with torch.inference_mode():
        for batch in trained._make_data_loader(None, None, 100):
            args, kwargs = trained._fn_args(batch)
            assert args[0].layout == torch.strided
            loc, _ = trained.module.z_encoder(args[0])
            dense.append(loc)
    np.testing.assert_allclose(z_sparse, torch.cat(dense).numpy(), rtol=1e-4, atol=1e-5)


def test_latent_queries_take_encode_batch_size(trained, monkeypatch):
    # the encoder-only query batches by settings.encode_batch_size; the result does not depend on it
    import pyrovi

    calls = []
    fn_args = trained._fn_args
    monkeypatch.setattr(trained, "_fn_args", lambda batch, **kw: calls.append(len(batch["X"])) or fn_args(batch, **kw))
    monkeypatch.setattr(pyrovi.settings, "encode_batch_size", 7)
    small = trained.get_latent_representation()
    n_cells = trained.adata.n_obs
    assert calls[:-1] == [7] * (len(calls) - 1) and sum(calls) == n_cells
    calls.clear()
    monkeypatch.setattr(pyrovi.settings, "encode_batch_size", 1024)
    large = trained.get_latent_representation()
    assert calls == [min(n_cells, 1024)] + ([] if n_cells <= 1024 else calls[1:])
    np.testing.assert_allclose(small, large, atol=1e-5)


def test_batch_norm_statistics_count_training_steps_only():
    # Creating Pyro's lazy parameters runs the guide once before training: it must not move BatchNorm's
    # running statistics (they would hold one extra, unoptimised minibatch).
    pyrovi.settings.seed = 0
    adata = pyrovi.datasets.synthetic_iid(n_cells=300, n_genes=40, seed=1)
    SCVI.setup_anndata(adata)
    model = SCVI(adata, n_latent=3)
    model.train(max_epochs=2, batch_size=64, progress_bar=False)
    steps = 2 * math.ceil(len(model.train_indices) / 64)
    counts = {name: int(b) for name, b in model.module.named_buffers() if name.endswith("num_batches_tracked")}
    assert counts and set(counts.values()) == {steps}, counts
