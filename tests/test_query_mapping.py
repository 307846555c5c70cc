"""Query mapping (scArches): gene preparation, architecture surgery, what trains and what stays bitwise fixed."""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import torch

import pyrovi
from pyrovi.model import SCVI, TOTALVI

N_GENES, N_LATENT = 40, 4
TRAIN = {"enable_progress_bar": False, "batch_size": 64}


def _data(n_cells: int, seed: int, batches: list[str], covs: list[str] | None = None) -> anndata.AnnData:
    adata = pyrovi.datasets.synthetic_iid(n_cells=n_cells, n_genes=N_GENES, n_batches=1, seed=seed)
    adata.obs["batch"] = pd.Categorical(np.resize(batches, n_cells))
    if covs is not None:
        adata.obs["cov"] = pd.Categorical(np.resize(covs, n_cells))
    return adata


def _reference(batches=("A", "B"), covs=None, seed=0, **model_kwargs) -> SCVI:
    adata = _data(240, seed, list(batches), None if covs is None else list(covs))
    SCVI.setup_anndata(adata, batch_key="batch", categorical_covariate_keys=None if covs is None else ["cov"])
    model = SCVI(adata, n_latent=N_LATENT, n_hidden=32, **model_kwargs)
    model.train(max_epochs=3, **TRAIN)
    return model


