"""The training plan's classification metrics for modules that define ``label_log_probs``."""

import math

import numpy as np
import pytest
import torch

import pyrovi
from pyrovi.dataloaders import SemiSupervisedDataSplitter
from pyrovi.model import SCVI
from pyrovi.module import VAE
from pyrovi.train import Trainer, TrainingPlan

UNLABELED = 2
#: the fixed classifier's q(y | x) for every cell: label 0 is always the most probable
PROBS = (0.5, 0.3, 0.2)


class FixedClassifierVAE(VAE):
    """SCVI's module plus a classifier that gives every cell the probabilities ``PROBS``."""

    unlabeled_code = UNLABELED

    def label_log_probs(self, x, labels=None, **kwargs):
        log_probs = torch.log(torch.tensor(PROBS, device=x.device)).expand(x.shape[0], len(PROBS))
        labels = labels.reshape(-1).long()
        return log_probs, labels, labels != self.unlabeled_code


class Classifying(SCVI):
    _module_cls = FixedClassifierVAE
    _data_splitter_cls = SemiSupervisedDataSplitter


class FewLabelsVAE(FixedClassifierVAE):
    unlabeled_code = 1


class FewLabels(Classifying):
    _module_cls = FewLabelsVAE


@pytest.fixture(autouse=True)
def _quiet():
    progress, pyrovi.settings.progress_bar = pyrovi.settings.progress_bar, False
    seed = pyrovi.settings.seed
    pyrovi.settings.seed = 0
    yield
    pyrovi.settings.progress_bar, pyrovi.settings.seed = progress, seed


def _data(model_cls=Classifying, n_labelled=None):
    adata = pyrovi.data.synthetic_iid(batch_size=100, n_genes=20, n_labels=3, seed=0)
    if n_labelled is not None:  # the first cells labelled label_0, the others label_2 (code 1): unlabelled
        adata.obs["labels"] = np.where(np.arange(adata.n_obs) < n_labelled, "label_0", "label_2")
    model_cls.setup_anndata(adata, labels_key="labels")
    codes = np.asarray(model_cls(adata, n_hidden=8, n_latent=2).adata_manager.get_array("labels")).reshape(-1)
    return adata, codes


def test_validation_accuracy_and_classification_loss_are_the_known_values():
    adata, codes = _data()
    model = Classifying(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=2, train_size=0.7, batch_size=32,
                datasplitter_kwargs={"labels": codes, "unlabeled_code": UNLABELED})
    val = codes[model.validation_indices]
    labelled = val[val != UNLABELED]
    assert labelled.size > 10 and set(np.unique(labelled)) == {0, 1}
    accuracy = model.history["validation_accuracy"]["validation_accuracy"]
    loss = model.history["validation_classification_loss"]["validation_classification_loss"]
    assert accuracy.index.tolist() == [0, 1]
    np.testing.assert_allclose(accuracy, np.mean(labelled == 0), rtol=1e-6)  # the classifier always says 0
    np.testing.assert_allclose(loss, np.mean(-np.log(np.asarray(PROBS)[labelled])), rtol=1e-5)
    # every cell has confidence 0.5, in one bin: the calibration error is |0.5 - accuracy|; micro F1 = accuracy
    np.testing.assert_allclose(model.history["validation_calibration_error"].iloc[:, 0], abs(0.5 - np.mean(labelled == 0)),
                               rtol=1e-5)
    np.testing.assert_allclose(model.history["validation_f1_score"].iloc[:, 0], accuracy, rtol=1e-6)
    assert "validation_accuracy" not in model.history.get("elbo_validation", {})  # a separate key


def test_modules_without_label_log_probs_log_no_classification_metric():
    adata, _ = _data(SCVI)
    model = SCVI(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=1, train_size=0.7)
    assert "elbo_validation" in model.history
    assert not {"validation_accuracy", "validation_classification_loss"} & set(model.history)


def test_no_labelled_validation_cell_logs_no_accuracy():
    adata, codes = _data(FewLabels, n_labelled=3)
    assert codes[:4].tolist() == [0, 0, 0, 1]
    model = FewLabels(adata, n_hidden=8, n_latent=2)
    with pytest.warns(UserWarning, match="no labelled one"):
        model.train(max_epochs=1, train_size=0.9, datasplitter_kwargs={"labels": codes, "unlabeled_code": 1})
    assert "elbo_validation" in model.history and "validation_accuracy" not in model.history


def test_early_stopping_on_validation_accuracy_maximises_it():
    trainer = Trainer(max_epochs=3, early_stopping=True, early_stopping_monitor="validation_accuracy")
    assert trainer.early_stopping_callback.mode == "max"
    assert Trainer(max_epochs=3, early_stopping=True).early_stopping_callback.mode == "min"
    explicit = Trainer(max_epochs=3, early_stopping=True, early_stopping_monitor="validation_accuracy",
                       early_stopping_mode="min")
    assert explicit.early_stopping_callback.mode == "min"  # an explicit mode is kept
    adata, codes = _data()
    model = Classifying(adata, n_hidden=8, n_latent=2)
    # a constant accuracy never improves: training stops after the first epoch plus the patience
    model.train(max_epochs=6, early_stopping=True, early_stopping_monitor="validation_accuracy",
                early_stopping_patience=1, datasplitter_kwargs={"labels": codes, "unlabeled_code": UNLABELED})
    assert len(model.history["validation_accuracy"]) == 2


def test_the_plateau_scheduler_maximises_accuracy():
    plan = TrainingPlan(FixedClassifierVAE(n_input=5), reduce_lr_on_plateau=True,
                        lr_scheduler_metric="validation_accuracy")
    assert plan.configure_optimizers()["lr_scheduler"]["scheduler"].mode == "max"
    assert math.isclose(plan.lr, 1e-3)
