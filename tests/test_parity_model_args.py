"""scvi-tools' model arguments on SCVI and TOTALVI: logistic-normal latents, batch embeddings, the normal
likelihood, variance activations, covariate and normalisation options; each checked for what it does."""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from _knn import knn_accuracy, same_batch_fraction

import pyrovi
from pyrovi.model import SCVI, TOTALVI
from pyrovi.module import VAE
from pyrovi.module.nn import Embedding, Encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _adata(n_cells=400, seed=0):
    """Structured counts: 3 labels with their own profiles, 2 batches with their own fold changes."""
    return pyrovi.datasets.synthetic_iid(n_cells=n_cells, n_genes=100, seed=seed)


def _train(model, epochs, seed=0, batch_size=128, lr=1e-3):
    pyrovi.settings.seed = seed
    plan = {"n_epochs_kl_warmup": 10, "lr": lr}
    model.train(max_epochs=epochs, batch_size=batch_size, plan_kwargs=plan, progress_bar=False)
    return model


# ------------------------------------------------------------------------------------------------------
# latent_distribution="ln"


def test_logistic_normal_kl_is_the_gaussian_kl_of_the_base():
    """KL(T#q || T#p) of the transformed sites equals the Gaussian KL, and the Monte Carlo estimate agrees."""
    torch.manual_seed(0)
    vae = VAE(n_input=30, n_latent=4, latent_distribution="ln").eval()  # eval: no dropout, same encoder output
    x = torch.poisson(torch.full((6, 30), 3.0))
    guide = pyro.poutine.trace(vae.guide).get_trace(x)
    model = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide)).get_trace(x)
    q, p = guide.nodes["z"]["fn"], model.nodes["z"]["fn"]
    loc, scale = vae.latent_params(x)
    assert loc.shape == (6, 3)  # n_latent - 1 free coordinates
    standard = dist.Normal(0.0, 1.0).expand([6, 3]).to_event(1)
    gaussian = torch.distributions.kl_divergence(dist.Normal(loc, scale).to_event(1), standard)
    assert torch.allclose(torch.distributions.kl_divergence(q, p), gaussian, atol=1e-5)
    # exact log-densities through the Jacobian: the Monte Carlo KL converges to the same value
    z = q.sample((20000,))
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    assert torch.allclose(mc, gaussian, atol=0.08), (mc, gaussian)
    # the decoder reads proportions
    assert torch.allclose(guide.nodes["z"]["value"].sum(-1), torch.ones(6), atol=1e-5)


def test_logistic_normal_trains_with_a_monte_carlo_elbo():
    vae = VAE(n_input=30, n_latent=4, latent_distribution="ln", use_observed_lib_size=False,
              library_log_means=np.array([4.0]), library_log_vars=np.array([0.5]))
    x = torch.poisson(torch.full((6, 30), 3.0))
    for elbo in (pyro.infer.Trace_ELBO(), pyro.infer.TraceMeanField_ELBO()):
        assert torch.isfinite(elbo.differentiable_loss(vae.model, vae.guide, x))


def test_scvi_logistic_normal_latent_is_on_the_simplex_and_separates_labels():
    adata = _adata()
    SCVI.setup_anndata(adata, batch_key="batch")
    model = _train(SCVI(adata, n_latent=6, latent_distribution="ln", gene_likelihood="nb"), 40)
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 6)
    assert (z > 0).all() and np.allclose(z.sum(1), 1.0, atol=1e-4)
    draw = model.get_latent_representation(give_mean=False)
    assert np.allclose(draw.sum(1), 1.0, atol=1e-4) and not np.allclose(draw, z)
    acc = knn_accuracy(z, adata.obs["labels"].to_numpy())
    assert acc > 0.85, acc  # measured 0.985; chance is 1/3


def test_logistic_normal_needs_two_components():
    with pytest.raises(ValueError, match="n_latent >= 2"):
        VAE(n_input=10, n_latent=1, latent_distribution="ln")
    with pytest.raises(ValueError, match="latent_distribution='lognormal' is not one of"):
        VAE(n_input=10, latent_distribution="lognormal")


