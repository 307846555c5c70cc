"""scvi-tools' BaseModelClass calls on pyrovi: save/load with a prefix and device, the saved setup,
switching a model's AnnData, its managers and registry, and the refusals that keep model files safe."""

import os

import numpy as np
import pytest

import pyrovi
from pyrovi import REGISTRY_KEYS, ModelFileError
from pyrovi.data import synthetic_iid
from pyrovi.model import SCVI

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(seed=0, **kwargs):
    return synthetic_iid(batch_size=40, n_genes=30, n_proteins=0, n_regions=0, seed=seed, **kwargs)


@pytest.fixture(scope="module")
def trained():
    pyrovi.settings.seed = 0
    adata = _data()
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    model = SCVI(adata, n_hidden=16, n_latent=3)
    model.train(max_epochs=2, train_size=0.8, batch_size=32, enable_progress_bar=False)
    return model


def test_prefixed_models_share_a_directory_and_leave_other_files_alone(trained, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    trained.save(tmp_path, prefix="a_", save_anndata=True)
    trained.save(tmp_path, prefix="b_")
    names = sorted(os.listdir(tmp_path))
    assert names == ["a_adata.h5ad", "a_model.json", "a_model.safetensors", "b_model.json",
                     "b_model.safetensors", "notes.txt"]  # fmt: skip
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(tmp_path, prefix="a_")
    # overwrite without save_anndata removes the data file the previous save wrote; nothing else is touched
    trained.save(tmp_path, prefix="a_", overwrite=True)
    assert not (tmp_path / "a_adata.h5ad").exists() and (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "b_model.json").exists()
    with pytest.raises(ModelFileError, match="without save_anndata"):
        SCVI.load(tmp_path, prefix="a_")

    loaded = SCVI.load(tmp_path, adata=trained.adata, prefix="b_", accelerator="cpu", device="auto")
    np.testing.assert_array_equal(loaded.get_latent_representation(), trained.get_latent_representation())
    np.testing.assert_array_equal(loaded.validation_indices, trained.validation_indices)
    assert loaded.is_trained
    with pytest.raises(ModelFileError, match="prefix"):
        SCVI.load(tmp_path, adata=trained.adata)  # no unprefixed model here: the error names the prefixes


def test_bad_prefix_and_refused_options(trained, tmp_path):
    for prefix in ("../x", "sub/x", ".hidden"):
        with pytest.raises(ValueError, match="prefix"):
            trained.save(tmp_path / "m", prefix=prefix)
    with pytest.raises(TypeError, match="safetensors"):
        trained.save(tmp_path / "m", save_kwargs={"pickle_protocol": 4})
    trained.save(tmp_path / "m")
    with pytest.raises(ValueError, match="does not download"):
        SCVI.load(tmp_path / "m", adata=trained.adata, backup_url="https://example.org/model.pt")
    with pytest.raises(ModelFileError, match="never unpickles"):
        SCVI.convert_legacy_save(tmp_path / "m", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_saved_setup_is_read_without_building_the_model(trained, tmp_path, capsys):
    trained.save(tmp_path, prefix="p_")
    registry = SCVI.load_registry(tmp_path, prefix="p_")
    assert registry["setup_args"]["batch_key"] == "batch"
    assert registry["setup_args"]["labels_key"] == "labels"
    SCVI.view_setup_args(tmp_path, prefix="p_")
    printed = capsys.readouterr().out
    assert "batch_key: 'batch'" in printed and "labels_key: 'labels'" in printed


def test_load_mismatched_data_is_an_error(trained, tmp_path):
    trained.save(tmp_path)
    other_genes = synthetic_iid(batch_size=40, n_genes=50, n_proteins=0, n_regions=0, gene_names_prefix="g")
    with pytest.raises(ValueError, match="genes"):
        SCVI.load(tmp_path, adata=other_genes)
    other_batches = _data(seed=1)
    other_batches.obs["batch"] = other_batches.obs["batch"].cat.rename_categories(["batch_7", "batch_8"])
    with pytest.raises(ValueError, match="batch_7"):
        SCVI.load(tmp_path, adata=other_batches)


def test_assigning_adata_validates_and_switches_the_default_data(trained):
    original = trained.adata
    registry = trained.registry_
    try:
        other = _data(seed=3)
        trained.adata = other
        assert trained.adata is other
        z_other = trained.get_latent_representation()
        assert z_other.shape == (other.n_obs, 3)
        np.testing.assert_allclose(z_other, trained.get_latent_representation(other))
        assert not np.allclose(z_other, trained.get_latent_representation(original))
        # the manager of the new data is a transfer: same setup, its own registry object
        assert trained.get_anndata_manager(other).registry is not trained.get_anndata_manager(original).registry
        assert trained.registry_["setup_args"] == registry["setup_args"]

        missing = _data(seed=4)
        del missing.obs["batch"]
        with pytest.raises(KeyError, match="batch"):
            trained.adata = missing
        assert trained.adata is other  # a refused assignment changes nothing
    finally:
        trained.adata = original


def test_managers_are_kept_for_the_data_a_model_has_seen(trained, capsys):
    unseen = _data(seed=5)
    assert trained.get_anndata_manager(unseen) is None
    with pytest.raises(ValueError, match="not been used with this SCVI"):
        trained.get_anndata_manager(unseen, required=True)
    with pytest.raises(ValueError, match="transfer_fields"):
        trained.view_anndata_setup(unseen)
    trained.get_latent_representation(unseen)  # a query validates it: from now on the model knows it
    manager = trained.get_anndata_manager(unseen)
    assert manager.adata is unseen and manager.summary_stats["n_batch"] == 2
    trained.view_anndata_setup(unseen, hide_state_registries=True)
    assert "batch" in capsys.readouterr().out
    other = _data(seed=6)
    assert trained.transfer_fields(other).adata is other
    assert trained.get_anndata_manager(other) is not None


def test_get_from_registry_and_view_setup(trained, capsys):
    codes = trained.get_from_registry(trained.adata, REGISTRY_KEYS.BATCH_KEY)
    expected = trained.adata.obs["batch"].cat.codes.to_numpy()
    np.testing.assert_array_equal(np.asarray(codes).ravel(), expected)
    with pytest.raises(KeyError, match="size_factor"):
        trained.get_from_registry(trained.adata, REGISTRY_KEYS.SIZE_FACTOR_KEY)
    trained.view_anndata_setup(hide_state_registries=True)
    short = capsys.readouterr().out
    trained.view_anndata_setup()
    full = capsys.readouterr().out
    assert "batch" in short and len(full) > len(short)


def test_a_copy_gets_its_own_identifier_when_a_model_reads_it(trained):
    from pyrovi.data._constants import _SCVI_UUID_KEY

    original = trained.adata
    uid = original.uns[_SCVI_UUID_KEY]
    copy = original.copy()
    assert copy.uns[_SCVI_UUID_KEY] == uid  # a copy carries its original's identifier ...
    trained.get_elbo(copy)
    assert copy.uns[_SCVI_UUID_KEY] != uid  # ... until the model reads it
    assert original.uns[_SCVI_UUID_KEY] == uid
    view = original[:10]
    trained.get_elbo(view)
    assert view.is_view  # a view is read as it is, never written to
    query = _data(seed=8)
    trained.get_elbo(query)
    assert _SCVI_UUID_KEY not in query.uns  # data never set up is not written to


def test_continuous_covariates_come_back_as_a_frame():
    adata = _data(seed=9)
    adata.obs["cont1"] = np.linspace(0, 1, adata.n_obs)
    adata.obs["cont2"] = np.linspace(2, 3, adata.n_obs)
    SCVI.setup_anndata(adata, batch_key="batch", continuous_covariate_keys=["cont1", "cont2"])
    model = SCVI(adata, n_hidden=8, n_latent=2)
    frame = model.get_from_registry(adata, REGISTRY_KEYS.CONT_COVS_KEY)
    np.testing.assert_allclose(frame.to_numpy(), adata.obs[["cont1", "cont2"]].to_numpy())
    assert list(frame.columns) == ["cont1", "cont2"] and list(frame.index) == list(adata.obs_names)


def test_totalvi_on_mudata_saves_its_mudata_and_loads_without_data(tmp_path):
    from pyrovi.model import TOTALVI

    mdata = synthetic_iid(batch_size=40, n_genes=30, n_proteins=6, n_regions=0, return_mudata=True,
                          protein_expression_key="prot", seed=10)  # fmt: skip
    TOTALVI.setup_mudata(mdata, batch_key="batch", modalities={"rna_layer": "rna", "protein_layer": "prot"})
    model = TOTALVI(mdata, n_latent=3)
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    model.save(tmp_path / "m", save_anndata=True)
    assert sorted(os.listdir(tmp_path / "m")) == ["mdata.h5mu", "model.json", "model.safetensors"]
    loaded = TOTALVI.load(tmp_path / "m")
    assert type(loaded.adata).__name__ == "MuData"
    assert np.isfinite(loaded.get_elbo(mdata[:10]))  # a view of a MuData is read, never written to
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), rtol=1e-5)


