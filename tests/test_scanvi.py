"""SCANVI: exact enumeration of the label, semi-supervised accuracy, SCVI warm start, files, query mapping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovi
from pyrovi.model import SCANVI, SCVI
from pyrovi.module import SCANVAE

TRAIN = {"enable_progress_bar": False}
UNKNOWN = "Unknown"


def _labelled_data(n_cells=300, n_genes=60, hide=0.5, seed=0):
    adata = pyrovi.datasets.synthetic_iid(n_cells=n_cells, n_genes=n_genes, seed=seed)
    adata.obs["truth"] = adata.obs["labels"].astype(str)
    hidden = np.random.default_rng(seed).random(n_cells) < hide
    adata.obs["cell_type"] = np.where(hidden, UNKNOWN, adata.obs["truth"])
    return adata, hidden


# --------------------------------------------------------------------------------------------------
# the ELBO: enumeration is exact


def _hand_elbo(module: SCANVAE, x, labels, seed: int, kl_weight: float = 1.0) -> torch.Tensor:
    """The ELBO summed by hand with the guide's own draws (same seed, same order): z, then u for each label."""
    torch.manual_seed(seed)
    n, k = x.shape[0], module.n_types
    codes = labels.reshape(-1)
    labelled = codes < k
    z_loc, z_scale = module.latent_params(x)
    z = dist.Normal(z_loc, z_scale).rsample()
    q_y = torch.softmax(module.classifier(z), -1)  # (n, k)
    ys = torch.arange(k).unsqueeze(-1).expand(k, n)  # every label for every cell
    ys = torch.where(labelled, codes, ys)  # labelled cells read their label
    u_loc, u_scale = module._per_label(module.encoder_z2_z1, z, ys)  # (k, n, d)
    u = dist.Normal(u_loc, u_scale).rsample()
    zp_loc, zp_scale = module._per_label(module.decoder_z1_z2, u, ys)
    # the warm-up weight scales the terms of y and u, not those of z (as scANVI)
    per_label = (kl_weight * (dist.Normal(0.0, 1.0).log_prob(u).sum(-1) - dist.Normal(u_loc, u_scale).log_prob(u).sum(-1))
                 + dist.Normal(zp_loc, zp_scale).log_prob(z).sum(-1))  # (k, n)
    log_pi = torch.log_softmax(module.label_logits, -1)
    unlabelled_terms = (q_y.T * (per_label + kl_weight * (log_pi.unsqueeze(-1) - q_y.T.log()))).sum(0)
    labelled_terms = per_label.mean(0) + kl_weight * log_pi[codes.clamp(max=k - 1)]
    log_rho, _, zi_logits = module.decoder.decode_log(z)
    inputs = pyrovi.module.distributions.LikelihoodInputs(x.sum(-1, keepdim=True), log_rho.exp(),
                                                          module.log_theta.exp(), zi_logits, log_rho=log_rho)
    log_px = pyrovi.module.distributions.gene_likelihood(module.gene_likelihood, inputs).log_prob(x).sum(-1)
    return (torch.where(labelled, labelled_terms, unlabelled_terms) + log_px
            - dist.Normal(z_loc, z_scale).log_prob(z).sum(-1)).sum()


@pytest.mark.parametrize(("seed", "kl_weight"), [(0, 1.0), (1, 1.0), (2, 0.3)])
def test_enumerated_elbo_equals_the_hand_summed_elbo(seed, kl_weight):
    torch.manual_seed(100 + seed)
    module = SCANVAE(n_input=12, n_labels=3, n_latent=2, n_hidden=8, gene_likelihood="nb")
    module.eval()  # no dropout, batch normalisation by running statistics: the networks are deterministic
    x = torch.poisson(torch.full((5, 12), 3.0))
    labels = torch.tensor([[0], [3], [2], [3], [3]])  # code 3: unlabelled
    torch.manual_seed(seed)
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(module.model, module.guide, x,
                                                                              labels=labels, kl_weight=kl_weight)
    expected = _hand_elbo(module, x, labels, seed, kl_weight)
    torch.testing.assert_close(-loss, expected, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# semi-supervised typing


@pytest.mark.parametrize("seed", [0, 1])
def test_hidden_labels_are_recovered_and_calibrated(seed):
    adata, hidden = _labelled_data(seed=seed)
    SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category=UNKNOWN, batch_key="batch")
    model = SCANVI(adata, n_latent=5, n_hidden=32)
    model.train(max_epochs=20, plan_kwargs={"lr": 5e-3}, **TRAIN)
    predicted = model.predict()
    accuracy = (predicted[hidden] == adata.obs["truth"].to_numpy()[hidden]).mean()
    assert accuracy >= 0.9, accuracy  # measured 0.95-0.96
    soft = model.predict(soft=True)
    ece = pyrovi.criticism.expected_calibration_error(soft[hidden], adata.obs["truth"][hidden])
    assert ece <= 0.08, ece  # measured 0.02-0.04
    assert "validation_accuracy" in model.history


def test_get_elbo_is_unbiased_though_u_and_y_are_drawn_from_z():
    # q(z | x) q(y | z) q(u | z, y): z's prior p(z | u, y) reads draws that depend on z, so its closed-form KL
    # would be biased (by 2.9 nats per cell here before z's term was estimated at the draw); the one-draw
    # log-weights log p(x, z, u, y) - log q(z, u, y | x) have the ELBO as their mean
    adata = pyrovi.datasets.synthetic_iid(n_cells=300, n_genes=50, n_batches=1, seed=0)
    adata.obs["cell_type"] = np.where(np.arange(300) % 2 == 0, UNKNOWN, adata.obs["labels"].astype(str))
    SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category=UNKNOWN)
    pyrovi.settings.seed = 0
    model = SCANVI(adata, n_latent=5)
    model.train(max_epochs=30, **TRAIN)
    cells = np.arange(60)
    elbo = np.mean([model.get_elbo(indices=cells, return_mean=False) for _ in range(50)], 0)
    weights = np.mean([model.get_marginal_ll(indices=cells, n_mc_samples=1, return_mean=False) for _ in range(50)], 0)
    # 50 draws each: the means over 60 cells differ by Monte Carlo noise only (about 0.1 nats)
    assert abs(elbo.mean() - weights.mean()) < 0.5, (elbo.mean(), weights.mean())