def _query(batches=("C",), covs=None, seed=5, n_cells=120) -> anndata.AnnData:
    return _data(n_cells, seed, list(batches), None if covs is None else list(covs))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Entry-wise: which values moved (bitwise)."""
    return {k: v.ne(before[k]) for k, v in model.module.state_dict().items()}


@pytest.fixture(scope="module")
def reference() -> SCVI:
    return _reference()


# --------------------------------------------------------------------------------------------------
# prepare_query_anndata


def test_prepare_pads_missing_genes_with_zeros_in_the_reference_order(reference):
    query = _query()
    query = query[:, np.r_[7:N_GENES, 0:5]].copy()  # two genes missing, the rest shuffled
    query.var_names = list(query.var_names[:-1]) + ["not_in_reference"]
    with pytest.warns(UserWarning, match=r"lacks 3 of the reference model's 40 genes"):
        out = SCVI.prepare_query_anndata(query, reference, inplace=False)
    assert list(out.var_names) == list(reference.adata.var_names)
    assert query.n_vars == N_GENES - 2  # inplace=False leaves the query alone
    dense = np.asarray(out.X.todense())
    assert dense[:, 5:7].sum() == 0 and dense[:, 4].sum() == 0  # gene_4 was renamed away: padded
    original = np.asarray(query.X.todense())
    np.testing.assert_array_equal(dense[:, 10], original[:, list(query.var_names).index("gene_10")])
    assert SCVI.prepare_query_anndata(query, reference) is None  # in place
    assert list(query.var_names) == list(reference.adata.var_names)


def test_prepare_returns_the_reference_genes(reference, tmp_path):
    genes = SCVI.prepare_query_anndata(None, reference, return_reference_var_names=True)
    assert list(genes) == list(reference.adata.var_names)
    reference.save(tmp_path / "ref")
    assert list(SCVI.prepare_query_anndata(None, tmp_path / "ref", return_reference_var_names=True)) == list(genes)


def test_prepare_refuses_a_query_with_too_few_shared_genes(reference):
    query = _query()[:, :15].copy()
    with pytest.raises(ValueError, match=r"holds 15 of the reference model's 40 genes"):
        SCVI.prepare_query_anndata(query, reference)
    assert query.n_vars == 15


def test_prepare_refuses_views_duplicates_and_in_place_backed_data(reference, tmp_path):
    with pytest.raises(ValueError, match="is a view"):
        SCVI.prepare_query_anndata(_query()[:10], reference)
    dup = _query()
    dup.var_names = ["gene_0"] * 2 + list(dup.var_names[2:])
    with pytest.raises(ValueError, match="duplicated gene names"):
        SCVI.prepare_query_anndata(dup, reference)
    query = _query()[:, 2:].copy()
    query.write_h5ad(tmp_path / "q.h5ad")
    backed = anndata.read_h5ad(tmp_path / "q.h5ad", backed="r")
    with pytest.warns(UserWarning, match="lacks 2"), pytest.raises(ValueError, match="backed"):
        SCVI.prepare_query_anndata(backed, reference)
    with pytest.warns(UserWarning, match="lacks 2"):
        out = SCVI.prepare_query_anndata(backed, reference, inplace=False)
    assert list(out.var_names) == list(reference.adata.var_names) and not out.isbacked


# --------------------------------------------------------------------------------------------------
# surgery: where the reference's weights go


def test_new_batch_and_covariate_categories_get_their_own_columns():
    ref = _reference(covs=("x", "y"))
    query = _query(batches=("C",), covs=("x", "z"))
    model = SCVI.load_query_data(query, ref)
    assert model.summary_stats["n_batch"] == 3
    assert model.adata_manager.get_state("extra_categorical_covs")["n_cats_per_key"] == [3]
    old = ref.module.decoder.px_decoder.layers[0][0].weight
    new = model.module.decoder.px_decoder.layers[0][0].weight
    # [z (4) | batch A, B, C | cov x, y, z]: the reference's columns skip the new batch's (6) and category's (9)
    kept = [0, 1, 2, 3, 4, 5, 7, 8]
    torch.testing.assert_close(new[:, kept], old, rtol=0, atol=0)
    assert new.shape[1] == old.shape[1] + 2


def test_reference_cells_map_exactly_as_before_when_the_reference_had_one_batch():
    ref = _reference(batches=("A",), encode_covariates=True)
    # the decoder's batch normalisation trains by default; frozen, the whole reference computation is kept
    model = SCVI.load_query_data(_query(batches=("B",)), ref, freeze_batchnorm_decoder=True)
    model.train(max_epochs=3, **TRAIN)
    ref_cells = ref.adata.copy()
    np.testing.assert_array_equal(model.get_latent_representation(ref_cells), ref.get_latent_representation())
    torch.manual_seed(0)
    expected = ref.get_normalized_expression(n_samples=1, return_numpy=True)
    torch.manual_seed(0)
    np.testing.assert_array_equal(model.get_normalized_expression(ref_cells, n_samples=1, return_numpy=True), expected)


def test_embedding_rows_and_per_batch_dispersion_grow_and_only_new_rows_train():
    ref = _reference(batch_representation="embedding", dispersion="gene-batch")
    model = SCVI.load_query_data(_query(), ref)
    before = _state(model)
    model.train(max_epochs=3, **TRAIN)
    moved = _changed(before, model)
    rows = moved["_embeddings_dict.batch.weight"]
    assert rows.shape[0] == 3 and not rows[:2].any() and rows[2].any()
    theta = moved["log_theta"]
    assert not theta[:2].any() and theta[2].all()


# --------------------------------------------------------------------------------------------------
# freezing: each flag, checked bitwise after training the query


def _released(flags: dict, key: str) -> bool:
    """What the flags let train besides new categories' entries (this test's own statement of the rules)."""
    if "running_" in key or key.endswith("num_batches_tracked"):
        return False  # batch normalisations keep the reference's running statistics, whatever the flags
    if flags.get("unfrozen"):
        return True
    bn = ".1." in key and "layers" in key
    if key.startswith("z_encoder.encoder.layers.0.0") and not flags.get("freeze_expression", True):
        return True
    if key.startswith("decoder.px_decoder.layers.0.0") and not flags.get("freeze_decoder_first_layer", True):
        return True
    if bn and key.startswith("z_encoder") and not flags.get("freeze_batchnorm_encoder", True):
        return True
    return bn and key.startswith("decoder") and not flags.get("freeze_batchnorm_decoder", False)


FLAGS = [
    {},
    {"freeze_expression": False},
    {"freeze_decoder_first_layer": False},
    {"freeze_batchnorm_encoder": False},
    {"freeze_batchnorm_decoder": True},
    {"freeze_dropout": True},
    {"unfrozen": True},
]


@pytest.mark.parametrize("flags", FLAGS, ids=[",".join(f"{k}={v}" for k, v in f.items()) or "defaults" for f in FLAGS])
def test_frozen_weights_are_bitwise_unchanged_by_query_training(reference, flags):
    reference_before = _state(reference)
    model = SCVI.load_query_data(_query(), reference, **flags)
    before = _state(model)
    model.train(max_epochs=4, **TRAIN)
    moved = _changed(before, model)
    new_column = N_LATENT + 2  # the decoder's first layer reads [z | batch A, B, C]
    for key, mask in moved.items():
        if _released(flags, key):
            continue
        if key == "decoder.px_decoder.layers.0.0.weight":
            assert not mask[:, :new_column].any(), key
            assert mask[:, new_column].any(), "the new batch's column did not train"
        else:
            assert not mask.any(), f"{key} moved although frozen"
    for key, value in reference.module.state_dict().items():
        assert torch.equal(value, reference_before[key]), f"the reference's {key} changed"
    released = [k for k in moved if _released(flags, k) and not k.endswith("num_batches_tracked")]
    assert all(moved[k].any() for k in released), [k for k in released if not moved[k].any()]
    if flags.get("freeze_dropout"):
        assert all(m.p == 0 for m in model.module.modules() if isinstance(m, torch.nn.Dropout))
    if flags.get("unfrozen"):
        assert moved["z_encoder.loc.weight"].any()


def test_weight_decay_defaults_to_zero_and_warns_when_set(reference):
    model = SCVI.load_query_data(_query(), reference)
    before = _state(model)
    with pytest.warns(UserWarning, match="shrinks the reference's frozen weights"):
        model.train(max_epochs=2, plan_kwargs={"weight_decay": 0.1}, **TRAIN)
    assert model.module.z_encoder.loc.weight.equal(before["z_encoder.loc.weight"])  # requires_grad=False: untouched


def test_totalvi_query_keeps_the_reference_and_learns_the_new_batch_background():
    ref_data = pyrovi.datasets.synthetic_citeseq(n_cells=200, n_genes=30, n_proteins=8, seed=1)
    TOTALVI.setup_anndata(ref_data, "protein_expression", batch_key="batch")
    ref = TOTALVI(ref_data, n_latent=N_LATENT)
    ref.train(max_epochs=2, **TRAIN)
    reference_before = _state(ref)
    query = pyrovi.datasets.synthetic_citeseq(n_cells=80, n_genes=30, n_proteins=8, seed=2)
    query.obs["batch"] = "new"
    model = TOTALVI.load_query_data(query, ref)
    before = _state(model)
    model.train(max_epochs=2, **TRAIN)
    moved = _changed(before, model)
    n_old = ref.summary_stats["n_batch"]
    assert not moved["background_prior_loc"][:n_old].any() and moved["background_prior_loc"][n_old:].any()
    assert not moved["log_theta"].any() and not moved["rho_logits.weight"].any()
    assert all(torch.equal(v, reference_before[k]) for k, v in ref.module.state_dict().items())
    assert model.get_latent_representation().shape == (80, N_LATENT)


# --------------------------------------------------------------------------------------------------
# files, saved references, backed data


def test_query_model_saves_loads_and_answers(reference, tmp_path):
    model = SCVI.load_query_data(_query(), reference)
    model.train(max_epochs=2, **TRAIN)
    model.save(tmp_path / "query", save_anndata=True)
    loaded = SCVI.load(tmp_path / "query")
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    assert loaded.summary_stats["n_batch"] == 3


@pytest.mark.parametrize("save_anndata", [False, True])
def test_a_saved_reference_maps_like_the_model_itself(reference, tmp_path, save_anndata):
    reference.save(tmp_path / "ref", save_anndata=save_anndata)
    from_dir = SCVI.load_query_data(_query(), tmp_path / "ref")
    from_model = SCVI.load_query_data(_query(), reference)
    a, b = from_dir.module.state_dict(), from_model.module.state_dict()
    new = "decoder.px_decoder.layers.0.0.weight"
    for key in a:
        if key != new:
            assert torch.equal(a[key], b[key]), key
    assert torch.equal(a[new][:, : N_LATENT + 2], b[new][:, : N_LATENT + 2])


def test_backed_query_data(reference, tmp_path):
    _query().write_h5ad(tmp_path / "q.h5ad")
    backed = anndata.read_h5ad(tmp_path / "q.h5ad", backed="r")
    model = SCVI.load_query_data(backed, reference)
    model.train(max_epochs=2, **TRAIN)
    assert model.get_latent_representation().shape == (120, N_LATENT)


# --------------------------------------------------------------------------------------------------
# errors


def test_load_query_data_errors(reference, tmp_path):
    with pytest.raises(ValueError, match="reference_model is required"):
        SCVI.load_query_data(_query())
    with pytest.raises(TypeError, match="reference_model must be a trained SCVI"):
        SCVI.load_query_data(_query(), object())
    with pytest.raises(ValueError, match="prepare_query_anndata"):
        SCVI.load_query_data(_query()[:, 3:].copy(), reference)
    with pytest.raises(ValueError, match="transfer_batch=False"):
        SCVI.load_query_data(_query(), reference, transfer_batch=False)
    with pytest.raises(ValueError, match="registry= and datamodule= are not supported"):
        SCVI.load_query_data(_query(), reference, registry={})
    with pytest.raises(TypeError, match="freeze_expression must be True or False"):
        SCVI.load_query_data(_query(), reference, freeze_expression="no")
    citeseq = pyrovi.datasets.synthetic_citeseq(n_cells=60, n_genes=30, n_proteins=4, seed=0)
    TOTALVI.setup_anndata(citeseq, "protein_expression", batch_key="batch")
    with pytest.raises(TypeError, match="is a TOTALVI, not a SCVI"):
        SCVI.load_query_data(_query(), TOTALVI(citeseq))
    known = _query(batches=("A",))
    model = SCVI.load_query_data(known, reference, transfer_batch=False)  # known batches only: fine
    assert model.summary_stats["n_batch"] == 2


def test_unknown_categories_point_to_load_query_data(reference):
    with pytest.raises(pyrovi.data.UnseenCategoryError, match="load_query_data"):
        reference.get_latent_representation(_query())


def test_untrained_reference_warns():
    adata = _data(60, 0, ["A", "B"])
    SCVI.setup_anndata(adata, batch_key="batch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SCVI.load_query_data(_query(), SCVI(adata, n_latent=N_LATENT))
    assert any("not trained" in str(w.message) for w in caught)


def test_mudata_query_for_a_mudata_reference(tmp_path):
    mudata = pytest.importorskip("mudata")
    ref_data = pyrovi.data.synthetic_iid(batch_size=60, n_genes=30, return_mudata=True, seed=0)
    TOTALVI.setup_mudata(ref_data, batch_key="batch", modalities={"rna_layer": "rna", "protein_layer": "protein_expression"})
    ref = TOTALVI(ref_data, n_latent=N_LATENT)
    ref.train(max_epochs=1, **TRAIN)
    ref.save(tmp_path / "ref")
    query = pyrovi.data.synthetic_iid(batch_size=40, n_genes=30, return_mudata=True, seed=1)
    query.obs["batch"] = query.obs["batch"].cat.rename_categories(["batch_2", "batch_3"])
    query.mod["rna"] = query.mod["rna"][:, 3:].copy()
    query.update()
    names = TOTALVI.prepare_query_mudata(None, ref, return_reference_var_names=True)
    assert list(names["rna"]) == list(ref_data["rna"].var_names)
    with pytest.raises(ValueError, match="prepare_query_mudata"):
        TOTALVI.load_query_data(query, ref)
    with pytest.warns(UserWarning, match="lacks 3"):
        TOTALVI.prepare_query_mudata(query, tmp_path / "ref")
    assert isinstance(query, mudata.MuData) and list(query["rna"].var_names) == list(names["rna"])
    with pytest.raises(TypeError, match="prepare_query_mudata"):
        TOTALVI.prepare_query_anndata(query["rna"], ref)
    model = TOTALVI.load_query_data(query, tmp_path / "ref")
    model.train(max_epochs=1, **TRAIN)
    assert model.summary_stats.n_batch == 4
    assert model.get_latent_representation().shape == (80, N_LATENT)


def test_prepare_not_in_place_returns_a_new_anndata_even_when_nothing_changes(reference):
    query = _query()
    out = SCVI.prepare_query_anndata(query, reference, inplace=False)
    assert out is not query
    SCVI.load_query_data(out, reference)
    assert out.uns.keys() - query.uns.keys()  # the setup was written into the copy
    assert not any(key.startswith("_pyrovi") for key in query.uns)  # and not into the user's AnnData