@pytest.mark.parametrize("model_name", ["SCVI", "TOTALVI"])
def test_a_registered_size_factor_is_the_observed_library(model_name):
    """As in scvi-tools, size factors override use_observed_lib_size=False: no latent library is built."""
    model_cls = getattr(pyrovi.model, model_name)
    adata = synthetic_iid(batch_size=30, n_genes=20, n_proteins=5, n_regions=0, seed=11)
    adata.obs["size_factor"] = np.linspace(1.0, 4.0, adata.n_obs)
    extra = {"protein_expression_obsm_key": "protein_expression"} if model_name == "TOTALVI" else {}
    model_cls.setup_anndata(adata, batch_key="batch", size_factor_key="size_factor", **extra)
    model = model_cls(adata, n_latent=2, use_observed_lib_size=False)
    assert model.module.use_size_factor_key and model.module.use_observed_lib_size
    assert not hasattr(model.module, "library_log_means") and not hasattr(model.module, "library_log_vars")
    model.train(max_epochs=1, batch_size=30, enable_progress_bar=False)
    assert np.isfinite(model.get_elbo())
    plain = synthetic_iid(batch_size=30, n_genes=20, n_proteins=5, n_regions=0, seed=11)
    model_cls.setup_anndata(plain, batch_key="batch", **extra)
    assert hasattr(model_cls(plain, n_latent=2, use_observed_lib_size=False).module, "library_log_means")


