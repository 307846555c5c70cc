"""TOTALVI on simulated CITE-seq data with known background/foreground states."""

import numpy as np
import pyro
import pytest
import torch
from _knn import knn_accuracy
from scipy.stats import rankdata

import pyrovi
from pyrovi.model import TOTALVI
from pyrovi.module.base import per_cell_elbo_terms, per_cell_log_likelihood, trace_pair

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MISSING = {1: [0, 1]}  # proteins 0 and 1 are absent from batch_1's panel


def _auc(scores: np.ndarray, truth: np.ndarray) -> float:
    ranks = rankdata(scores)
    n1 = truth.sum()
    return float((ranks[truth].sum() - n1 * (n1 + 1) / 2) / (n1 * (truth.size - n1)))


@pytest.fixture(scope="module")
def trained():
    pyrovi.settings.seed = 0
    adata = pyrovi.datasets.synthetic_citeseq(n_cells=500, n_genes=100, n_proteins=20, seed=0, missing_proteins=MISSING)
    TOTALVI.setup_anndata(adata, "protein_expression", batch_key="batch")
    model = TOTALVI(adata, n_latent=5, n_hidden=64)
    # the settings these measurements were made with (TOTALVI.train's own defaults: batch 256, early stopping
    # and a plateau scheduler, as scvi-tools)
    model.train(max_epochs=60, batch_size=128, early_stopping=False, reduce_lr_on_plateau=False, progress_bar=False,
                plan_kwargs={"n_epochs_kl_warmup": 10, "lr": 4e-3})
    return model


def _observed_entries(adata) -> np.ndarray:
    in_b1 = (adata.obs["batch"] == "batch_1").to_numpy()[:, None]
    return ~(in_b1 & np.isin(np.arange(adata.obsm["protein_expression"].shape[1]), MISSING[1])[None])


def test_training_improves_and_latent_separates_cell_types(trained):
    val = trained.history["elbo_validation"]["elbo_validation"]
    assert np.isfinite(val).all() and val.iloc[-1] < 0.5 * val.iloc[0]
    z = trained.get_latent_representation()
    assert z.shape == (500, 5)
    assert knn_accuracy(z, trained.adata.obs["labels"].to_numpy()) > 0.9  # measured 1.00; chance 0.33


def test_foreground_probability_recovers_the_simulated_state(trained):
    """Measured: ROC AUC 0.994 given the counts, 0.917 for scvi-tools' count-blind 1 - pi."""
    adata = trained.adata
    entries = _observed_entries(adata)
    truth = adata.obsm["protein_foreground_true"][entries]
    posterior = trained.get_protein_foreground_probability(n_samples=5, return_numpy=True)
    prior = trained.get_protein_foreground_probability(n_samples=5, return_numpy=True, given_counts=False)
    assert posterior.shape == (500, 20) and ((posterior >= 0) & (posterior <= 1)).all()
    assert _auc(posterior[entries], truth) > 0.97
    assert _auc(prior[entries], truth) > 0.85


def test_background_mean_correlates_with_the_truth(trained):
    """Measured: correlation of log background means 0.68."""
    adata = trained.adata
    entries = _observed_entries(adata)
    background = trained.get_protein_background_mean(n_samples=5)
    assert list(background.columns) == trained.protein_names
    truth = adata.obsm["protein_background_mean_true"][entries]
    assert np.corrcoef(np.log(background.to_numpy()[entries]), np.log(truth))[0, 1] > 0.5


def test_missing_proteins_are_masked_out_of_the_loss(trained):
    module = trained.module.eval()
    assert not module.protein_batch_mask[1, :2].any() and module.protein_batch_mask[0].all()
    batch = next(iter(trained._make_data_loader(batch_size=200)))
    args, kwargs = trained._fn_args(batch)
    in_b1 = kwargs["batch_index"] == 1
    altered = args[1].clone()
    altered[in_b1, :2] = 1000.0  # arbitrary values where the panel had no antibody
    losses = []
    for y in (args[1], altered):
        pyro.set_rng_seed(0)
        with torch.no_grad():
            terms = per_cell_elbo_terms(*trace_pair(module.model, module.guide, (args[0], y), kwargs))
        losses.append(terms["elbo"])
    assert torch.isfinite(losses[0]).all()
    assert torch.equal(losses[0], losses[1])


