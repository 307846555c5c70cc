"""Minibatches of registered AnnData arrays as dicts of torch tensors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from pyrovi._constants import REGISTRY_KEYS
from pyrovi._settings import settings

from ._minibatch_dataset import MinibatchDataset

# The loader builds its own sampler and collation around whole-minibatch access; these would undo it.
_RESERVED_KWARGS = ("batch_sampler", "collate_fn", "generator")


def _to_numpy(batch: dict[str, Any]) -> dict[str, Any]:
    """A minibatch of tensors as numpy arrays (``iter_ndarray=True``); a module-level function, so it pickles."""
    return {key: value.numpy() if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def manager_n_cells(adata_manager: Any) -> int:
    try:
        return int(adata_manager.summary_stats["n_cells"])
    except (AttributeError, KeyError, TypeError) as err:
        raise TypeError(
            "adata_manager must provide summary_stats['n_cells'] and get_arrays(), as AnnDataManager does; "
            f"got {type(adata_manager).__name__}. Register the AnnData with the model's setup_anndata first."
        ) from err


def resolve_indices(indices: Sequence[int] | np.ndarray | None, n_cells: int) -> np.ndarray:
    """Check user indices and return them as int64 row positions."""
    if indices is None:
        return np.arange(n_cells, dtype=np.int64)
    indices = np.asarray(indices)
    if indices.dtype == np.bool_:
        if indices.shape != (n_cells,):
            raise ValueError(
                f"a boolean indices mask must have one entry per cell ({n_cells}), got shape {indices.shape}."
            )
        if not indices.any():
            raise ValueError("the boolean indices mask selects no cell; a loader needs at least one cell.")
        return np.flatnonzero(indices).astype(np.int64)
    if indices.ndim != 1:
        raise ValueError(f"indices must be one-dimensional, got shape {indices.shape}.")
    if indices.size == 0:
        raise ValueError("indices is empty; a loader needs at least one cell to iterate over.")
    if not np.issubdtype(indices.dtype, np.integer):
        raise TypeError(
            f"indices must hold integer row positions (or be a boolean mask), got dtype {indices.dtype}. "
            "To select by obs name use np.flatnonzero(adata.obs_names.isin(names))."
        )
    if indices.min() < 0 or indices.max() >= n_cells:
        raise IndexError(
            f"indices must lie in [0, {n_cells}) (row positions in the AnnData), "
            f"got values from {indices.min()} to {indices.max()}."
        )
    return indices.astype(np.int64)


def _select_arrays(arrays: dict, data_and_attributes: list[str] | None, n_cells: int) -> dict:
    """Keep the requested registry arrays and check they have one row per cell."""
    if data_and_attributes is not None:
        # The indices are always served, so asking for them explicitly is harmless.
        wanted = [key for key in data_and_attributes if key != REGISTRY_KEYS.INDICES_KEY]
        missing = [key for key in wanted if key not in arrays]
        if missing:
            raise KeyError(
                f"data_and_attributes asks for {missing}, which are not registered; "
                f"registered keys are {sorted(arrays)}."
            )
        arrays = {key: arrays[key] for key in wanted}
    for key, array in arrays.items():
        if array.shape[0] != n_cells:
            raise ValueError(
                f"registry array {key!r} has {array.shape[0]} rows but the AnnData has {n_cells} cells."
            )
    return arrays


class _EpochRandomSampler(Sampler[int]):
    """A random order of the cells per epoch that depends on the seed and the epoch number only.

    The orders are those of torch's ``RandomSampler`` over one generator seeded with ``seed`` (so those of
    earlier pyrovi versions): every epoch draws two permutations from the stream and uses the first (torch's
    sampler draws a second one for the remainder, which is empty). :meth:`set_epoch`, which Lightning calls
    before every epoch, positions the stream at that epoch, replaying the earlier epochs' draws when it has
    to jump, as on resuming from a checkpoint: a resumed run visits the cells in the order the uninterrupted
    run would have. Iterated by hand without ``set_epoch``, each pass is the next epoch.
    """

    _DRAWS_PER_EPOCH = 2

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0
        self._generator = torch.Generator().manual_seed(seed)
        self._epochs_drawn = 0  # epochs whose permutations the generator has produced

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def _draw_epoch(self) -> torch.Tensor:
        order = torch.randperm(self.n, generator=self._generator)
        for _ in range(self._DRAWS_PER_EPOCH - 1):
            torch.randperm(self.n, generator=self._generator)
        self._epochs_drawn += 1
        return order

    def __iter__(self) -> Iterator[int]:
        if self.epoch < self._epochs_drawn:  # an earlier epoch: replay the stream from its start
            self._generator.manual_seed(self.seed)
            self._epochs_drawn = 0
        while self._epochs_drawn < self.epoch:  # a later one (resuming): skip the epochs in between
            self._draw_epoch()
        order = self._draw_epoch()
        self.epoch += 1
        return iter(order.tolist())


class _EpochBatchSampler(BatchSampler):
    """A BatchSampler that passes ``set_epoch`` on to its sampler, as Lightning calls it every epoch."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class AnnDataLoader(DataLoader):
    """Iterate over minibatches of cells of a registered AnnData.

    Each minibatch is one dict of torch tensors keyed by registry key (``"X"``, ``"batch"``, ...) plus
    ``"indices"``, the cells' row positions in the AnnData (int64, shape ``(B,)``). Measurements are float32
    and category codes int64. The arrays are fetched once from ``adata_manager.get_arrays()``; sparse counts
    stay sparse in memory and only a minibatch's rows are densified. A minibatch is gathered in one indexing
    operation per array, never cell by cell.

    Parameters
    ----------
    adata_manager
        Any object with ``get_arrays()`` (registry key -> array with one row per cell) and
        ``summary_stats["n_cells"]``, e.g. a model's ``AnnDataManager``.
    indices
        Row positions (or a boolean mask) of the cells to iterate over; all cells when ``None``.
    batch_size
        Cells per minibatch; ``pyrovi.settings.batch_size`` when ``None``.
    shuffle
        Visit the cells in a random order. The orders are drawn from a generator seeded with ``seed``, so a
        loader built with the same seed repeats the same sequence of orders while successive epochs differ;
        the order of epoch ``e`` depends on the seed and ``e`` only (Lightning sets the epoch; iterated by
        hand, each pass is the next epoch), so a run resumed at epoch ``e`` continues the sequence.
    drop_last
        Skip the last minibatch when it holds fewer than ``batch_size`` cells.
    data_and_attributes
        Registry keys to load (``"indices"`` is always included); all registered keys when ``None``.
    seed
        Seed of the shuffling; ``pyrovi.settings.seed`` when ``None``.
    num_replicas, rank
        Shard the cells over ``num_replicas`` processes and serve this process's share (``rank``): every
        epoch the cells are permuted with the seed and the epoch number (the same permutation in every
        process) and dealt out in turn, so the processes see disjoint cells (the last few are repeated
        when the cells do not divide evenly). :class:`~pyrovi.dataloaders.DataSplitter` sets these under
        a distributed Lightning strategy.
    sparse_keys
        Registry keys of sparse arrays to serve as torch sparse CSR tensors instead of densifying them,
        for consumers that accept them (a guide listing them in ``sparse_guide_inputs``). Ignored with
        ``device``, where minibatches are gathered densely on the device.
    device
        Move every registered array to this device once (e.g. ``"cuda"``) and gather minibatches there:
        no host-to-device copy per minibatch. The arrays must fit in the device's memory (sparse counts
        stay sparse); the data must not be backed.
    sampler
        A sampler of minibatches, as scvi-tools takes it: iterating it yields lists (or arrays) of positions
        into ``indices``. It replaces ``shuffle``, ``drop_last`` and the sharding.
    iter_ndarray
        Yield numpy arrays instead of torch tensors.
    distributed_sampler
        Shard the cells over the processes of the initialised ``torch.distributed`` group (sets
        ``num_replicas`` and ``rank`` from it).
    load_sparse_tensor
        Serve every sparse registered array as torch sparse CSR tensors (as ``sparse_keys`` does for some).
    **kwargs
        Passed to :class:`torch.utils.data.DataLoader`, e.g. ``num_workers`` (default 0) or ``pin_memory``.

    Attributes
    ----------
    indices
        Row positions (int64) of the cells the loader iterates over.
    n_obs
        Number of those cells.

    Examples
    --------
    >>> loader = AnnDataLoader(model.adata_manager, batch_size=64, shuffle=True)
    >>> for batch in loader:
    ...     x, idx = batch["X"], batch["indices"]
    >>> x.shape, x.dtype, idx.dtype  # the last minibatch: 200 cells = 3 x 64 + 8
    (torch.Size([8, 50]), torch.float32, torch.int64)
    """

    def __init__(
        self,
        adata_manager: Any,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        data_and_attributes: list[str] | None = None,
        seed: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        device: str | torch.device | None = None,
        sparse_keys: Sequence[str] = (),
        sampler: Any = None,
        iter_ndarray: bool = False,
        distributed_sampler: bool = False,
        load_sparse_tensor: bool = False,
        **kwargs: Any,
    ):
        reserved = [key for key in _RESERVED_KWARGS if key in kwargs]
        if reserved:
            raise TypeError(
                f"AnnDataLoader builds its own sampler and collation; do not pass {reserved}. "
                "Use indices, shuffle, seed and batch_size instead."
            )
        batch_size = settings.batch_size if batch_size is None else batch_size
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        seed = settings.seed if seed is None else seed

        n_cells = manager_n_cells(adata_manager)
        self.indices = resolve_indices(indices, n_cells)
        self.n_obs = len(self.indices)
        self.seed = int(seed)
        self.minibatch_size = int(batch_size)
        arrays = _select_arrays(dict(adata_manager.get_arrays()), data_and_attributes, n_cells)
        self.data_and_attributes = list(arrays)
        if load_sparse_tensor:
            sparse_keys = list(sparse_keys) + [
                key for key, array in arrays.items() if sp.issparse(array) and key not in sparse_keys
            ]
        dataset = MinibatchDataset(arrays, self.indices, device=device, sparse_keys=sparse_keys)
        if iter_ndarray:
            kwargs["collate_fn"] = _to_numpy
        if distributed_sampler:
            if not torch.distributed.is_available() or not torch.distributed.is_initialized():
                raise RuntimeError(
                    "distributed_sampler=True needs an initialised torch.distributed process group (as under a "
                    "Lightning DDP strategy); without one, leave it False."
                )
            num_replicas, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()

        if sampler is not None:
            kwargs.setdefault("num_workers", 0)
            super().__init__(dataset, sampler=sampler, batch_size=None, **kwargs)
            return
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, num_replicas={num_replicas}), got {rank}.")
        if num_replicas > 1:
            # torch's sampler: permutation seeded by seed + epoch (Lightning calls set_epoch), sharded
            positions = DistributedSampler(
                dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=self.seed
            )
        elif shuffle:
            positions = _EpochRandomSampler(len(dataset), self.seed)
        else:
            positions = SequentialSampler(dataset)
        sampler = _EpochBatchSampler(positions, batch_size=self.minibatch_size, drop_last=drop_last)
        kwargs.setdefault("num_workers", 0)
        # batch_size=None turns off per-item collation: the dataset receives a minibatch's positions at once
        # and already returns tensors, which the default (no-op) conversion passes through.
        super().__init__(dataset, sampler=sampler, batch_size=None, **kwargs)
