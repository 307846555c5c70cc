"""Split labelled and unlabelled cells separately, stratifying the labelled ones by label."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from pyrovi._checks import check_int
from pyrovi._constants import REGISTRY_KEYS

from ._ann_dataloader import manager_n_cells
from ._data_splitting import DataSplitter, split_sizes


def labels_from_manager(adata_manager: Any) -> tuple[np.ndarray | None, int | None]:
    """The label code of every cell and the code of the unlabelled category, read from a registered manager.

    The labels field (registry key ``"labels"``) is read from ``adata_manager.get_state`` (``categories`` and,
    for a :class:`~pyrovi.data.LabelsWithUnlabeledObsField`, ``unlabeled_category``) and
    ``adata_manager.get_array``. Without a labels field the codes are ``None``; without an unlabelled category
    (or when it is not among the categories) its code is ``None``: every cell counts as labelled.

    Examples
    --------
    >>> codes, unlabeled = labels_from_manager(model.adata_manager)  # SCVI registered plain labels
    >>> codes.shape, unlabeled
    ((200,), None)
    """
    try:
        state = adata_manager.get_state(REGISTRY_KEYS.LABELS_KEY)
    except (AttributeError, KeyError):
        return None, None
    if not state or "categories" not in state:
        return None, None
    codes = adata_manager.get_array(REGISTRY_KEYS.LABELS_KEY)
    if codes is None:
        return None, None
    codes = np.asarray(codes).reshape(-1).astype(np.int64)
    unlabeled = state.get("unlabeled_category")
    categories = list(state["categories"])
    code = categories.index(unlabeled) if unlabeled is not None and unlabeled in categories else None
    return codes, code


def _check_labels(labels: Any, unlabeled_code: Any, n_cells: int) -> tuple[np.ndarray, int | None]:
    codes = np.asarray(labels)
    if codes.ndim == 2 and codes.shape[1] == 1:  # scvi-tools' (n_cells, 1) column of codes
        codes = codes[:, 0]
    if codes.ndim != 1 or codes.shape[0] != n_cells or not (codes.size == 0 or np.issubdtype(codes.dtype, np.integer)):
        raise ValueError(
            f"labels must be the integer label code of every cell, an array of shape ({n_cells},); got "
            f"{'dtype ' + str(codes.dtype) + ', ' if codes.size else ''}shape {codes.shape}. Pass the codes the "
            "labels field registered, e.g. adata_manager.get_array('labels')."
        )
    check_int("unlabeled_code", unlabeled_code, minimum=0, allow_none=True)
    return codes.astype(np.int64), None if unlabeled_code is None else int(unlabeled_code)


def _rank_within_label(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's position among the cells of its label (in the given order), and its label's size."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    first = np.searchsorted(sorted_codes, sorted_codes, side="left")
    rank, size = np.empty_like(codes), np.empty_like(codes)
    rank[order] = np.arange(codes.size) - first
    size[order] = np.searchsorted(sorted_codes, sorted_codes, side="right") - first
    return rank, size


def _stratified_split(
    cells: np.ndarray, codes: np.ndarray, n_train: int, n_val: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test cells with every label in the proportions of the split.

    Each label's cells (shuffled with ``rng``, in AnnData order without it) are placed at the evenly spaced
    positions ``(j + 0.5) / n_label`` of [0, 1]; all cells, sorted by position, are cut into validation,
    training and test sets of the given sizes. Each label then lands in each set within one cell of its
    share, and the set sizes are those of an unstratified split. A label left without a training cell (one
    with a single cell, or very small training fractions) moves its first cell into the training set.
    """
    if rng is not None:
        shuffle = rng.permutation(cells.size)
        cells, codes = cells[shuffle], codes[shuffle]
    rank, size = _rank_within_label(codes)
    # ties (labels of equal sizes) are broken by the order above: at random when shuffled
    ordered = np.lexsort((np.arange(cells.size), (rank + 0.5) / size))
    val, train, test = ordered[:n_val], ordered[n_val : n_val + n_train], ordered[n_val + n_train :]
    missing = np.setdiff1d(np.unique(codes), codes[train])
    if missing.size:
        rescued = np.flatnonzero(np.isin(codes, missing) & (rank == 0))
        val, test = np.setdiff1d(val, rescued, True), np.setdiff1d(test, rescued, True)
        train = np.concatenate([train, rescued])
    return cells[train], cells[val], cells[test]


