"""scvi-tools' data-layer API on pyrovi: field constructors, AnnDataManager, MuData fields, splitters."""

import numpy as np
import pandas as pd
import pytest

from pyrovi import REGISTRY_KEYS
from pyrovi.data import (
    AnnDataManager,
    AnnTorchDataset,
    CategoricalJointObsField,
    CategoricalObsField,
    LabelsWithUnlabeledObsField,
    LayerField,
    NumericalJointObsField,
    ObsmField,
    ProteinObsmField,
    synthetic_iid,
)
from pyrovi.dataloaders import DataSplitter, SemiSupervisedDataSplitter, SplitIndexWarning
from pyrovi.utils import attrdict


def _manager(adata, batch_key="batch", cat=None, cont=None, proteins=True):
    batch = CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key)
    fields = [
        LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=True),
        batch,
        CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, "labels"),
        CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, cat),
        NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, cont),
    ]
    if proteins:
        fields.append(ProteinObsmField(REGISTRY_KEYS.PROTEIN_EXP_KEY, "protein_expression", batch_field=batch,
                                       colnames_uns_key="protein_names"))
    setup = {"model_name": "TestModel", "setup_args": {"batch_key": batch_key}}
    return AnnDataManager(fields=fields, setup_method_args=setup).register_fields(adata)


def test_manager_with_scvi_tools_arguments_reads_codes_and_states():
    adata = synthetic_iid(batch_size=30, n_genes=20, n_proteins=5, seed=0)
    adata.obs["cat1"] = np.tile([3, 1, 2], 20)
    adata.obs["cont1"] = np.linspace(0, 1, 60)
    manager = _manager(adata, cat=["cat1"], cont=["cont1"])
    assert manager.summary_stats.n_batch == 2 and manager.summary_stats["n_labels"] == 3
    assert manager.data_registry.batch == attrdict({"attr_name": "obs", "attr_key": "batch"})
    codes = manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)
    assert codes.shape == (60, 1)
    np.testing.assert_array_equal(codes[:, 0], adata.obs["batch"].cat.codes)
    mapping = manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
    assert list(mapping) == ["batch_0", "batch_1"]
    assert list(manager.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY).mappings["cat1"]) == [1, 2, 3]
    pd.testing.assert_frame_equal(manager.get_from_registry(REGISTRY_KEYS.CONT_COVS_KEY), adata.obs[["cont1"]])
    np.testing.assert_array_equal(manager.get_from_registry(REGISTRY_KEYS.X_KEY), adata.X)
    assert manager.registry["field_registries"]["batch"]["summary_stats"] == {"n_batch": 2}
    assert manager._get_setup_method_args()["model_name"] == "TestModel"
    # the user's AnnData holds nothing new but the registry string
    assert list(adata.obs.columns) == ["batch", "labels", "cat1", "cont1"]


def test_protein_batch_mask_marks_unmeasured_proteins():
    adata = synthetic_iid(batch_size=30, n_genes=20, n_proteins=5, seed=1)
    adata.obsm["protein_expression"][adata.obs["batch"].to_numpy() == "batch_1", 0] = 0
    mask = _manager(adata).get_state_registry(REGISTRY_KEYS.PROTEIN_EXP_KEY).protein_batch_mask
    np.testing.assert_array_equal(mask["batch_0"], [True] * 5)
    np.testing.assert_array_equal(mask["batch_1"], [False] + [True] * 4)


def test_transfer_new_fields_and_torch_dataset():
    adata = synthetic_iid(batch_size=20, n_genes=10, n_proteins=3, seed=2)
    manager = _manager(adata, proteins=False)
    query = adata.copy()
    query.obs["cat1"] = 6
    with pytest.raises(TypeError, match="bad_option"):
        manager.transfer_fields(query.copy(), bad_option=1)  # unknown options are refused
    manager.register_new_fields([ObsmField(REGISTRY_KEYS.PROTEIN_EXP_KEY, "protein_expression")])
    assert manager.get_from_registry(REGISTRY_KEYS.PROTEIN_EXP_KEY).shape == (40, 3)
    dataset = AnnTorchDataset(manager, getitem_tensors={REGISTRY_KEYS.X_KEY: np.int64})
    assert dataset[1][REGISTRY_KEYS.X_KEY].dtype == np.int64 and dataset[1][REGISTRY_KEYS.X_KEY].shape == (1, 10)
    assert len(manager.create_torch_dataset(indices=np.arange(5))) == 5


def test_labels_with_unlabeled_category_is_last_and_splits_keep_the_ratio():
    adata = synthetic_iid(batch_size=50, n_genes=10, seed=3)
    adata.obs["labels"] = adata.obs["labels"].astype(str)
    adata.obs.iloc[:40, adata.obs.columns.get_loc("labels")] = "Unknown"
    fields = [LayerField("X", None), LabelsWithUnlabeledObsField("labels", "labels", "Unknown")]
    manager = AnnDataManager(fields=fields, setup_method_args={"model_name": "M", "setup_args": {}})
    manager.register_fields(adata)
    assert manager.get_state_registry("labels").categorical_mapping[-1] == "Unknown"
    splitter = SemiSupervisedDataSplitter(manager, train_size=0.5, validation_size=0.25)
    unlabeled = set(range(40))
    assert sum(i in unlabeled for i in splitter.train_idx) == 20  # half of the unlabelled cells
    assert sum(i in unlabeled for i in splitter.val_idx) == 10


def test_datasplitter_external_indexing_and_scvi_tools_order():
    adata = synthetic_iid(batch_size=50, n_genes=10, seed=4)
    manager = _manager(adata, proteins=False)
    order = np.random.default_rng(0).permutation(100)
    splitter = DataSplitter(manager, external_indexing=[order[:60], order[60:80], order[80:]])
    splitter.setup()
    np.testing.assert_array_equal(splitter.train_idx, order[:60])
    with pytest.raises(SplitIndexWarning, match="missing indices"):
        DataSplitter(manager, external_indexing=[order[:60]])
    with pytest.raises(ValueError, match="overlapping indexing between train and valid"):
        DataSplitter(manager, external_indexing=[order[:60], order[50:]])
    ordered = DataSplitter(manager, train_size=0.5, validation_size=0.3, shuffle_set_split=False)
    np.testing.assert_array_equal(ordered.val_idx, np.arange(30))
    np.testing.assert_array_equal(ordered.train_idx, np.arange(30, 80))


def test_totalvi_on_mudata_end_to_end():
    mudata = pytest.importorskip("mudata")
    from pyrovi.model import TOTALVI

    rna = synthetic_iid(batch_size=30, n_genes=20, seed=5)
    prot = synthetic_iid(batch_size=30, n_genes=6, seed=6)
    mdata = mudata.MuData({"rna": rna, "protein": prot})
    TOTALVI.setup_mudata(
        mdata, batch_key="batch", modalities={"rna_layer": "rna", "protein_layer": "protein", "batch_key": "rna"}
    )
    model = TOTALVI(mdata, n_latent=2, n_hidden=16)
    assert model.adata_manager.data_registry.batch == {"mod_key": "rna", "attr_name": "obs", "attr_key": "batch"}
    assert model.summary_stats["n_proteins"] == 6 and model.summary_stats["n_vars"] == 20
    model.train(max_epochs=1, train_size=0.5)
    assert model.get_latent_representation(mdata).shape == (60, 2)
    with pytest.raises(ValueError, match="modalit"):
        TOTALVI.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "adt"})
    with pytest.raises(TypeError):
        TOTALVI.setup_mudata(rna)
