"""A map-style torch Dataset over a registered AnnData: rows of every registered array, as numpy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import sparse
from torch.utils.data import Dataset


class AnnTorchDataset(Dataset):
    """Rows of the arrays an :class:`~pyrovi.data.AnnDataManager` registered, as a torch ``Dataset``.

    ``dataset[i]`` or ``dataset[[i, j, ...]]`` returns ``{registry_key: array}`` with one row per asked
    cell, every array two-dimensional (category codes and size factors as one column), dense numpy. The
    arrays are read from the manager once. pyrovi's :class:`~pyrovi.dataloaders.AnnDataLoader` does not
    need this class (it gathers whole minibatches itself); it is here for code written against
    scvi-tools' dataset.

    Parameters
    ----------
    adata_manager
        A registered manager.
    getitem_tensors
        Registry keys to return (a list), or ``{key: numpy dtype}`` to cast them; all registered keys when
        None.
    load_sparse_tensor
        Return sparse arrays' rows as scipy CSR matrices instead of densifying them.

    Examples
    --------
    >>> from pyrovi.data import AnnTorchDataset
    >>> dataset = AnnTorchDataset(manager, getitem_tensors=["X", "batch"])
    >>> dataset[[0, 1]]["batch"].shape
    (2, 1)
    """

    def __init__(
        self,
        adata_manager: Any,
        getitem_tensors: Sequence[str] | dict[str, Any] | None = None,
        load_sparse_tensor: bool = False,
    ):
        super().__init__()
        self.adata_manager = adata_manager
        self.load_sparse_tensor = bool(load_sparse_tensor)
        arrays = adata_manager.get_arrays()
        if getitem_tensors is None:
            keys, dtypes = list(arrays), {}
        elif isinstance(getitem_tensors, dict):
            keys, dtypes = list(getitem_tensors), dict(getitem_tensors)
        else:
            keys, dtypes = list(getitem_tensors), {}
        missing = [key for key in keys if key not in arrays]
        if missing:
            raise KeyError(f"getitem_tensors asks for {missing}, which are not registered; registered: {list(arrays)}.")
        self.keys_and_dtypes = {key: dtypes.get(key) for key in keys}
        self._arrays = {key: arrays[key] for key in keys}
        self._n_obs = int(adata_manager.summary_stats["n_cells"])

    def __len__(self) -> int:
        return self._n_obs

    def __getitem__(self, indexes: int | Sequence[int] | np.ndarray | slice) -> dict[str, Any]:
        if isinstance(indexes, (int, np.integer)):
            rows = np.asarray([indexes], dtype=np.int64)
        elif isinstance(indexes, slice):
            rows = np.arange(self._n_obs)[indexes]
        else:
            rows = np.asarray(indexes, dtype=np.int64).reshape(-1)
        out = {}
        for key, dtype in self.keys_and_dtypes.items():
            block = self._arrays[key][rows]
            if sparse.issparse(block) and not self.load_sparse_tensor:
                block = block.toarray()
            elif not sparse.issparse(block):
                block = np.asarray(block)
                if block.ndim == 1:
                    block = block.reshape(-1, 1)
            if dtype is not None:
                block = block.astype(dtype)
            out[key] = block
        return out