def test_per_cell_log_likelihood_reads_one_observed_site(trained):
    module = trained.module.eval()
    batch = next(iter(trained._make_data_loader(batch_size=200)))
    args, kwargs = trained._fn_args(batch)
    with torch.no_grad():
        model_trace, guide_trace = trace_pair(module.model, module.guide, args, kwargs)
        rna, protein = (per_cell_log_likelihood(model_trace, site) for site in ("x", "y"))
        # by hand: the protein mixture's pointwise log-density, summed over the proteins each cell's batch measured
        site = model_trace.nodes["y"]
        pointwise = site["fn"].base_dist.base_dist.log_prob(site["value"])
        measured = module.protein_batch_mask[kwargs["batch_index"].reshape(-1)]
        by_hand = (pointwise * measured).sum(-1)
        total = per_cell_elbo_terms(model_trace, guide_trace)["reconstruction"]
    assert rna.shape == protein.shape == (200,)
    torch.testing.assert_close(protein, by_hand)
    torch.testing.assert_close(rna + protein, total)
    with pytest.raises(ValueError, match="'z' is not an observed site"):
        per_cell_log_likelihood(model_trace, "z")


def test_foreground_probability_of_unmeasured_proteins_is_the_prior(trained):
    """Where a batch lacks a protein, the placeholder zeros are ignored: the value is 1 - pi of the same draw."""
    entries = _observed_entries(trained.adata)
    pyrovi.settings.seed = 5
    posterior = trained.get_protein_foreground_probability(n_samples=2, return_numpy=True)
    pyrovi.settings.seed = 5  # the same draws of z and beta
    prior = trained.get_protein_foreground_probability(n_samples=2, return_numpy=True, given_counts=False)
    assert np.isfinite(posterior).all()
    np.testing.assert_allclose(posterior[~entries], prior[~entries], rtol=1e-6)
    # measured entries do use their counts (read as counts, the zeros would push these towards 0)
    assert np.abs(posterior[entries] - prior[entries]).mean() > 0.05
    assert posterior[~entries].mean() > 0.05


def test_missing_proteins_do_not_enter_the_background_kl(trained):
    module = trained.module.eval()
    batch = next(iter(trained._make_data_loader(batch_size=200)))
    args, kwargs = trained._fn_args(batch)
    assert (kwargs["batch_index"] == 1).any()
    original = module.background_prior_loc.detach().clone()
    kls = []
    for shift in (0.0, 50.0):
        with torch.no_grad():
            module.background_prior_loc[1, :2] = original[1, :2] + shift  # the prior of unmeasured entries only
            pyro.set_rng_seed(0)
            kls.append(per_cell_elbo_terms(*trace_pair(module.model, module.guide, args, kwargs))["kl_local"])
    with torch.no_grad():
        module.background_prior_loc.copy_(original)
    assert torch.isfinite(kls[0]).all()
    assert torch.equal(kls[0], kls[1])


def test_transform_batch_moves_the_protein_background_to_the_target_batch(trained):
    """Simulated per-batch background log means differ; decoding batch_0 cells as batch_1 must follow them.

    Measured: between the per-protein log fold change and the simulated shift of the background log mean,
    correlation 0.98 and slope 0.72; with the background kept from the cell's own batch (the former
    behaviour) only the decoders move, giving correlation 0.70 and slope 0.11.
    """
    adata = trained.adata
    cells = np.flatnonzero((adata.obs["batch"] == "batch_0").to_numpy())
    kwargs = {"indices": cells, "n_samples": 3, "include_protein_background": True, "return_numpy": True}
    _, as_b0 = trained.get_normalized_expression(transform_batch="batch_0", **kwargs)
    _, as_b1 = trained.get_normalized_expression(transform_batch="batch_1", **kwargs)
    measured = np.setdiff1d(np.arange(20), MISSING[1])  # proteins of both panels
    change = np.log(as_b1[:, measured]).mean(0) - np.log(as_b0[:, measured]).mean(0)
    truth = np.asarray(adata.uns["synthetic_citeseq"]["protein_background_log_mean"])
    shift = (truth[1] - truth[0])[measured]
    assert np.corrcoef(change, shift)[0, 1] > 0.9
    assert np.polyfit(shift, change, 1)[0] > 0.5
    assert (np.sign(change) == np.sign(shift))[np.abs(shift) > 0.3].all()