# ------------------------------------------------------------------------------------------------------
# batch_representation="embedding"


def test_batch_embedding_replaces_the_one_hot_columns():
    vae = VAE(n_input=40, n_batch=3, n_layers=2, batch_representation="embedding", encode_covariates=True,
              batch_embedding_kwargs={"embedding_dim": 4})
    emb = vae.get_embedding("batch")
    assert isinstance(emb, Embedding) and emb.weight.shape == (3, 4)
    # 4 embedding columns, no one-hot columns, in the encoder and (deeply injected) the decoder
    assert vae.z_encoder.encoder.layers[0][0].in_features == 40 + 4
    assert vae.decoder.px_decoder.layers[1][0].in_features == 128 + 4
    assert "_embeddings_dict.batch.weight" in vae.state_dict()
    with pytest.raises(KeyError):
        vae.init_embedding("batch", 3)
    with pytest.raises(KeyError, match="no embedding 'labels'"):
        vae.remove_embedding("labels")


def test_embedding_extend_adds_rows_and_freezes_the_old_ones():
    torch.manual_seed(0)
    old = Embedding(2, 3)
    new = Embedding.extend(old, init=1)
    assert torch.equal(new.weight[:2], old.weight) and new.num_embeddings == 3
    new(torch.tensor([0, 1, 2])).sum().backward()
    assert (new.weight.grad[:2] == 0).all() and (new.weight.grad[2] != 0).all()
    assert torch.equal(Embedding.extend(old, init=[1]).weight[2], old.weight[1])


def test_scvi_batch_embedding_corrects_batches_like_one_hot(tmp_path):
    adata = _adata()
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    labels, batches = adata.obs["labels"].to_numpy(), adata.obs["batch"].to_numpy()
    mixing, accuracy = {}, {}
    for rep in ("one-hot", "embedding"):
        model = SCVI(adata, n_latent=5, gene_likelihood="nb", batch_representation=rep)
        initial = {k: v.clone() for k, v in model.module.state_dict().items() if "embeddings_dict" in k}
        _train(model, 60)
        z = model.get_latent_representation()
        mixing[rep], accuracy[rep] = same_batch_fraction(z, batches), knn_accuracy(z, labels)
    # 0.5 is perfect mixing for two batches; measured 0.51 (embedding) and 0.52 (one-hot), accuracy 1.00 both
    assert mixing["embedding"] < 0.7 and mixing["embedding"] < mixing["one-hot"] + 0.1, mixing
    assert accuracy["embedding"] > 0.85 and accuracy["embedding"] > accuracy["one-hot"] - 0.1, accuracy

    # the batch vectors are trained with the networks
    assert not torch.allclose(model.module.get_embedding("batch").weight, initial["_embeddings_dict.batch.weight"])
    rep = model.get_batch_representation()
    table = model.module.get_embedding("batch").weight.detach().numpy()
    codes = adata.obs["batch"].cat.codes.to_numpy()
    np.testing.assert_array_equal(rep, table[codes])
    model.save(tmp_path / "m")
    loaded = SCVI.load(tmp_path / "m", adata)
    np.testing.assert_array_equal(loaded.get_batch_representation(indices=[0, 300]), rep[[0, 300]])
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-6)


def test_one_hot_model_has_no_batch_representation():
    adata = _adata(n_cells=40)
    SCVI.setup_anndata(adata, batch_key="batch")
    with pytest.raises(KeyError, match="batch_representation='embedding'"):
        SCVI(adata).get_batch_representation()


# ------------------------------------------------------------------------------------------------------
# gene_likelihood="normal"