def test_predict_shapes_names_and_indices():
    adata, _ = _labelled_data(n_cells=120)
    SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category=UNKNOWN)
    model = SCANVI(adata, n_latent=3, n_hidden=16)
    model.train(max_epochs=1, **TRAIN)
    assert model.labels_ == ["label_0", "label_1", "label_2"] and model.unlabeled_category_ == UNKNOWN
    hard = model.predict(indices=[3, 1])
    assert hard.shape == (2,) and set(hard) <= set(model.labels_)
    soft = model.predict(indices=[3, 1], soft=True)
    assert list(soft.index) == [adata.obs_names[3], adata.obs_names[1]]
    assert list(soft.columns) == model.labels_
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-5)
    assert list(soft.idxmax(1)) == list(hard)
    with pytest.raises(TypeError, match="soft must be True or False"):
        model.predict(soft="yes")


def test_from_scvi_model_starts_from_the_scvi_weights():
    adata, _ = _labelled_data(n_cells=150)
    SCVI.setup_anndata(adata, batch_key="batch")
    scvi = SCVI(adata, n_latent=4, n_hidden=32)
    scvi.train(max_epochs=2, **TRAIN)
    with pytest.raises(ValueError, match="labels_key is needed"):
        SCANVI.from_scvi_model(scvi, UNKNOWN)
    scanvi = SCANVI.from_scvi_model(scvi, UNKNOWN, labels_key="cell_type")
    assert scanvi.was_pretrained and scanvi.module.n_latent == 4
    for key, value in scvi.module.state_dict().items():
        assert torch.equal(scanvi.module.state_dict()[key], value), key
    np.testing.assert_array_equal(scanvi.get_latent_representation(), scvi.get_latent_representation())
    scanvi.train(max_epochs=1, **TRAIN)
    fresh, _ = _labelled_data(n_cells=150)
    SCVI.setup_anndata(fresh)
    untrained = SCVI(fresh, n_latent=4)
    with pytest.warns(UserWarning, match="not trained"):  # scvi-tools warns too
        SCANVI.from_scvi_model(untrained, UNKNOWN, labels_key="cell_type")


def test_save_and_load_are_exact(tmp_path):
    adata, _ = _labelled_data(n_cells=120)
    SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category=UNKNOWN, batch_key="batch")
    model = SCANVI(adata, n_latent=3, n_hidden=16, label_prior="learned", linear_classifier=True)
    model.train(max_epochs=2, **TRAIN)
    model.save(tmp_path / "scanvi", save_anndata=True)
    loaded = SCANVI.load(tmp_path / "scanvi")
    pd.testing.assert_frame_equal(loaded.predict(soft=True), model.predict(soft=True))
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    assert loaded.init_params_["label_prior"] == "learned"


def test_every_cell_unlabelled_or_labelled():
    adata, _ = _labelled_data(n_cells=100, hide=1.0)
    SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category=UNKNOWN)
    with pytest.raises(ValueError, match="label"):
        SCANVI(adata)  # no cell type at all: nothing to classify into
    adata, _ = _labelled_data(n_cells=100, hide=0.0)
    SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category=UNKNOWN)
    model = SCANVI(adata, n_latent=3, n_hidden=16)
    model.train(max_epochs=1, **TRAIN)
    assert model.predict().shape == (100,)


def test_query_mapping_keeps_the_classifier_frozen():
    adata, _ = _labelled_data(n_cells=150)
    SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category=UNKNOWN, batch_key="batch")
    reference = SCANVI(adata, n_latent=3, n_hidden=16, encode_covariates=True)
    reference.train(max_epochs=2, **TRAIN)
    query = pyrovi.datasets.synthetic_iid(n_cells=60, n_genes=60, n_batches=1, seed=4)
    query.obs["batch"] = "new_batch"  # no labels column: every query cell is unlabelled
    model = SCANVI.load_query_data(query, reference)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train(max_epochs=2, **TRAIN)
    after = model.module.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("classifier"))
    assert model.predict().shape == (60,)
    released = SCANVI.load_query_data(query.copy(), reference, freeze_classifier=False)
    assert any(p.requires_grad for n, p in released.module.named_parameters() if n.startswith("classifier"))


def test_scvi_queries_priors_criticism_and_minified_predictions():
    adata, _ = _labelled_data(n_cells=120)
    SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category=UNKNOWN, batch_key="batch")
    model = SCANVI(adata, n_latent=3, n_hidden=16, prior=pyrovi.priors.MixtureOfGaussians(3))
    model.train(max_epochs=2, **TRAIN)
    assert np.isfinite(model.get_elbo()) and np.isfinite(model.get_marginal_ll(n_mc_samples=3))
    assert model.get_normalized_expression().shape == (120, 60)
    assert model.differential_expression(groupby="cell_type", group1="label_0").shape[0] == 60
    summary = pyrovi.criticism.PosteriorPredictiveCheck(adata, {"scanvi": model}, n_samples=2).summary()
    assert len(summary) == 2
    full = model.predict(soft=True)
    model.minify_adata()
    assert model.minified_data_type == "latent_posterior_parameters"
    pd.testing.assert_frame_equal(model.predict(soft=True), full)  # from the stored posterior mean
