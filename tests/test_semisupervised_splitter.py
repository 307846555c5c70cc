"""SemiSupervisedDataSplitter: labelled cells stratified by label, unlabelled cells split alike, seeded."""

import warnings

import numpy as np
import pytest

import pyrovi
from pyrovi.data import AnnDataManager, LabelsWithUnlabeledObsField, LayerField
from pyrovi.dataloaders import DataSplitter, SemiSupervisedDataSplitter
from pyrovi.dataloaders._semisupervised_splitter import labels_from_manager


def _manager(n_cells: int = 400, seed: int = 0) -> AnnDataManager:
    adata = pyrovi.data.synthetic_iid(batch_size=n_cells // 2, n_genes=10, seed=seed)
    fields = [LayerField("X", None)]
    manager = AnnDataManager(fields=fields, setup_method_args={"model_name": "M", "setup_args": {}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # cells without counts: irrelevant to splitting
        manager.register_fields(adata)
    return manager


def _labelled_manager(labels: list[str], unlabeled: str = "Unknown") -> AnnDataManager:
    adata = pyrovi.data.synthetic_iid(batch_size=len(labels) // 2, n_genes=10, seed=1)
    adata.obs["cell_type"] = labels
    fields = [LayerField("X", None), LabelsWithUnlabeledObsField("labels", "cell_type", unlabeled)]
    manager = AnnDataManager(fields=fields, setup_method_args={"model_name": "M", "setup_args": {}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        manager.register_fields(adata)
    return manager


def _skewed_codes(n_cells: int = 400, seed: int = 0) -> np.ndarray:
    """Five labels of shares 0.4, 0.3, 0.15, 0.1, 0.05 among the labelled cells; a quarter unlabelled (code 5)."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(5, size=n_cells, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    codes[rng.random(n_cells) < 0.25] = 5
    return codes


def test_every_cell_is_in_exactly_one_set_and_labelled_and_unlabelled_keep_the_fractions():
    codes = _skewed_codes()
    splitter = SemiSupervisedDataSplitter(_manager(), train_size=0.6, validation_size=0.3, labels=codes,
                                          unlabeled_code=5, seed=0)
    joined = np.concatenate([splitter.train_idx, splitter.val_idx, splitter.test_idx])
    np.testing.assert_array_equal(np.sort(joined), np.arange(400))
    for kind in (codes != 5, codes == 5):
        n = int(kind.sum())
        n_train = int(np.ceil(round(0.6 * n, 8)))
        n_val = int(np.floor(round(0.3 * n, 8)))
        # the sizes of DataSplitter's split of each kind (a label never needs rescuing here)
        assert kind[splitter.train_idx].sum() == n_train
        assert kind[splitter.val_idx].sum() == n_val
        assert kind[splitter.test_idx].sum() == n - n_train - n_val
    assert splitter.train_idx.dtype == np.int64


def test_each_label_is_split_by_the_fractions_within_one_cell():
    codes = _skewed_codes()
    splitter = SemiSupervisedDataSplitter(_manager(), train_size=0.6, validation_size=0.3, labels=codes,
                                          unlabeled_code=5, seed=3)
    for label in range(5):
        n = int((codes == label).sum())
        for idx, share in ((splitter.train_idx, 0.6), (splitter.val_idx, 0.3), (splitter.test_idx, 0.1)):
            assert abs((codes[idx] == label).sum() - share * n) <= 1.0, (label, share)
    # label proportions among the labelled cells of validation and training agree (tolerance: 1 cell per label)
    labelled_val = codes[splitter.val_idx][codes[splitter.val_idx] != 5]
    labelled_train = codes[splitter.train_idx][codes[splitter.train_idx] != 5]
    val_share = np.bincount(labelled_val, minlength=5) / labelled_val.size
    train_share = np.bincount(labelled_train, minlength=5) / labelled_train.size
    np.testing.assert_allclose(val_share, train_share, atol=1.0 / labelled_val.size + 1.0 / labelled_train.size)


def test_an_unstratified_split_would_be_worse_than_the_stratified_one():
    """The stratified error stays under a cell per label, over seeds; a random split's does not."""
    codes = _skewed_codes(seed=1)
    manager = _manager()
    worst = 0.0
    for seed in range(5):
        splitter = SemiSupervisedDataSplitter(manager, train_size=0.8, labels=codes, unlabeled_code=5, seed=seed)
        for label in range(5):
            worst = max(worst, abs((codes[splitter.val_idx] == label).sum() - 0.2 * (codes == label).sum()))
    assert worst <= 1.0
    plain = DataSplitter(manager, train_size=0.8, seed=0)
    errors = [abs((codes[plain.val_idx] == label).sum() - 0.2 * (codes == label).sum()) for label in range(5)]
    assert max(errors) > 1.0  # (seed 0: a random split misses some label's share by more than a cell)


def test_the_split_is_reproducible_with_the_seed_and_settings_seed():
    codes = _skewed_codes()
    manager = _manager()
    first = SemiSupervisedDataSplitter(manager, labels=codes, unlabeled_code=5, seed=7)
    again = SemiSupervisedDataSplitter(manager, labels=codes, unlabeled_code=5, seed=7)
    other = SemiSupervisedDataSplitter(manager, labels=codes, unlabeled_code=5, seed=8)
    np.testing.assert_array_equal(first.train_idx, again.train_idx)
    np.testing.assert_array_equal(first.val_idx, again.val_idx)
    assert not np.array_equal(first.val_idx, other.val_idx)
    seed = pyrovi.settings.seed
    try:
        pyrovi.settings.seed = 7
        from_settings = SemiSupervisedDataSplitter(manager, labels=codes, unlabeled_code=5)
    finally:
        pyrovi.settings.seed = seed
    np.testing.assert_array_equal(first.val_idx, from_settings.val_idx)


def test_unshuffled_split_takes_each_label_in_anndata_order():
    codes = np.repeat([0, 1], 50)
    splitter = SemiSupervisedDataSplitter(_manager(100), train_size=0.8, shuffle_set_split=False, labels=codes)
    np.testing.assert_array_equal(np.sort(splitter.val_idx), np.r_[0:10, 50:60])  # the first cells of each label


def test_without_labelled_cells_the_split_is_datasplitters():
    manager = _manager()
    codes = np.full(400, 3)
    for labels, unlabeled in ((codes, 3), (None, None)):
        splitter = SemiSupervisedDataSplitter(manager, train_size=0.7, validation_size=0.2, labels=labels,
                                              unlabeled_code=unlabeled, seed=2)
        plain = DataSplitter(manager, train_size=0.7, validation_size=0.2, seed=2)
        for a, b in ((splitter.train_idx, plain.train_idx), (splitter.val_idx, plain.val_idx),
                     (splitter.test_idx, plain.test_idx)):
            np.testing.assert_array_equal(a, b)


def test_a_label_with_one_cell_goes_to_training():
    codes = np.zeros(100, dtype=np.int64)
    codes[37] = 1  # a label of one cell
    codes[60:62] = 2  # and one of two cells
    for seed in range(10):
        splitter = SemiSupervisedDataSplitter(_manager(100), train_size=0.3, validation_size=0.6, labels=codes,
                                              seed=seed)
        assert 37 in splitter.train_idx
        assert np.isin([60, 61], splitter.train_idx).any()
        joined = np.concatenate([splitter.train_idx, splitter.val_idx, splitter.test_idx])
        np.testing.assert_array_equal(np.sort(joined), np.arange(100))


def test_labels_are_read_from_a_labels_field_with_an_unlabeled_category():
    labels = ["T"] * 40 + ["B"] * 20 + ["Unknown"] * 40
    manager = _labelled_manager(labels)
    codes, unlabeled = labels_from_manager(manager)
    assert unlabeled == 2 and codes.tolist() == [1] * 40 + [0] * 20 + [2] * 40  # categories ['B', 'T', 'Unknown']
    splitter = SemiSupervisedDataSplitter(manager, train_size=0.5, validation_size=0.25, seed=0)
    assert splitter.unlabeled_code == 2
    np.testing.assert_array_equal(splitter.labelled, np.arange(100) < 60)
    val = splitter.val_idx
    assert ((val < 40).sum(), ((val >= 40) & (val < 60)).sum(), (val >= 60).sum()) == (10, 5, 10)
    assert labels_from_manager(_manager()) == (None, None)  # no labels field


def test_a_validation_set_without_a_labelled_cell_warns():
    codes = np.full(100, 1)
    codes[:3] = 0  # three labelled cells, all needed for training at train_size=0.9
    with pytest.warns(UserWarning, match="no labelled one"):
        SemiSupervisedDataSplitter(_manager(100), labels=codes, unlabeled_code=1, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        SemiSupervisedDataSplitter(_manager(100), train_size=1.0, labels=codes, unlabeled_code=1)  # no validation set


def test_n_samples_per_label_is_kept_and_gives_the_classification_weights():
    codes = np.repeat([0, 1, 2], [200, 100, 100])
    codes[300:] = 2  # label 2 is the unlabelled category
    manager = _manager()
    splitter = SemiSupervisedDataSplitter(manager, labels=codes, unlabeled_code=2, n_samples_per_label=100, seed=0)
    assert splitter.n_samples_per_label == 100
    # 180 and 90 labelled training cells: label 0 weighs 100 cells in all, label 1 (fewer) one per cell
    np.testing.assert_allclose(splitter.classification_weights(3), [100 / 180, 1.0, 0.0])
    assert SemiSupervisedDataSplitter(manager, labels=codes, unlabeled_code=2).classification_weights(3) is None
    with pytest.raises(ValueError, match="n_labels=1"):
        splitter.classification_weights(1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_samples_per_label": 0}, ValueError, "n_samples_per_label"),
        ({"n_samples_per_label": 2.5}, ValueError, "n_samples_per_label"),
        ({"labels": np.zeros(7, dtype=int)}, ValueError, r"shape \(100,\)"),
        ({"labels": np.zeros(100)}, ValueError, "integer label code"),
        ({"labels": np.zeros(100, dtype=int), "unlabeled_code": "Unknown"}, ValueError, "unlabeled_code"),
        ({"unlabeled_code": 1}, ValueError, "needs labels"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        SemiSupervisedDataSplitter(_manager(100), **kwargs)


def test_explicit_sets_are_kept_and_the_loaders_serve_them():
    codes = np.repeat([0, 1], 50)
    splitter = SemiSupervisedDataSplitter(_manager(100), labels=codes, train_idx=np.arange(80), val_idx=np.arange(80, 100),
                                          batch_size=32)
    np.testing.assert_array_equal(splitter.train_idx, np.arange(80))
    served = np.concatenate([batch["indices"].numpy().reshape(-1) for batch in splitter.val_dataloader()])
    np.testing.assert_array_equal(np.sort(served), np.arange(80, 100))