def test_sample_protein_mixing_picks_one_component_per_draw(trained):
    cells = np.arange(50)
    pyrovi.settings.seed = 7
    beta = trained.get_protein_background_mean(indices=cells, return_numpy=True)
    pyrovi.settings.seed = 7  # the same draw, then one indicator per entry
    mixed = trained.get_normalized_expression(
        indices=cells, include_protein_background=True, sample_protein_mixing=True, return_numpy=True
    )[1]
    pyrovi.settings.seed = 7
    foreground = trained.get_normalized_expression(indices=cells, sample_protein_mixing=True, return_numpy=True)[1]
    background = np.isclose(mixed, beta, rtol=1e-5)
    assert 0.05 < background.mean() < 0.95  # both components are drawn
    assert (mixed[~background] > beta[~background]).all()  # the foreground is alpha * beta, alpha > 1
    np.testing.assert_array_equal(foreground[background], 0.0)
    np.testing.assert_allclose(foreground[~background], mixed[~background], rtol=1e-6)


def test_posterior_predictive_rna_and_protein_share_each_draw(trained):
    """Each replicate of x and y comes from one trace: the guide's draw, then the unconditioned model on it."""
    from pyro import poutine

    cells = np.arange(40)
    pyrovi.settings.seed = 11
    replicates = trained.posterior_predictive_sample(indices=cells, n_samples=2)
    x_rep, y_rep = replicates["rna"], replicates["protein"]
    pyrovi.settings.seed = 11
    module = trained.module.eval()
    args, kwargs = trained._fn_args(next(iter(trained._make_data_loader(indices=cells))))
    xs, ys = [], []
    with torch.inference_mode():
        for _ in range(2):
            guide_trace = poutine.trace(module.guide).get_trace(*args, **kwargs)
            joint = poutine.trace(poutine.replay(poutine.uncondition(module.model), trace=guide_trace))
            trace = joint.get_trace(*args, **kwargs)
            xs.append(trace.nodes["x"]["value"])
            ys.append(trace.nodes["y"]["value"])
    np.testing.assert_array_equal(x_rep, torch.stack(xs, -1).numpy())
    np.testing.assert_array_equal(y_rep, torch.stack(ys, -1).numpy())


def test_queries_shapes_and_ranges(trained):
    rna, protein = trained.get_normalized_expression(n_samples=2, library_size=1e4)
    assert rna.shape == (500, 100) and protein.shape == (500, 20)
    np.testing.assert_allclose(rna.sum(1), 1e4, rtol=1e-4)
    assert (protein.to_numpy() > 0).all()
    pyrovi.settings.seed = 3
    _, foreground_only = trained.get_normalized_expression(indices=np.arange(5))
    pyrovi.settings.seed = 3  # the same draws, plus the background term
    _, with_background = trained.get_normalized_expression(indices=np.arange(5), include_protein_background=True)
    assert (with_background.to_numpy() > foreground_only.to_numpy()).all()
    sub_rna, sub_protein = trained.get_normalized_expression(
        indices=np.arange(5), gene_list=["gene_1"], protein_list=["protein_3", "protein_2"]
    )
    assert sub_rna.shape == (5, 1) and list(sub_protein.columns) == ["protein_3", "protein_2"]
    replicates = trained.posterior_predictive_sample(n_samples=3)
    x_rep, y_rep = replicates["rna"], replicates["protein"]
    assert x_rep.shape == (500, 100, 3) and y_rep.shape == (500, 20, 3)
    # replicated mean counts per protein (among the cells that measured it) track the observed ones
    observed = trained.adata.obsm["protein_expression"].to_numpy()
    entries = _observed_entries(trained.adata)
    obs_means = np.array([observed[entries[:, t], t].mean() for t in range(20)])
    rep_means = np.array([y_rep[entries[:, t], t].mean() for t in range(20)])
    assert np.corrcoef(np.log(obs_means), np.log(rep_means))[0, 1] > 0.9
    draws = trained.sample_posterior(num_samples=10, return_sites=["z", "log_protein_background"])
    assert draws["log_protein_background"]["mean"].shape == (500, 20)


