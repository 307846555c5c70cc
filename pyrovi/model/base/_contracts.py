"""What the model mixins and the model files need from the class they serve, as :class:`typing.Protocol` s.

A mixin (:class:`PosteriorSamplingMixin`, :class:`VAEMixin`, :class:`DEMixin`) is mixed into a
:class:`BaseModelClass` subclass and calls methods it does not define itself; saving and loading
(``_save_load.py``) read a model's state and hand a loaded state back to it. Each protocol here names what
one of them needs. They cost nothing at run time: a mixin inherits its protocol only for a static checker
(``_Host`` is the protocol under ``TYPE_CHECKING`` and ``object`` otherwise, then ``class VAEMixin(_Host)``),
and :class:`BaseModelClass` likewise declares that it provides :class:`QueryHost`. So mypy or pyright sees
the methods a mixin calls, checks that the definitions a model inherits from its bases agree, and refuses to
build a model class that lacks one (an abstract member).

Examples
--------
>>> from pyrovi.model import SCVI
>>> from pyrovi.model.base._contracts import QueryHost
>>> [name for name in ("_make_data_loader", "_fn_args", "_validate_anndata") if not hasattr(SCVI, name)]
[]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

if TYPE_CHECKING:
    from ...data import AnnDataManager
    from ...module.base import BaseModuleClass

__all__ = ["LoaderHost", "QueryHost", "ExpressionHost", "PersistentModel"]

#: A minibatch as loaders yield it: tensors keyed by registry keys (``"X"``, ``"batch"``, ``"indices"``...).
Minibatch = dict[str, torch.Tensor]


class LoaderHost(Protocol):
    """What :class:`PosteriorSamplingMixin` needs: the module and its arguments for each minibatch of a query.

    Provided by :class:`BaseModelClass`.

    Attributes
    ----------
    module
        The Pyro model/guide pair whose sites are read.
    """

    module: BaseModuleClass

    def _make_data_loader(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        shuffle: bool = False,
        guide_only: bool = False,
    ) -> Iterable[Minibatch]:
        """The minibatches of ``adata`` (default the model's), of the cells ``indices``, in order."""
        ...

    def _fn_args(self, batch: Minibatch, **overrides: Any) -> tuple[tuple, dict]:
        """The model's and guide's arguments for ``batch``, on the module's device, updated by ``overrides``."""
        ...


class QueryHost(LoaderHost, Protocol):
    """What :class:`VAEMixin` needs as well: the data setup, to read a query's AnnData as the model reads its own.

    Provided by :class:`BaseModelClass`.

    Attributes
    ----------
    adata_manager
        The manager of the model's own AnnData.
    """

    adata_manager: AnnDataManager

    def _validate_anndata(self, adata: AnnData | None = None) -> AnnDataManager:
        """The manager of ``adata``: the model's own when ``None``, else the setup transferred to it."""
        ...


class ExpressionHost(Protocol):
    """What :class:`DEMixin` needs besides :class:`VAEMixin` (``get_latent_representation``, ``_batch_codes``),
    which it is always mixed in with: the model's normalised expression.

    :class:`~pyrovi.model.SCVI`'s returns one array; :class:`~pyrovi.model.TOTALVI`'s returns genes and proteins,
    which is why TOTALVI also overrides the hooks listed in :class:`DEMixin`.

    Attributes
    ----------
    get_normalized_expression
        ``(adata, indices, transform_batch, gene_list, library_size, n_samples, batch_size, return_mean,
        return_numpy, ...)`` -> draws or means of the denoised expression.
    """

    get_normalized_expression: Callable[..., Any]


class PersistentModel(Protocol):
    """What saving and loading (``_save_load.py``) read from a model and hand back to it.

    Provided by :class:`BaseModelClass`; a loaded model's training state is set only through
    :meth:`_restore_training_state`, the model's own method.
    """

    module: BaseModuleClass
    adata_manager: AnnDataManager
    init_params_: dict[str, Any]
    train_indices: np.ndarray | None
    validation_indices: np.ndarray | None
    test_indices: np.ndarray | None

    def __init__(self, adata: AnnData, **init_params: Any) -> None: ...

    @property
    def adata(self) -> AnnData: ...

    @property
    def is_trained(self) -> bool: ...

    @property
    def history(self) -> dict[str, pd.DataFrame]: ...

    @classmethod
    def _manager(cls, setup_args: dict[str, Any]) -> AnnDataManager:
        """An AnnData manager of this model's fields for the ``setup_anndata`` arguments ``setup_args``."""
        ...

    @classmethod
    def known_models(cls) -> Mapping[str, type]:
        """The model classes a saved file may name, by class name (only compared, never imported)."""
        ...

    def _restore_training_state(
        self,
        is_trained: bool,
        history: dict[str, pd.DataFrame],
        train_indices: np.ndarray | None,
        validation_indices: np.ndarray | None,
        test_indices: np.ndarray | None,
    ) -> None:
        """Take the training state a saved model records (whether it was trained, its history and split)."""
        ...