class SemiSupervisedDataSplitter(DataSplitter):
    """A :class:`DataSplitter` that splits labelled and unlabelled cells separately, labelled cells by label.

    The labelled cells and the unlabelled cells (those of the unlabelled category, see
    :class:`~pyrovi.data.LabelsWithUnlabeledObsField`) are each split with ``train_size`` and
    ``validation_size`` as :class:`DataSplitter` splits all cells, so that each set holds both kinds in the
    proportions of the data (scvi-tools' split). The labelled cells are moreover stratified by label: each
    label falls into each set within one cell of its share, the set sizes staying those of the unstratified
    split; a label left without a training cell (a label with a single cell) has one moved into the training
    set. With ``shuffle_set_split=False``, the cells of each label are taken in their AnnData order.

    Without labelled cells the split is the unsupervised one of :class:`DataSplitter` (the same cells for the
    same seed); without a labels field or an unlabelled category, every cell counts as labelled. Explicit
    sets (``external_indexing``, ``train_idx``...) are taken as given.

    Parameters
    ----------
    adata_manager
        A registered manager; the labels are read from its ``"labels"`` field unless ``labels`` is given.
    train_size, validation_size, shuffle_set_split, pin_memory, external_indexing
        As for :class:`DataSplitter`, applied to the labelled and to the unlabelled cells separately.
    n_samples_per_label
        scvi-tools' number of labelled cells of each label per epoch in the classification loss, >= 1. pyrovi
        does not subsample: the splitter keeps it (attribute ``n_samples_per_label``) for the model, which
        weights its classification term by :meth:`classification_weights`. ``None``: every labelled training
        cell has weight one.
    labels
        The label code of every cell (integers, shape ``(n_cells,)``); read from ``adata_manager`` when None.
    unlabeled_code
        The code that marks unlabelled cells in ``labels`` (None: every cell is labelled); read from
        ``adata_manager`` together with the codes when ``labels`` is None.
    **kwargs
        As for :class:`DataSplitter` (``batch_size``, ``seed``, ``load_sparse_tensor``, loader options...).

    Attributes
    ----------
    train_idx, val_idx, test_idx
        Row positions (int64) of each set: labelled cells first, then unlabelled ones.
    labels, unlabeled_code
        The codes the split used (``labels`` None without a labels field).
    labelled
        Which cells are labelled (boolean, one per cell).
    n_samples_per_label
        As given.

    Warns
    -----
    UserWarning
        A non-empty validation set without a labelled cell while labelled cells exist: validation accuracy
        cannot be measured.

    Examples
    --------
    >>> splitter = SemiSupervisedDataSplitter(model.adata_manager, train_size=0.8, seed=0)
    >>> splitter.train_idx.size, splitter.val_idx.size
    (160, 40)
    >>> codes = np.where(np.arange(200) < 50, 2, np.arange(200) % 2)  # code 2: unlabelled
    >>> splitter = SemiSupervisedDataSplitter(model.adata_manager, labels=codes, unlabeled_code=2,
    ...                                       n_samples_per_label=20)
    >>> int(splitter.labelled[splitter.val_idx].sum()), int((~splitter.labelled)[splitter.val_idx].sum())
    (15, 5)
    """

    def __init__(
        self,
        adata_manager: Any,
        train_size: float | None = 0.9,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        n_samples_per_label: int | None = None,
        pin_memory: bool = False,
        external_indexing: list[np.ndarray | None] | None = None,
        *,
        labels: np.ndarray | None = None,
        unlabeled_code: int | None = None,
        **kwargs: Any,
    ):
        check_int("n_samples_per_label", n_samples_per_label, minimum=1, allow_none=True)
        n_cells = manager_n_cells(adata_manager)
        if labels is None:
            if unlabeled_code is not None:
                raise ValueError("unlabeled_code needs labels too (the codes it refers to); pass both, or neither.")
            labels, unlabeled_code = labels_from_manager(adata_manager)
        if labels is not None:
            labels, unlabeled_code = _check_labels(labels, unlabeled_code, n_cells)
        self.labels, self.unlabeled_code = labels, unlabeled_code
        self.n_samples_per_label = None if n_samples_per_label is None else int(n_samples_per_label)
        if labels is None or unlabeled_code is None:
            self.labelled = np.ones(n_cells, dtype=bool)
        else:
            self.labelled = labels != unlabeled_code
        super().__init__(
            adata_manager,
            train_size=train_size,
            validation_size=validation_size,
            shuffle_set_split=shuffle_set_split,
            pin_memory=pin_memory,
            external_indexing=external_indexing,
            **kwargs,
        )
        if self.n_val and self.labelled.any() and not self.labelled[self.val_idx].any():
            warnings.warn(
                f"The validation set holds {self.n_val} cells but no labelled one ({int(self.labelled.sum())} cells "
                "are labelled): validation accuracy cannot be measured. Give a larger validation_size, or label "
                "more cells.",
                UserWarning,
                stacklevel=2,
            )

    def _split(self, n_cells: int) -> None:
        if self.labels is None or not self.labelled.any():
            super()._split(n_cells)  # no label to stratify by: the unsupervised split
            return
        parts = []
        labelled = np.flatnonzero(self.labelled)
        n_train, n_val = split_sizes(labelled.size, self.train_size, self.validation_size)
        rng = np.random.default_rng(self.seed) if self.shuffle_set_split else None
        parts.append(_stratified_split(labelled, self.labels[labelled], n_train, n_val, rng))
        unlabelled = np.flatnonzero(~self.labelled)
        if unlabelled.size:
            n_train, n_val = split_sizes(unlabelled.size, self.train_size, self.validation_size)
            if self.shuffle_set_split:
                unlabelled = unlabelled[np.random.default_rng(self.seed).permutation(unlabelled.size)]
            parts.append((unlabelled[n_val : n_val + n_train], unlabelled[:n_val], unlabelled[n_val + n_train :]))
        self.train_idx, self.val_idx, self.test_idx = (
            np.concatenate([part[i] for part in parts]).astype(np.int64) for i in range(3)
        )

    def classification_weights(self, n_labels: int) -> np.ndarray | None:
        """Weight of one labelled training cell of each label code in the classification term.

        With ``n_samples_per_label = m``, the ``n_k`` labelled training cells of label ``k`` together weigh
        ``min(m, n_k)`` cells, as many as scvi-tools samples of that label per epoch: each has weight
        ``min(m, n_k) / n_k`` (labels without a labelled training cell: 0). ``None`` when
        ``n_samples_per_label`` is None (every cell weight one).

        Parameters
        ----------
        n_labels
            Number of label codes (the weights' length), at least the largest code plus one.

        Examples
        --------
        >>> codes = np.repeat([0, 1], [150, 50])
        >>> splitter = SemiSupervisedDataSplitter(model.adata_manager, labels=codes, n_samples_per_label=60)
        >>> splitter.classification_weights(2).round(3).tolist()  # 135 and 45 training cells
        [0.444, 1.0]
        """
        check_int("n_labels", n_labels, minimum=1)
        if self.n_samples_per_label is None:
            return None
        train = self.train_idx[self.labelled[self.train_idx]]
        codes = np.zeros(0, dtype=np.int64) if self.labels is None else self.labels[train]
        if codes.size and codes.max() >= n_labels:
            raise ValueError(f"n_labels={n_labels} but the labels hold code {int(codes.max())}; pass at least "
                             f"{int(codes.max()) + 1}.")  # fmt: skip
        counts = np.bincount(codes, minlength=n_labels).astype(np.float64)
        weights = np.minimum(self.n_samples_per_label, counts) / np.maximum(counts, 1.0)
        return weights