def test_differential_expression_and_correlation_cover_genes_and_proteins(trained):
    de = trained.differential_expression(groupby="labels", group1="label_0", n_samples=300, silent=True)
    assert {f"{p}_protein" for p in trained.protein_names} <= set(de.index) and "gene_0" in de.index  # scvi-tools names
    corr = trained.get_feature_correlation_matrix(n_samples=2, indices=np.arange(100))
    assert corr.shape == (120, 120) and np.allclose(np.diag(corr), 1.0)


def test_save_load_round_trip_is_exact(trained, tmp_path):
    trained.save(tmp_path / "m")
    loaded = TOTALVI.load(tmp_path / "m", trained.adata.copy())
    np.testing.assert_array_equal(loaded.get_latent_representation(), trained.get_latent_representation())
    for key, value in trained.module.state_dict().items():
        assert torch.equal(value, loaded.module.state_dict()[key]), key


def test_scvi_tools_objective_and_latent_library_train():
    adata = pyrovi.datasets.synthetic_citeseq(n_cells=120, n_genes=30, n_proteins=6, seed=1)
    TOTALVI.setup_anndata(adata, "protein_expression", batch_key="batch")
    model = TOTALVI(adata, n_latent=3, n_hidden=32, objective="scvi-tools", use_observed_lib_size=False)
    model.train(max_epochs=3, progress_bar=False)
    assert np.isfinite(model.history["elbo_validation"].to_numpy()).all()
    with pytest.raises(ValueError, match="objective"):
        TOTALVI(adata, objective="other")


def test_setup_mudata():
    mudata = pytest.importorskip("mudata")
    adata = pyrovi.datasets.synthetic_citeseq(n_cells=60, n_genes=20, n_proteins=4, seed=2)
    proteins = adata.obsm["protein_expression"]
    rna = adata.copy()
    del rna.obsm["protein_expression"]
    import anndata

    prot = anndata.AnnData(proteins.to_numpy(), obs=rna.obs[[]].copy())
    prot.var_names = list(proteins.columns)
    mdata = mudata.MuData({"rna": rna, "adt": prot})
    # the short form of earlier versions ({"protein": ...}) is still accepted; the MuData itself is set up
    assert TOTALVI.setup_mudata(mdata, batch_key="batch", modalities={"protein": "adt"}) is None
    model = TOTALVI(mdata, n_latent=2, n_hidden=16)
    assert model.protein_names == list(proteins.columns)
    with pytest.raises(ValueError, match="modality"):
        TOTALVI.setup_mudata(mdata, modalities={"protein": "missing"})


def test_reconstruction_error_per_modality_with_scvi_tools_keys(trained):
    # scvi-tools' TOTALVI reports the two modalities' losses separately under these keys; they are joint
    # (one posterior draw per minibatch serves both) and add up to the model's whole reconstruction term
    model = trained
    cells = np.arange(50)
    pyro.set_rng_seed(4)
    per_cell = model.get_reconstruction_error(indices=cells, return_mean=False)
    assert set(per_cell) == {"reconst_loss_gene", "reconst_loss_protein"}
    assert all(v.shape == (50,) and (v > 0).all() for v in per_cell.values())
    pyro.set_rng_seed(4)
    model.module.eval()
    batch = next(iter(model._make_data_loader(indices=cells, batch_size=50)))
    args, kwargs = model._fn_args(batch)
    with torch.inference_mode():
        total = -per_cell_elbo_terms(*trace_pair(model.module.model, model.module.guide, args, kwargs))["reconstruction"]
    np.testing.assert_allclose(per_cell["reconst_loss_gene"] + per_cell["reconst_loss_protein"], total.numpy(), rtol=1e-5)
    pyro.set_rng_seed(4)
    means = model.get_reconstruction_error(indices=cells)
    assert means["reconst_loss_protein"] == pytest.approx(per_cell["reconst_loss_protein"].mean(), rel=1e-5)