def _gaussian_adata(seed=0):
    """Continuous data: two groups of cells with their own gene means, Gaussian noise of sd 0.3."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(1.0, 4.0, size=(2, 50))
    groups = rng.integers(0, 2, size=400)
    x = means[groups] + 0.3 * rng.standard_normal((400, 50))
    adata = pyrovi.data.synthetic_iid(batch_size=200, n_genes=50, seed=seed)
    adata.X = x.astype(np.float32)
    adata.obs["group"] = groups.astype(str)
    return adata, means[groups]


def test_normal_likelihood_recovers_the_means_of_gaussian_data():
    adata, truth = _gaussian_adata()
    with pytest.warns(UserWarning, match="registered as continuous values"):
        SCVI.setup_anndata(adata)
    model = _train(SCVI(adata, n_latent=2, n_hidden=32, gene_likelihood="normal"), 60, batch_size=64, lr=1e-2)
    fitted = model.get_normalized_expression(library_size="latent", n_samples=5, return_numpy=True)
    err = np.abs(fitted - truth).mean()
    assert err < 0.15, err  # measured 0.084; the noise sd is 0.3, the spread of the true means 0.9
    assert np.corrcoef(fitted.ravel(), truth.ravel())[0, 1] > 0.98  # measured 0.995
    # theta is the standard deviation of the Gaussian: close to 0.3 for every gene
    sd = model.module.log_theta.exp().detach().numpy()
    assert abs(np.median(sd) - 0.3) < 0.08, np.median(sd)


def test_count_likelihoods_refuse_continuous_data_naming_the_fix():
    adata, _ = _gaussian_adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SCVI.setup_anndata(adata)
    with pytest.raises(ValueError, match="gene_likelihood='zinb' models raw counts.*gene_likelihood='normal'"):
        SCVI(adata)


def test_normal_likelihood_refuses_values_without_log1p():
    adata, _ = _gaussian_adata()
    adata.X = adata.X - 3.0  # centred values: some below -1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SCVI.setup_anndata(adata)
    with pytest.raises(ValueError, match="log_variational=False"):
        SCVI(adata, gene_likelihood="normal")
    model = SCVI(adata, gene_likelihood="normal", log_variational=False)
    model.train(max_epochs=1, progress_bar=False)
    assert np.isfinite(model.get_elbo())


def test_normal_likelihood_on_counts():
    adata = _adata(n_cells=100)
    SCVI.setup_anndata(adata, batch_key="batch")  # counts: no warning, count likelihoods accepted
    model = SCVI(adata, gene_likelihood="normal")
    model.train(max_epochs=1, progress_bar=False)
    assert np.isfinite(model.get_elbo())


# ------------------------------------------------------------------------------------------------------
# encoder and decoder options


def test_var_activation_sets_the_encoder_variance_and_survives_save(tmp_path):
    enc = Encoder(20, 3, var_activation=torch.nn.Softplus(), dropout_rate=0.0)
    enc.eval()
    x = torch.poisson(torch.full((4, 20), 2.0))
    h = enc.encoder(torch.log1p(x))
    _, scale = enc(x)
    assert torch.allclose(scale, torch.sqrt(torch.nn.functional.softplus(enc.log_var(h)) + enc.var_eps))

    adata = _adata(n_cells=60)
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, var_activation=torch.nn.Softplus(), use_observed_lib_size=False)
    assert model.init_params_["var_activation"] == "softplus"
    model.train(max_epochs=1, progress_bar=False)
    model.save(tmp_path / "m")
    loaded = SCVI.load(tmp_path / "m", adata)
    assert loaded.module.z_encoder.var_activation is torch.nn.functional.softplus
    with pytest.raises(ValueError, match="var_activation='relu' is not one of"):
        SCVI(adata, var_activation="relu")


def test_covariate_and_normalisation_options_shape_the_networks():
    base = dict(n_input=40, n_batch=3, n_layers=2, n_hidden=16, n_continuous_cov=2)
    deep, shallow = VAE(**base), VAE(**base, deeply_inject_covariates=False)
    assert deep.decoder.px_decoder.layers[1][0].in_features == 16 + 3 + 2
    assert shallow.decoder.px_decoder.layers[1][0].in_features == 16
    assert VAE(**base, encode_covariates=True).z_encoder.encoder.layers[0][0].in_features == 40 + 3 + 2
    assert VAE(**base).z_encoder.encoder.layers[0][0].in_features == 40
    layers = VAE(**base, use_batch_norm="decoder", use_layer_norm="encoder")
    kinds = lambda net: {type(m).__name__ for m in net.modules()}  # noqa: E731
    assert "BatchNorm1d" not in kinds(layers.z_encoder) and "LayerNorm" in kinds(layers.z_encoder)
    assert "BatchNorm1d" in kinds(layers.decoder) and "LayerNorm" not in kinds(layers.decoder)
    assert VAE(**base, extra_encoder_kwargs={"var_eps": 0.1}).z_encoder.var_eps == 0.1
    with pytest.raises(ValueError, match="extra_encoder_kwargs has arguments \\['nope'\\]"):
        VAE(**base, extra_encoder_kwargs={"nope": 1})
    with pytest.raises(ValueError, match="use_batch_norm='yes' is not one of"):
        VAE(**base, use_batch_norm="yes")


# ------------------------------------------------------------------------------------------------------
# TOTALVI


@pytest.fixture(scope="module")
def citeseq():
    adata = pyrovi.data.synthetic_iid(batch_size=60, n_genes=50, n_proteins=12, seed=1)
    adata.obsm["protein_expression"][adata.obs["batch"].to_numpy() == "batch_1", 0] = 0  # missing in batch 1
    TOTALVI.setup_anndata(adata, protein_expression_obsm_key="protein_expression", batch_key="batch")
    return adata


def test_totalvi_encoder_and_decoder_options(citeseq):
    model = TOTALVI(citeseq, encode_covariates=False, use_batch_norm="decoder", use_layer_norm="encoder",
                    extra_decoder_kwargs={"activation_function_bg": "exp"}, n_latent=4)
    module = model.module
    assert module.z_encoder.encoder.n_cat_list == [] and module.z_encoder.encoder.n_cont == 0
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in module.z_encoder.modules())
    assert any(isinstance(m, torch.nn.LayerNorm) for m in module.z_encoder.modules())
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in module.rna_decoder.modules())
    model.train(max_epochs=2, progress_bar=False)
    assert np.isfinite(model.get_latent_representation()).all()
    with pytest.raises(ValueError, match="activation_function_bg"):
        TOTALVI(citeseq, extra_decoder_kwargs={"activation": "exp"})


def test_totalvi_missing_proteins_dispersions_and_background_prior(citeseq):
    masked = TOTALVI(citeseq)
    assert not masked.module.protein_batch_mask[1, 0] and masked.module.protein_batch_mask.sum() == 23
    assert TOTALVI(citeseq, override_missing_proteins=True).module.protein_batch_mask.all()
    # by default the background prior starts from the data (not from location 0), with few proteins too
    assert masked.module.background_prior_loc.abs().sum() > 0
    few = pyrovi.data.synthetic_iid(batch_size=30, n_genes=20, n_proteins=4, seed=2)
    TOTALVI.setup_anndata(few, protein_expression_obsm_key="protein_expression", batch_key="batch")
    assert TOTALVI(few).module.background_prior_loc.abs().sum() > 0
    assert TOTALVI(citeseq, empirical_protein_background_prior=False).module.background_prior_loc.abs().sum() == 0
    labelled = TOTALVI(citeseq, gene_dispersion="gene-label", protein_dispersion="protein-batch")
    assert labelled.module.log_theta.shape == (1, 50) and labelled.module.log_phi.shape == (2, 12)
    labelled.train(max_epochs=1, progress_bar=False)


def test_totalvi_logistic_normal_latent(citeseq):
    model = TOTALVI(citeseq, latent_distribution="ln", n_latent=5)
    model.train(max_epochs=2, progress_bar=False)
    z = model.get_latent_representation()
    assert z.shape == (citeseq.n_obs, 5) and np.allclose(z.sum(1), 1.0, atol=1e-4)
