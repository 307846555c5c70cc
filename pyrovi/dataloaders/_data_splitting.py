"""Split the cells of a registered AnnData into training, validation and test sets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule

from pyrovi._checks import check_bool, check_int
from pyrovi._settings import settings

from ._ann_dataloader import AnnDataLoader, manager_n_cells
from ._minibatch_dataset import device_nbytes

#: Smallest training minibatch that is kept. BatchNorm in training mode needs more than one value per
#: channel to estimate a variance (one cell raises an error) and two give a very noisy estimate.
_MIN_LAST_TRAIN_BATCH = 3


def _round_count(value: float, how: str) -> int:
    # Rounding first keeps float noise from moving a count: 0.7 * 10 is 7.000000000000001, whose ceil is 8.
    value = round(value, 8)
    return math.ceil(value) if how == "ceil" else math.floor(value)


def _validate_sizes(train_size: float, validation_size: float | None) -> None:
    # The messages are scvi-tools' own, word for word: code written for it compares them.
    if not 0.0 < train_size <= 1.0:
        raise ValueError("Invalid train_size. Must be: 0 < train_size <= 1")
    if validation_size is None:
        return
    if not 0.0 <= validation_size < 1.0:
        raise ValueError("Invalid validation_size. Must be 0 <= validation_size < 1")
    if train_size + validation_size > 1.0 + 1e-8:
        raise ValueError("train_size + validation_size must be between 0 and 1")


class SplitIndexWarning(ValueError, UserWarning):
    """Explicit split indices (``external_indexing``) that repeat or leave out cells.

    Both a :class:`ValueError` and a :class:`UserWarning`: scvi-tools raises a bare ``Warning`` here, so
    code written for it catches ``Warning``; it is raised, never merely warned.

    Examples
    --------
    >>> issubclass(SplitIndexWarning, ValueError) and issubclass(SplitIndexWarning, Warning)
    True
    """


def _check_external_indexing(external_indexing: Any, n_cells: int) -> list[np.ndarray]:
    """``[train, val, test]`` row positions from ``external_indexing`` (missing sets empty), validated."""
    if not isinstance(external_indexing, list):
        raise ValueError("External indexing is not of list type")
    if len(external_indexing) > 3:
        raise ValueError(
            f"external_indexing holds {len(external_indexing)} arrays; give at most 3: [train, validation, test]."
        )
    parts = list(external_indexing) + [None] * (3 - len(external_indexing))
    parts = [np.array([], dtype=np.int64) if part is None else part for part in parts]
    if not all(isinstance(part, np.ndarray) for part in parts):
        raise ValueError("One of the given external indexing arrays is not a np.array")
    for name, part in zip(("train", "valid", "test"), parts):
        if np.unique(part).size < part.size:
            raise SplitIndexWarning(f"There are duplicate indexing in {name} set")
    unique = [set(part.tolist()) for part in parts]
    if sum(len(part) for part in unique) < n_cells:
        raise SplitIndexWarning("There are missing indices please fix or remove those lines")
    for (a, b), (name_a, name_b) in zip(((0, 1), (0, 2), (2, 1)), (("train", "valid"), ("train", "test"), ("test", "valid"))):
        if unique[a] & unique[b]:
            raise ValueError(f"There are overlapping indexing between {name_a} and {name_b} sets")
    return [_check_explicit(name, part, n_cells) for name, part in zip(("train_idx", "val_idx", "test_idx"), parts)]


def split_sizes(n_cells: int, train_size: float, validation_size: float | None) -> tuple[int, int]:
    """Numbers of training and validation cells; the remaining cells are the test set.

    Examples
    --------
    >>> split_sizes(10, 0.7, None), split_sizes(10, 0.5, 0.25)
    ((7, 3), (5, 2))
    """
    n_train = _round_count(train_size * n_cells, "ceil")
    if validation_size is None:
        return n_train, n_cells - n_train
    return n_train, min(_round_count(validation_size * n_cells, "floor"), n_cells - n_train)


def _check_explicit(name: str, idx: Sequence[int] | np.ndarray | None, n_cells: int) -> np.ndarray:
    idx = np.asarray([] if idx is None else idx)
    if idx.size == 0:
        return np.empty(0, dtype=np.int64)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must be a one-dimensional array of integer row positions, got {idx!r}.")
    if idx.min() < 0 or idx.max() >= n_cells:
        raise IndexError(f"{name} must lie in [0, {n_cells}), got values from {idx.min()} to {idx.max()}.")
    return idx.astype(np.int64)


class DataSplitter(LightningDataModule):
    """Training, validation and test loaders over one registered AnnData.

    The split is computed at construction, so ``train_idx``, ``val_idx`` and ``test_idx`` can be read (and
    saved with a model) right away; :meth:`setup`, which Lightning calls, keeps it. With ``n`` cells,
    ``ceil(train_size * n)`` cells train; the validation set holds the rest, or ``floor(validation_size * n)``
    cells when ``validation_size`` is given, in which case the remaining cells form the test set. Cells are
    assigned from a permutation seeded with ``seed`` when ``shuffle_set_split``; otherwise in their AnnData
    order, validation cells first, then training, then test cells (scvi-tools' order).

    Under a distributed strategy (``trainer.world_size > 1``) every loader serves only this process's
    share of its cells (see ``num_replicas`` in :class:`~pyrovi.dataloaders.AnnDataLoader`); pyrovi's
    :class:`~pyrovi.train.Trainer` therefore turns off Lightning's own sampler replacement.

    Parameters
    ----------
    adata_manager
        Any object with ``get_arrays()`` and ``summary_stats["n_cells"]``, e.g. a model's ``AnnDataManager``.
    train_size
        Fraction of cells in the training set, in (0, 1]; ``None`` means 0.9.
    validation_size
        Fraction of cells in the validation set; all cells not used for training when ``None``.
    shuffle_set_split
        Assign cells to sets at random (seeded) rather than in order.
    load_sparse_tensor
        Serve sparse counts as torch sparse CSR tensors, densified once moved to the device (less host to
        device traffic for very sparse data).
    pin_memory
        Copy minibatches into pinned memory (faster copies to a GPU).
    external_indexing
        ``[train, validation, test]`` row positions (numpy arrays; the last ones may be omitted or None),
        as scvi-tools takes them. Together they must cover every cell, without repeats or overlaps;
        ``train_size``, ``validation_size`` and ``shuffle_set_split`` are then ignored.
    batch_size
        Cells per minibatch; ``pyrovi.settings.batch_size`` when ``None``.
    seed
        Seed of the split and of the training loader's shuffling; ``pyrovi.settings.seed`` when ``None``.
    train_idx, val_idx, test_idx
        Explicit row positions of each set, keyword only, e.g. the split a saved model was trained on. When
        ``train_idx`` is given, ``train_size``, ``validation_size`` and ``shuffle_set_split`` are ignored, an
        omitted ``val_idx`` or ``test_idx`` means an empty set, and the sets must be disjoint (they need not
        cover every cell).
    **loader_kwargs
        Passed to every :class:`~pyrovi.dataloaders.AnnDataLoader`, e.g. ``data_and_attributes``,
        ``num_workers``; ``drop_last=True`` applies to the training loader only.
    load_data_on_device
        Put the registered arrays on the training device once and gather minibatches there (see
        ``device`` in :class:`~pyrovi.dataloaders.AnnDataLoader`). ``None``: do so on a GPU when the
        arrays take less than a quarter of its free memory; ``False`` (default) never.

    Attributes
    ----------
    train_idx, val_idx, test_idx
        Row positions (int64) of the cells in each set.
    n_train, n_val, n_test
        Sizes of the sets.

    Examples
    --------
    >>> splitter = DataSplitter(model.adata_manager, train_size=0.8, validation_size=0.1, seed=0)
    >>> splitter.n_train, splitter.n_val, len(splitter.test_idx)
    (160, 20, 20)
    >>> trainer = pyrovi.train.Trainer(max_epochs=1, enable_progress_bar=False)
    >>> plan = pyrovi.train.TrainingPlan(model.module.train())  # a loaded module is in eval mode
    >>> trainer.fit(plan, datamodule=splitter)
    >>> same = DataSplitter(model.adata_manager, train_idx=splitter.train_idx, val_idx=splitter.val_idx)
    >>> same.n_train, same.n_val, same.n_test
    (160, 20, 0)
    """

    def __init__(
        self,
        adata_manager: Any,
        train_size: float | None = 0.9,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        load_sparse_tensor: bool = False,
        pin_memory: bool = False,
        external_indexing: list[np.ndarray | None] | None = None,
        *,
        batch_size: int | None = None,
        seed: int | None = None,
        train_idx: Sequence[int] | np.ndarray | None = None,
        val_idx: Sequence[int] | np.ndarray | None = None,
        test_idx: Sequence[int] | np.ndarray | None = None,
        load_data_on_device: bool | None = False,
        **loader_kwargs: Any,
    ):
        super().__init__()
        if "shuffle" in loader_kwargs:
            raise TypeError(
                "DataSplitter chooses shuffling itself (training shuffled, validation and test in order); "
                "remove the 'shuffle' argument."
            )
        for name, size in (("train_size", train_size), ("validation_size", validation_size)):
            if size is not None and (isinstance(size, bool) or not isinstance(size, Real)):
                raise TypeError(f"{name} must be a number (a share of the cells) or None, got {size!r:.80}.")
        check_int("batch_size", batch_size, allow_none=True)
        check_int("seed", seed, minimum=0, allow_none=True)
        for name, flag in (("shuffle_set_split", shuffle_set_split), ("load_sparse_tensor", load_sparse_tensor),
                           ("pin_memory", pin_memory)):
            check_bool(name, flag)
        self.adata_manager = adata_manager
        self.train_size = 0.9 if train_size is None else float(train_size)
        self.load_sparse_tensor = bool(load_sparse_tensor)
        self.pin_memory = bool(pin_memory)
        self.external_indexing = external_indexing
        self.validation_size = None if validation_size is None else float(validation_size)
        self.shuffle_set_split = shuffle_set_split
        self.batch_size = settings.batch_size if batch_size is None else int(batch_size)
        self.seed = settings.seed if seed is None else int(seed)
        self.loader_kwargs = loader_kwargs
        self.load_data_on_device = load_data_on_device

        n_cells = manager_n_cells(adata_manager)
        if external_indexing is not None:
            if train_idx is not None or val_idx is not None or test_idx is not None:
                raise ValueError("Pass either external_indexing or train_idx/val_idx/test_idx, not both.")
            self._use_explicit(*_check_external_indexing(external_indexing, n_cells), n_cells)
        elif train_idx is not None:
            self._use_explicit(train_idx, val_idx, test_idx, n_cells)
        elif val_idx is not None or test_idx is not None:
            raise ValueError("val_idx and test_idx need train_idx too; pass all the sets of the split.")
        else:
            _validate_sizes(self.train_size, self.validation_size)
            self._split(n_cells)
        self._check_minibatches(n_cells)

    def _check_minibatches(self, n_cells: int) -> None:
        """Fail now, not inside BatchNorm at the first step, when a training minibatch would hold one cell."""
        if self.n_train == 1:
            raise ValueError(
                f"The training set has a single cell (of {n_cells} in the AnnData), and a training minibatch "
                "needs at least 2 cells (BatchNorm estimates a variance per minibatch). Train on more cells; to "
                "embed a few cells, train (or load) a model on other data and query it, e.g. "
                "model.get_latent_representation(adata=few_cells)."
            )
        if self.batch_size == 1:
            raise ValueError(
                "batch_size=1 gives training minibatches of a single cell, and a training minibatch needs at "
                "least 2 cells (BatchNorm estimates a variance per minibatch). Use batch_size >= 2."
            )

    def _split(self, n_cells: int) -> None:
        n_train, n_val = split_sizes(n_cells, self.train_size, self.validation_size)
        if self.shuffle_set_split:
            order = np.random.default_rng(self.seed).permutation(n_cells)
        else:
            order = np.arange(n_cells)
        order = order.astype(np.int64)
        # validation cells first, then training, then test: scvi-tools' order (visible when not shuffled)
        self.val_idx = order[:n_val]
        self.train_idx = order[n_val : n_val + n_train]
        self.test_idx = order[n_val + n_train :]

    def setup(self, stage: str | None = None) -> None:
        """Called by Lightning before loading; the split was made at construction and is kept."""

    def _use_explicit(self, train_idx, val_idx, test_idx, n_cells: int) -> None:
        self.train_idx = _check_explicit("train_idx", train_idx, n_cells)
        self.val_idx = _check_explicit("val_idx", val_idx, n_cells)
        self.test_idx = _check_explicit("test_idx", test_idx, n_cells)
        if self.train_idx.size == 0:
            raise ValueError("train_idx is empty; the training set needs at least one cell.")
        joined = np.concatenate([self.train_idx, self.val_idx, self.test_idx])
        if np.unique(joined).size != joined.size:
            raise ValueError("train_idx, val_idx and test_idx must be disjoint and free of repeated cells.")

    @property
    def n_train(self) -> int:
        """Number of training cells."""
        return len(self.train_idx)

    @property
    def n_val(self) -> int:
        """Number of validation cells."""
        return len(self.val_idx)

    @property
    def n_test(self) -> int:
        """Number of test cells."""
        return len(self.test_idx)

    def _shard(self) -> dict[str, int]:
        """This process's share of the cells under a distributed Lightning strategy (DDP)."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return {}
        return {"num_replicas": trainer.world_size, "rank": trainer.global_rank}

    def _device(self) -> dict[str, Any]:
        """``{"device": ...}`` when the arrays should live on the training device."""
        trainer = self.trainer
        if self.load_data_on_device is False or trainer is None:
            return {}
        device = trainer.strategy.root_device
        if self.load_data_on_device is None:
            if device.type != "cuda":
                return {}
            free, _ = torch.cuda.mem_get_info(device)
            arrays = self.adata_manager.get_arrays()
            if sum(device_nbytes(array) for array in arrays.values()) > free / 4:
                return {}
        return {"device": device}

    def _sparse(self) -> dict[str, Any]:
        """Loader options of ``load_sparse_tensor`` and ``pin_memory``."""
        options: dict[str, Any] = {}
        if self.pin_memory:
            options["pin_memory"] = True
        if self.load_sparse_tensor:
            options["load_sparse_tensor"] = True
        return options

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """With ``load_sparse_tensor``, densify the sparse tensors once they are on the device."""
        if self.load_sparse_tensor:
            for key, value in batch.items():
                if isinstance(value, torch.Tensor) and value.layout in (torch.sparse_csr, torch.sparse_csc):
                    batch[key] = value.to_dense()
        return batch

    def _loader(self, indices: np.ndarray, **kwargs: Any) -> AnnDataLoader:
        options = {**self._shard(), **self._device(), **self._sparse(), **self.loader_kwargs, **kwargs}
        return AnnDataLoader(
            self.adata_manager, indices=indices, batch_size=self.batch_size, seed=self.seed, **options
        )

    def train_dataloader(self) -> AnnDataLoader:
        """Shuffled minibatches of the training cells.

        The last minibatch is dropped when it would hold fewer than 3 cells (and at least one full minibatch
        remains), because BatchNorm in training mode cannot normalise a single cell and two cells give a
        poor variance estimate.
        """
        remainder = self.n_train % self.batch_size
        tiny_last = 0 < remainder < _MIN_LAST_TRAIN_BATCH and self.n_train > self.batch_size
        drop_last = bool(self.loader_kwargs.get("drop_last", False)) or tiny_last
        return self._loader(self.train_idx, shuffle=True, drop_last=drop_last)

    def val_dataloader(self) -> AnnDataLoader | list:
        """Validation minibatches in order; an empty list (which Lightning skips) when there are none."""
        if self.n_val == 0:
            return []
        return self._loader(self.val_idx, shuffle=False, drop_last=False)

    def test_dataloader(self) -> AnnDataLoader | list:
        """Test minibatches in order; an empty list (which Lightning skips) when there are none."""
        if self.n_test == 0:
            return []
        return self._loader(self.test_idx, shuffle=False, drop_last=False)
