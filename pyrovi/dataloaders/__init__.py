"""Minibatch loading of registered AnnData.

:class:`AnnDataLoader` turns the arrays an ``AnnDataManager`` registered into minibatches (dicts of torch
tensors keyed by registry key, plus the cells' ``"indices"``); :class:`DataSplitter` splits the cells into
training, validation and test sets and serves a loader for each to Lightning;
:class:`SemiSupervisedDataSplitter` splits labelled and unlabelled cells separately, labelled ones by label.
"""

from ._ann_dataloader import AnnDataLoader
from ._data_splitting import DataSplitter, SplitIndexWarning
from ._semisupervised_splitter import SemiSupervisedDataSplitter

__all__ = ["AnnDataLoader", "DataSplitter", "SemiSupervisedDataSplitter", "SplitIndexWarning"]