def test_a_marker_table_naming_a_gene_twice_is_refused_as_scvi_tools_code_expects():
    import pandas as pd

    from pyrovi.external import CellAssign

    adata = synthetic_iid(batch_size=20, n_genes=6, n_proteins=0, n_regions=0, seed=12)
    adata.obs["size_factor"] = 1.0
    markers = pd.DataFrame(np.eye(6, 2), index=adata.var_names, columns=["t0", "t1"])
    markers = pd.concat([markers, markers.iloc[[1]]])
    CellAssign.setup_anndata(adata, "size_factor")
    for expected in (ValueError, AssertionError):
        with pytest.raises(expected, match=r"names some genes more than once: \['gene_1'\]"):
            CellAssign(adata, markers)


def test_a_query_never_rewrites_the_setup_of_its_data():
    """Querying data through a model reads it: the registry the user's setup wrote stays as it was."""
    from pyrovi.data import read_registry

    adata = _data(seed=13)
    SCVI.setup_anndata(adata, batch_key="batch")
    before = read_registry(adata)
    other_data = adata.copy()
    SCVI.setup_anndata(other_data)  # another model, set up without batches
    other = SCVI(other_data, n_hidden=8, n_latent=2)
    other.get_latent_representation(adata)
    other.get_elbo(adata)
    assert read_registry(adata) == before
    assert SCVI(adata, n_hidden=8, n_latent=2).summary_stats["n_batch"] == 2


@pytest.mark.parametrize("max_epochs", [-1, 0, 2.5, True])
def test_max_epochs_must_be_a_positive_integer(trained, max_epochs):
    """-1 would train forever (Lightning's 'no limit'), 0 would train nothing yet mark the model trained."""
    with pytest.raises(ValueError, match="max_epochs must be a positive integer"):
        trained.train(max_epochs=max_epochs)


def test_arguments_that_would_fail_later_or_give_nonsense_are_refused_up_front(trained):
    adata = trained.adata
    for kwargs, match in [({"n_latent": 0}, "n_latent"), ({"n_hidden": 0}, "n_hidden"), ({"n_layers": 0}, "n_layers")]:
        with pytest.raises(ValueError, match=rf"{match} must be a positive integer"):
            SCVI(adata, **kwargs)
    for library_size in (-1, 0, float("nan"), "counts"):
        with pytest.raises(ValueError, match="library_size must be a positive number"):
            trained.get_normalized_expression(library_size=library_size)
    with pytest.raises(ValueError, match="selects no cell"):
        trained.get_latent_representation(indices=np.zeros(adata.n_obs, dtype=bool))
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            trained.train(max_epochs=1, accelerator="gpu")
