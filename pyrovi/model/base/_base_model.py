"""What every pyrovi model shares: AnnData setup, training, devices, data loading, save and load."""

from __future__ import annotations

import inspect
import logging
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..._checks import check_bool, check_int, check_path
from ..._constants import UNS_UUID_KEY
from ..._errors import ModelFileError, NumericalFaultError
from ..._pyro_lock import claim_training, refuse_if_training_elsewhere, release_training, pyro_lock
from ..._settings import settings
from ...utils import attrdict
from ...data import AnnDataManager, UnseenCategoryError, read_registry
from ...dataloaders import AnnDataLoader, DataSplitter
from ...module.base import BaseModuleClass
from ...train import Trainer, TrainingPlan
from ...train._checkpoint import expect_checkpoint_of
from ...train._trainer_checks import check_checkpoint_dir, check_device
from ._arches import ArchesMixin, query_weight_decay
from ._minified_data import minified_fields
from ._minified_mixin import refuse_training_if_minified, transfer_manager
from ._posterior_sampling import PosteriorSamplingMixin
from ._query_errors import unknown_to_model
from ._save_load import load_model, load_saved_registry, save_model

if TYPE_CHECKING:  # the mixins' contract this class provides, seen by static checkers only (see _contracts.py)
    from ._contracts import QueryHost as _Provides
else:
    _Provides = object

logger = logging.getLogger("pyrovi")


def _assign_uuid(adata: AnnData, overwrite: bool) -> None:
    """Give ``adata`` a fresh identifier in ``uns`` (not a view: writing to one would copy it silently)."""
    if getattr(adata, "is_view", False) or (not overwrite and UNS_UUID_KEY in adata.uns):
        return
    adata.uns[UNS_UUID_KEY] = uuid.uuid4().hex


def max_epochs_heuristic(n_cells: int, cap: int = 400, decay_at: int = 20_000) -> int:
    """400 epochs up to 20k cells, then fewer so that larger data sets see a similar number of steps."""
    return max(1, min(cap, round(decay_at / max(n_cells, 1) * cap)))


def _merge_kwargs(config: Any, overrides: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """A ``*_config`` (mapping, or object with ``to_kwargs()``) updated by explicit keyword arguments."""
    merged: dict[str, Any] = {}
    if config is not None:
        if isinstance(config, Mapping):
            merged.update(config)
        elif callable(getattr(config, "to_kwargs", None)):
            merged.update(config.to_kwargs())
        else:
            raise TypeError(f"{name}_config must be a mapping or have a to_kwargs() method, got {type(config).__name__}.")
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise TypeError(f"{name}_kwargs must be a dict of keyword arguments, got {type(overrides).__name__}.")
        merged.update(overrides)
    return merged


def _train_size(splitter_cls: Any, train_size: float | None) -> float | None:
    """``None`` goes to a splitter that gives it a meaning of its own (0.9, a tiny last minibatch moved to
    validation, as scvi-tools); 0.9 to one that does not take ``None``."""
    if train_size is not None:
        return train_size
    try:
        default = inspect.signature(splitter_cls).parameters["train_size"].default
    except (KeyError, TypeError, ValueError):
        return 0.9
    return None if default is None else 0.9


def _accepts(cls: Any, name: str) -> bool:
    """Whether ``cls(...)`` takes the keyword ``name`` (explicitly)."""
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _check_validation_needs(datamodule: Any, plan: Any, trainer_kwargs: dict[str, Any]) -> None:
    """Fail before training when early stopping or the plateau scheduler watch a set that is empty."""
    n_val = getattr(datamodule, "n_val", None)
    if n_val is None:
        return
    n_test = getattr(datamodule, "n_test", None)
    watched = []
    if trainer_kwargs.get("early_stopping"):
        watched.append(("early stopping", "early_stopping_monitor", trainer_kwargs.get("early_stopping_monitor", "elbo_validation")))
    if getattr(plan, "reduce_lr_on_plateau", False):
        watched.append(("reduce_lr_on_plateau", "plan_kwargs['lr_scheduler_metric']", plan.lr_scheduler_metric))
    for what, setting, monitor in watched:
        if "validation" in monitor and n_val == 0:
            raise ValueError(
                f"{what} watches {monitor!r}, but there is no validation set (train_size=1.0 or validation_size=0 "
                f"leaves none). Keep cells for validation (e.g. train_size=0.9), turn {what} off, or set {setting} to "
                "a training metric such as 'elbo_train'."
            )
        if "test" in monitor and n_test == 0:
            raise ValueError(f"{what} watches {monitor!r}, but there is no test set; set validation_size so that some cells are left.")


def _check_train_arguments(
    shuffle_set_split: Any, load_sparse_tensor: Any, load_data_on_device: Any, early_stopping: Any, batch_size: Any
) -> None:
    """train()'s own switches are True or False ('no' is a true string) and batch_size a positive integer."""
    check_bool("shuffle_set_split", shuffle_set_split)
    check_bool("load_sparse_tensor", load_sparse_tensor)
    check_bool("early_stopping", early_stopping)
    if load_data_on_device is not None:
        check_bool("load_data_on_device", load_data_on_device)
    check_int("batch_size", batch_size, allow_none=True)


class BaseModelClass(ArchesMixin, PosteriorSamplingMixin, _Provides):
    """Base of every pyrovi model: wraps a Pyro module with AnnData setup, training and persistence.

    A subclass declares its AnnData fields in :meth:`_anndata_fields`, offers a ``setup_anndata``
    classmethod with its arguments, and builds ``self.module`` (a :class:`BaseModuleClass`) in
    ``__init__`` from ``self.summary_stats``; it records its hyperparameters with
    :meth:`_record_init_params` so that :meth:`save`/:meth:`load` can rebuild it.

    Attributes
    ----------
    adata
        The AnnData the model was created on.
    adata_manager
        Its :class:`~pyrovi.data.AnnDataManager`.
    module
        The Pyro model/guide pair.
    is_trained
        Whether :meth:`train` has run (or a trained model was loaded).
    history
        Per-epoch training metrics, one DataFrame per metric (``elbo_train``, ``elbo_validation``...).
    train_indices, validation_indices, test_indices
        The cells of each set in the last training run.

    Examples
    --------
    >>> SCVI.setup_anndata(adata, batch_key="batch")
    >>> model = SCVI(adata)
    >>> model.train(max_epochs=2, enable_progress_bar=False)
    >>> model.history["elbo_validation"].index.tolist()
    [0, 1]
    """

    _training_plan_cls = TrainingPlan
    _data_splitter_cls = DataSplitter
    #: Every model class by name. A saved model's class name is only compared with these, never imported.
    _model_classes: dict[str, type[BaseModelClass]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        BaseModelClass._model_classes[cls.__name__] = cls

    @classmethod
    def known_models(cls) -> dict[str, type[BaseModelClass]]:
        """The model classes defined so far (pyrovi's and their subclasses), by class name.

        Examples
        --------
        >>> {"CellAssign", "SCVI", "TOTALVI"} <= set(BaseModelClass.known_models())
        True
        """
        return dict(BaseModelClass._model_classes)

    def __init__(self, adata: AnnData):
        name = type(self).__name__
        if not isinstance(adata, AnnData) and type(adata).__name__ != "MuData":
            raise TypeError(
                f"adata must be an AnnData (or MuData) set up with {name}.setup_anndata, got "
                f"{type(adata).__name__}; e.g. adata = anndata.AnnData(counts), then {name}.setup_anndata(adata)."
            )
        registry = read_registry(adata)
        if registry is None:
            raise ValueError(
                f"This AnnData has not been set up for {name}: call "
                f"`{name}.setup_anndata(adata, ...)` before creating the model."
            )
        if registry["model_name"] != name:
            raise ValueError(
                f"This AnnData was set up for {registry['model_name']}, not {name}: call "
                f"`{name}.setup_anndata(adata, ...)` first."
            )
        self._adata = adata
        #: AnnDatas this model has validated (by id, with a weak reference so that none is kept alive):
        #: get_anndata_manager and view_anndata_setup answer for these, as scvi-tools' per-model store does.
        self._seen_adatas: dict[int, weakref.ref] = {}
        _assign_uuid(adata, overwrite=False)
        self._note_seen(adata)
        try:
            self.adata_manager = self._manager(registry["setup_args"], adata).register_fields(
                adata, source_registry=registry
            )
        except UnseenCategoryError as err:
            raise UnseenCategoryError(
                f"{err.source} has categories that were not there when the AnnData was set up: "
                f"{err.unseen}. The data changed after {name}.setup_anndata; call it again on the data as it is "
                "now.",
                err.source,
                err.unseen,
                err.categories,
            ) from None
        #: read as a dict or by attribute (`model.summary_stats.n_batch`), as scvi-tools allows
        self.summary_stats: dict[str, int] = attrdict(self.adata_manager.summary_stats)
        self.module: BaseModuleClass
        self.init_params_: dict[str, Any] = {}
        self.is_trained_ = False
        self.history_: dict[str, pd.DataFrame] | None = None
        self.trainer: Trainer | None = None  # the last train() call's Trainer
        self.train_indices: np.ndarray | None = None
        self.validation_indices: np.ndarray | None = None
        self.test_indices: np.ndarray | None = None
        #: for a query model (load_query_data), what besides its new categories' weights trains
        self._query_freezing: Any = None

    # ----------------------------------------------------------------------------------------------
    # setup

    @classmethod
    def _anndata_fields(cls, **setup_args: Any) -> list:
        """The fields this model reads from an AnnData, given the ``setup_anndata`` arguments."""
        raise NotImplementedError

    @classmethod
    def _manager(cls, setup_args: dict[str, Any], adata: AnnData | None = None) -> AnnDataManager:
        # a minified AnnData is read through more fields: its stored latent posterior and library sizes
        fields = cls._anndata_fields(**setup_args) + minified_fields(cls, adata)
        return AnnDataManager(fields, setup_args, cls.__name__)

    @classmethod
    def _register(cls, adata: AnnData, setup_args: dict[str, Any]) -> None:
        """Validate ``adata`` against this model's fields and store the registry in ``adata.uns``."""
        for name, value in setup_args.items():  # one column or layer each: a list here is a slip for *_keys
            if (name.endswith("_key") or name.endswith("_layer") or name == "layer") and not (
                value is None or isinstance(value, str)
            ):
                what = "a layer name" if "layer" in name else "a single name (a string)"
                raise TypeError(f"{name} must be {what} or None, got {value!r:.80}.")
        cls._manager(setup_args, adata).register_fields(adata)
        _assign_uuid(adata, overwrite=True)

    def _record_init_params(self, frame_locals: dict[str, Any]) -> None:
        """Keep the constructor's arguments (JSON values) so that :meth:`load` can rebuild the model."""
        signature = inspect.signature(type(self).__init__)
        params: dict[str, Any] = {}
        for name, parameter in signature.parameters.items():
            if name in ("self", "adata"):
                continue
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                params.update(frame_locals.get(name, {}))
            elif name in frame_locals:
                params[name] = frame_locals[name]
        self.init_params_ = params

    @property
    def adata(self) -> AnnData:
        """The AnnData the model trains on and answers queries about by default.

        Assigning another AnnData validates it against the model's setup (same genes, known categories, the
        columns the model was set up with) and makes it the default of every query; the model's own
        registry and summary statistics stay those it was built with.

        Examples
        --------
        >>> other_adata = pyrovi.datasets.synthetic_iid(n_cells=30, n_genes=50, seed=1)
        >>> model.adata = other_adata
        >>> model.get_latent_representation().shape[0] == other_adata.n_obs
        True
        """
        return self._adata

    @adata.setter
    def adata(self, adata: AnnData) -> None:
        if adata is self._adata:
            return
        manager = self._validate_anndata(adata)
        self._adata, self.adata_manager = adata, manager

    def _note_seen(self, adata: AnnData) -> None:
        """Remember ``adata``; a copy of an AnnData seen before gets an identifier of its own."""
        uid = adata.uns.get(UNS_UUID_KEY) if not getattr(adata, "is_view", False) else None
        if uid is not None:
            for ref in self._seen_adatas.values():
                other = ref()
                if other is not None and other is not adata and other.uns.get(UNS_UUID_KEY) == uid:
                    _assign_uuid(adata, overwrite=True)
                    break
        self._seen_adatas[id(adata)] = weakref.ref(adata)

    @property
    def registry_(self) -> dict[str, Any]:
        """The registry (setup arguments and field states) of the model's current AnnData."""
        return self.adata_manager.registry

    def get_anndata_manager(self, adata: AnnData, required: bool = False) -> AnnDataManager | None:
        """The :class:`~pyrovi.data.AnnDataManager` through which the model reads ``adata``.

        An AnnData is known to the model once it has been used with it: the model's own, one given to a
        query, to :meth:`transfer_fields` or assigned to ``model.adata``. Its setup is validated again
        (the data may have changed since).

        Parameters
        ----------
        adata
            An AnnData used with this model.
        required
            Raise a ``ValueError`` for an AnnData the model has not seen, instead of returning ``None``.

        Examples
        --------
        >>> z = model.get_latent_representation(adata)  # the model has now seen adata
        >>> manager = model.get_anndata_manager(adata)
        >>> manager.summary_stats["n_batch"]
        2
        """
        check_bool("required", required)
        ref = self._seen_adatas.get(id(adata))
        if ref is None or ref() is not adata:
            if required:
                raise ValueError(
                    f"This AnnData has not been used with this {type(self).__name__} yet. Pass it to a query "
                    "(e.g. model.get_latent_representation(adata)) or call model.transfer_fields(adata) first."
                )
            return None
        return self._validate_anndata(adata)

    def transfer_fields(self, adata: AnnData) -> AnnDataManager:
        """Validate ``adata`` against the model's setup and return the manager that reads it.

        The AnnData must hold the model's genes (any order) and the columns it was set up with, with no
        category the model has not seen. Nothing is written to ``adata``.

        Examples
        --------
        >>> query_adata = pyrovi.datasets.synthetic_iid(n_cells=30, n_genes=50, seed=1)
        >>> manager = model.transfer_fields(query_adata)
        >>> manager.summary_stats["n_cells"]
        30
        """
        return self._validate_anndata(adata)

    def get_from_registry(self, adata: AnnData, registry_key: str) -> Any:
        """The data one field of the setup reads from ``adata``, as scvi-tools returns it.

        Category codes and numbers of one obs column come as a column ``(n_cells, 1)``, joint obs columns
        (``REGISTRY_KEYS.CONT_COVS_KEY``, ``CAT_COVS_KEY``) as a DataFrame indexed by cell, matrices with the
        registered columns in their order.

        Examples
        --------
        >>> model.get_from_registry(adata, pyrovi.REGISTRY_KEYS.BATCH_KEY)[:3]
        array([[0], [0], [0]])
        """
        manager = self._validate_anndata(adata)
        if registry_key not in {field.registry_key for field in manager.fields if not field.is_empty}:
            raise KeyError(f"{registry_key!r} is not a field of this {type(self).__name__}'s setup.")
        return manager.get_from_registry(registry_key)

    def view_anndata_setup(self, adata: AnnData | None = None, hide_state_registries: bool = False) -> None:
        """Print how the model reads its AnnData: setup arguments, summary and field mappings.

        Parameters
        ----------
        adata
            Data to show (default the model's): an AnnData used with the model before (see
            :meth:`get_anndata_manager`); its setup is validated again.
        hide_state_registries
            Leave out each field's state (category mappings, gene names).

        Examples
        --------
        >>> model.view_anndata_setup()
        Registry of SCVI (pyrovi ...): 200 cells x 50 genes
        ...
          batch (CategoricalObsField)
            source                      adata.obs['batch']
            n_batch                     2
            0                           batch_0
            1                           batch_1
        ...
        """
        check_bool("hide_state_registries", hide_state_registries)
        manager = self.adata_manager if adata is None else self.get_anndata_manager(adata, required=True)
        if hide_state_registries:
            manager.view_registry(hide_state_registries=True)
        else:
            manager.view_registry()

    @staticmethod
    def view_setup_args(dir_path: str, prefix: str | None = None) -> None:
        """Print the ``setup_anndata`` arguments of a model saved in ``dir_path`` (no model is built).

        Examples
        --------
        >>> model.save("my_model/")
        >>> SCVI.view_setup_args("my_model/")
        Setup of a saved SCVI:
          layer: None
          batch_key: 'batch'
          labels_key: 'labels'
          size_factor_key: None
          categorical_covariate_keys: None
          continuous_covariate_keys: None
        """
        registry = load_saved_registry(dir_path, prefix, BaseModelClass.known_models())
        print(f"Setup of a saved {registry.get('model_name', 'model')}:")
        for key, value in registry["setup_args"].items():
            print(f"  {key}: {value!r}")

    @staticmethod
    def load_registry(dir_path: str, prefix: str | None = None) -> dict[str, Any]:
        """The AnnData setup (registry) of a model saved in ``dir_path``, as a dict (no model is built).

        Examples
        --------
        >>> model.save("my_model/")
        >>> SCVI.load_registry("my_model/")["setup_args"]
        {'layer': None, 'batch_key': 'batch', 'labels_key': 'labels', ...}
        """
        return load_saved_registry(dir_path, prefix, BaseModelClass.known_models())

    @classmethod
    def convert_legacy_save(cls, dir_path: str, output_dir_path: str, overwrite: bool = False,
                            prefix: str | None = None, **save_kwargs: Any) -> None:  # fmt: skip
        """Refused: scvi-tools' legacy (and current) model files are pickles, which pyrovi never opens.

        Unpickling a file runs code stored in it, so pyrovi reads only safetensors and JSON. To move a
        model from scvi-tools to pyrovi, retrain it with pyrovi (same arguments, see the "Coming from
        scvi-tools" guide).

        Raises
        ------
        pyrovi.ModelFileError
            Always, naming the directory.
        """
        raise ModelFileError(
            f"{dir_path}: convert_legacy_save converts scvi-tools' pickled model files, and pyrovi never "
            "unpickles (it would run code stored in the file). Retrain the model with pyrovi and save it with "
            f"{cls.__name__}.save(...), which writes safetensors + JSON."
        )

    def _validate_anndata(self, adata: AnnData | None = None) -> AnnDataManager:
        """The manager of ``adata``: the model's own, or one transferred to new data with the same genes."""
        if adata is None or adata is self.adata:
            return self.adata_manager
        try:
            # Read only: a query never writes this model's registry into the data, where it would replace the
            # setup the user (or another model) made; and a view (adata[:10]) is read as it is.
            manager = transfer_manager(self, adata)
        except UnseenCategoryError as err:
            raise unknown_to_model(err, type(self).__name__) from None
        self._note_seen(adata)
        if len(self._seen_adatas) > 64:  # forget AnnDatas that no longer exist
            self._seen_adatas = {k: r for k, r in self._seen_adatas.items() if r() is not None}
        return manager

    # ----------------------------------------------------------------------------------------------
    # training

    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        load_sparse_tensor: bool = False,
        batch_size: int | None = None,
        early_stopping: bool = False,
        datasplitter_kwargs: dict[str, Any] | None = None,
        plan_config: Any = None,
        plan_kwargs: dict[str, Any] | None = None,
        datamodule: Any = None,
        trainer_config: Any = None,
        load_data_on_device: bool | None = None,
        checkpoint_dir: str | None = None,
        resume_from: str | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        """Fit the model by stochastic variational inference.

        Takes scvi-tools' ``train`` arguments. A step whose loss or gradient is NaN or infinite stops
        training with :class:`pyrovi.NumericalFaultError` before it is applied (the model keeps its last
        finite parameters); ``plan_kwargs={"on_nonfinite": "skip"}`` skips such steps instead, counts them in
        ``history["nonfinite_steps_skipped"]`` and warns at the end. With ``checkpoint_dir`` a checkpoint is
        written after every epoch, and ``resume_from`` continues a run from one.

        Parameters
        ----------
        max_epochs
            Passes over the training cells; default ``min(400, round(20000 / n_cells * 400))``.
        accelerator, devices
            Lightning's device selection (``"auto"`` uses a GPU when there is one).
        train_size, validation_size
            Fractions of cells for training (default 0.9) and validation (default: the rest); the split is
            seeded by ``pyrovi.settings.seed`` and kept in ``train_indices``/``validation_indices``.
        shuffle_set_split
            Split at random (otherwise in order).
        load_sparse_tensor
            Hand sparse counts to the module as sparse tensors (passed to the
            :class:`~pyrovi.dataloaders.DataSplitter`; pyrovi keeps CSR data sparse in any case).
        batch_size
            Minibatch size (default ``pyrovi.settings.batch_size``, 128 unless changed).
        early_stopping
            Stop when ``early_stopping_monitor`` (default ``elbo_validation``) stops improving; see the
            ``early_stopping_*`` arguments of :class:`~pyrovi.train.Trainer`. Needs a validation set.
        datasplitter_kwargs
            Further arguments of the :class:`~pyrovi.dataloaders.DataSplitter` (e.g. ``drop_last``,
            ``external_indexing``).
        plan_config, plan_kwargs
            Arguments of the :class:`~pyrovi.train.TrainingPlan` (``lr``, ``n_epochs_kl_warmup``,
            ``reduce_lr_on_plateau``, ``on_step``, ``loss``, ``on_nonfinite``...): a mapping (or a config with
            ``to_kwargs()``) each; ``plan_kwargs`` wins over ``plan_config``.
        datamodule
            A Lightning data module to train on instead of the model's own split (its ``n_train``/``n_val``,
            when it has them, scale the ELBO; the split arguments are then unused).
        trainer_config
            Trainer arguments as a mapping (or a config with ``to_kwargs()``); ``**trainer_kwargs`` win.
        load_data_on_device
            Keep the registered data on the training device and gather minibatches there. ``None``
            (default): on a GPU when it takes under a quarter of the free memory; never on the CPU.
        checkpoint_dir
            Write a resumable checkpoint to ``checkpoint_dir/last.ckpt`` at the end of every epoch (the
            previous one is replaced atomically). It holds the module and optimiser state, the epoch and step
            counters (and so the KL warm-up position), scheduler and early-stopping states, the random
            generators' states and the history. The file is safetensors with a JSON header: no pickle.
        resume_from
            Path of such a checkpoint: restore it and train on up to ``max_epochs`` (counted from the start
            of the first run). Use the same data, split and settings (seed, ``batch_size``, ``plan_kwargs``)
            as the interrupted run; on one process and the CPU the result is then bitwise that of an
            uninterrupted run. A file that is not a pyrovi checkpoint (e.g. a ``torch.save`` or pickle file)
            raises :class:`pyrovi.ModelFileError` without being unpickled. The model's history becomes the
            resumed run's (the checkpoint's epochs and the new ones).
        **trainer_kwargs
            Further arguments of the :class:`~pyrovi.train.Trainer` (``check_val_every_n_epoch``,
            ``enable_progress_bar``, ``early_stopping_patience``, ``callbacks``, ``logger``...) and Lightning's.

        Notes
        -----
        ``model.history`` grows with every call: a further ``train()`` appends its epochs after the earlier
        ones (epoch and step indices continue). ``model.trainer`` is the last run's Trainer.

        A run stopped inside an epoch (Ctrl-C, SIGTERM, an exception) leaves the model at its last finished
        epoch: weights, ``history`` and ``is_trained`` agree with it, and ``train()`` or ``resume_from`` go on
        from there. Ctrl-C raises ``KeyboardInterrupt``; SIGTERM (a scheduler ending the job) raises
        ``SystemExit`` with status 143. Models may be trained and queried from several threads at once (each
        Pyro run holds :func:`pyrovi.pyro_lock`); one model trains one run at a time.

        Raises
        ------
        ValueError
            Early stopping or a plateau scheduler that watches a validation metric without a validation set.
        pyrovi.NumericalFaultError
            A NaN or infinite loss or gradient (with the default ``on_nonfinite="raise"``).
        RuntimeError
            The model is already being trained (by another thread, or by this one from inside training).
        KeyboardInterrupt
            Ctrl-C during training (the model is left at its last finished epoch).
        SystemExit
            SIGTERM during training: Lightning's ``SIGTERMException`` with exit status 143.

        Examples
        --------
        >>> model.train(max_epochs=5, early_stopping=True, early_stopping_patience=2, enable_progress_bar=False,
        ...             check_val_every_n_epoch=1, plan_kwargs={"lr": 1e-3, "n_epochs_kl_warmup": 2})
        >>> model.train(max_epochs=2, accelerator="cpu", devices=1, enable_progress_bar=False)
        >>> model.train(max_epochs=2, checkpoint_dir="ckpt/", enable_progress_bar=False)
        >>> model.train(max_epochs=3, checkpoint_dir="ckpt/", resume_from="ckpt/last.ckpt", enable_progress_bar=False)
        >>> model.train(max_epochs=2, plan_kwargs={"on_nonfinite": "skip"}, enable_progress_bar=False)
        """
        refuse_training_if_minified(self)
        check_data = getattr(getattr(self, "adata_manager", None), "check_unchanged", None)
        if check_data is not None:
            check_data()  # data changed in place since setup (e.g. log-normalised) fails here, before any work
        n_cells = self.summary_stats["n_cells"]
        if max_epochs is None:
            if datamodule is not None and getattr(datamodule, "n_obs", None) is None and self.adata is None:
                raise ValueError("max_epochs is needed when the datamodule does not say how many cells it has (n_obs).")
            n = getattr(datamodule, "n_obs", None) if datamodule is not None else None
            max_epochs = max_epochs_heuristic(int(n) if n is not None else n_cells)
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, (int, np.integer)) or max_epochs < 1:
            # Lightning reads -1 as "no limit" (training would never end) and 0 as "train nothing"
            raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}.")
        max_epochs = int(max_epochs)  # Lightning asserts a plain int (np.int64 failed deep inside)
        _check_train_arguments(shuffle_set_split, load_sparse_tensor, load_data_on_device, early_stopping, batch_size)
        checkpoint_dir = check_checkpoint_dir(checkpoint_dir)
        if resume_from is not None:
            resume_from = check_path("resume_from", resume_from)
        plan_kwargs = query_weight_decay(self, _merge_kwargs(plan_config, plan_kwargs, "plan"))
        trainer_kwargs = {**_merge_kwargs(trainer_config, None, "trainer"), **trainer_kwargs}
        trainer_kwargs.setdefault("early_stopping", early_stopping)
        if datamodule is None:
            splitter_kwargs = dict(datasplitter_kwargs or {})
            if load_sparse_tensor or _accepts(self._data_splitter_cls, "load_sparse_tensor"):
                splitter_kwargs.setdefault("load_sparse_tensor", load_sparse_tensor)
            datamodule = self._data_splitter_cls(
                self.adata_manager,
                train_size=_train_size(self._data_splitter_cls, train_size),
                validation_size=validation_size,
                shuffle_set_split=shuffle_set_split,
                batch_size=settings.batch_size if batch_size is None else batch_size,
                load_data_on_device=load_data_on_device,
                **splitter_kwargs,
            )
        plan = self._training_plan_cls(self.module, **plan_kwargs)
        _check_validation_needs(datamodule, plan, trainer_kwargs)
        if getattr(plan, "reduce_lr_on_plateau", False):
            trainer_kwargs.setdefault("learning_rate_monitor", True)  # as scvi-tools: lr-Adam in the history
        trainer = Trainer(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            checkpoint_dir=checkpoint_dir,
            **trainer_kwargs,
        )
        # checkpoints record whose they are; one read back must be of this model and architecture
        expect_checkpoint_of(trainer, type(self).__name__, plan, resume_from)
        with pyro_lock():  # no query of this model is running (queries hold the lock), and none starts until the end
            claim_training(self)  # refuses a model that another thread (or this one, re-entered) is training
            # Lightning keeps each submodule's train/eval mode; queries left the module in eval mode.
            self.module.train()
        try:
            trainer.fit(plan, datamodule=datamodule, ckpt_path=None if resume_from is None else str(resume_from))
        finally:
            # A fit stopped by Ctrl-C, SIGTERM or an error inside an epoch has put the weights back to the end of the
            # last finished epoch (a numerical fault keeps the last finite state): the history, the step count and
            # is_trained follow the finished epochs.
            self.module.eval()
            release_training(self)
            self._update_history(trainer.history_logger.history(), replace=resume_from is not None)
            self._n_steps_trained = getattr(self, "_n_steps_trained", 0) + trainer.finished_steps
            self.trainer = trainer
            stopped = trainer.stopped_by
            # (a DDP-spawn fit trains in worker processes: the main process's trainer counts no step, but it receives
            # their history)
            if stopped is None and int(trainer.global_step) == 0 and not trainer.history_logger.history():
                # e.g. max_time shorter than the first step: nothing trained, so is_trained is left as it was
                logger.warning(
                    "Training ended before its first optimiser step (max_time, a callback or a limit stopped it): the "
                    "model's weights are unchanged and is_trained is left %s.", self.is_trained_,
                )
            elif stopped is None or (not isinstance(stopped, NumericalFaultError) and trainer.finished_epochs > 0):
                self.train_indices = getattr(datamodule, "train_idx", None)
                self.validation_indices = getattr(datamodule, "val_idx", None)
                self.test_indices = getattr(datamodule, "test_idx", None)
                self.is_trained_ = True

    def _update_history(self, new: dict[str, pd.DataFrame], replace: bool = False) -> None:
        """Append a run's history after the model's, continuing the epoch and step indices."""
        old = self.history_
        if replace or not old:
            self.history_ = new if (new or old is None) else old
            return
        offsets = {}
        for kind in ("epoch", "step"):
            ends = [int(f.index.max()) + 1 for f in old.values() if f.index.name == kind and len(f)]
            offsets[kind] = max(ends, default=0)
        offsets["step"] = max(offsets["step"], getattr(self, "_n_steps_trained", 0))
        merged = dict(old)
        for key, frame in new.items():
            frame = frame.copy()
            frame.index = frame.index + offsets.get(frame.index.name, 0)
            merged[key] = pd.concat([old[key], frame]) if key in old else frame
        self.history_ = merged

    def _restore_training_state(
        self,
        is_trained: bool,
        history: dict[str, pd.DataFrame],
        train_indices: np.ndarray | None,
        validation_indices: np.ndarray | None,
        test_indices: np.ndarray | None,
    ) -> None:
        """Take the training state a saved model records; :func:`load_model` hands it over after the weights."""
        self.is_trained_ = is_trained
        self.history_ = history
        self.train_indices = train_indices
        self.validation_indices = validation_indices
        self.test_indices = test_indices

    @property
    def is_trained(self) -> bool:
        """Whether the model has been trained."""
        return self.is_trained_

    @property
    def history(self) -> dict[str, pd.DataFrame]:
        """Training metrics per epoch, one DataFrame per metric (empty before training)."""
        return self.history_ if self.history_ is not None else {}

    # ----------------------------------------------------------------------------------------------
    # devices and data

    @property
    def device(self) -> torch.device:
        """The device holding the module's parameters."""
        return self.module.device

    def to_device(self, device: str | int | torch.device) -> None:
        """Move the module to ``device`` (``"cpu"``, ``"cuda:0"``, ``0``, a :class:`torch.device`...).

        A name that is no device, or a CUDA device on a machine without CUDA, is a clear ValueError.

        Examples
        --------
        >>> model.to_device("cpu")
        """
        device = check_device("device", device, allow_auto=False)  # a CUDA device without CUDA: a clear error
        if isinstance(device, int):
            device = check_device("device", f"cuda:{device}", allow_auto=False)
        with pyro_lock():
            refuse_if_training_elsewhere(
                self, "moving it to another device", "training holds its parameters and optimiser state where they are"
            )
            self.module.to(device)

    def _make_data_loader(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        shuffle: bool = False,
        guide_only: bool = False,
    ) -> AnnDataLoader:
        # a query that runs the guide alone may leave the inputs the guide takes sparse as they are
        manager = self._validate_anndata(adata)
        sparse_keys = getattr(self.module, "sparse_guide_inputs", ()) if guide_only else ()
        default = settings.encode_batch_size if guide_only else settings.batch_size
        return AnnDataLoader(
            manager, indices=indices, batch_size=default if batch_size is None else batch_size, shuffle=shuffle,
            sparse_keys=sparse_keys,
        )

    def _fn_args(self, batch: dict[str, torch.Tensor], **overrides: Any) -> tuple[tuple, dict]:
        """Model/guide arguments of a loader minibatch, on the module's device."""
        device = self.device
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        kwargs.update(overrides)
        return args, kwargs

    # ----------------------------------------------------------------------------------------------
    # persistence

    def save(
        self,
        dir_path: str,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        save_kwargs: dict | None = None,
        legacy_mudata_format: bool = False,
        **anndata_write_kwargs: Any,
    ) -> None:
        """Save the model to a directory: weights as safetensors, everything else as JSON. No pickle.

        Parameters
        ----------
        dir_path
            Directory to create (a ``str`` or ``os.PathLike``; ``None``, numbers and ``bytes`` are a TypeError).
            Saves of one process into the same directory run one after the other.
        prefix
            Start of the saved files' names (``{prefix}model.json``, ...), so that several models can share
            a directory; with a prefix, other files in the directory are left alone.
        overwrite
            Replace an existing model directory (written next to it first, so a failure leaves it intact).
            Without it an existing non-empty directory is an error and is left untouched; with it, in a
            directory that also holds other files the model's files are written beside them (each renamed
            into place) and nothing else is touched.
        save_anndata
            Also write the AnnData as ``adata.h5ad``.
        save_kwargs, legacy_mudata_format
            Accepted for scvi-tools' signature: ``save_kwargs`` (options of ``torch.save``) must be empty,
            since pyrovi writes safetensors, and ``legacy_mudata_format`` has no effect (pyrovi has one
            format).
        **anndata_write_kwargs
            Passed to ``AnnData.write_h5ad`` (e.g. ``compression="gzip"``).

        Examples
        --------
        >>> model.save("my_model/", overwrite=True)
        >>> model.save("models/", prefix="pbmc_", overwrite=True)

        Raises
        ------
        TypeError
            ``dir_path`` is not a path, or ``overwrite``/``save_anndata`` is not True or False.
        FileExistsError
            The directory holds a model (without ``overwrite=True``) or a file pyrovi did not write under a model
            file's name, or another process saved into the same new directory at the same moment.
        OSError
            The location cannot be written (e.g. ``NotADirectoryError`` for a path below a file); the message names
            ``dir_path`` and the cause.
        """
        with pyro_lock():
            refuse_if_training_elsewhere(
                self, "saving it", "its weights between two optimiser steps would match no epoch of its history"
            )
        if save_kwargs:
            raise TypeError(
                f"save_kwargs={save_kwargs!r}: these are options of torch.save (a pickle), which pyrovi does not "
                "use; its weights are written as safetensors. Leave save_kwargs out."
            )
        save_model(self, dir_path, overwrite=overwrite, save_anndata=save_anndata, prefix=prefix,
                   **anndata_write_kwargs)  # fmt: skip

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        backup_url: str | None = None,
        **init_overrides: Any,
    ):
        """Load a model saved with :meth:`save`.

        The AnnData must hold the same genes (any order); its setup is replayed from the saved registry
        so category codes match the training data. Built-in priors, distributions and likelihoods are
        rebuilt from their saved names and arguments; user code (a custom prior class, a callable
        likelihood) is not stored, and must be passed again by its init parameter name (e.g.
        ``prior=MyPrior()``): its weights are then loaded from the file.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            Data to attach; default the ``adata.h5ad`` saved with ``save_anndata=True``. Other cells of the same
            genes are fine: a saved split naming cells beyond them is dropped (``train_indices`` etc. None) with a
            warning.
        accelerator
            ``"auto"`` (GPU when available), ``"cpu"``, ``"gpu"``/``"cuda"``.
        device
            Which device of the accelerator: ``"auto"``, an index (``1``), a name (``"cpu"``, ``"cuda:1"``) or a
            :class:`torch.device`; anything else is a ValueError.
        prefix
            The prefix the model was saved with.
        backup_url
            Refused: pyrovi loads only local files (a downloaded model would be another's file to trust);
            download it yourself and pass its directory.
        **init_overrides
            Init parameters to use instead of the saved ones (required for user code).

        Raises
        ------
        pyrovi.ModelFileError
            The directory is not a pyrovi model of this class, a file is missing, malformed or tampered
            with, or it was saved by a newer pyrovi. Loading reads only JSON, safetensors and HDF5: it
            never unpickles and never imports a name found in a file.

        Examples
        --------
        >>> model.save("my_model/")
        >>> model = SCVI.load("my_model/", adata)
        >>> model.is_trained
        True
        >>> model = SCVI.load("custom_prior_model/", adata, prior=MyPrior())  # doctest: +SKIP
        """
        if backup_url is not None:
            raise ValueError(
                f"backup_url={backup_url!r}: pyrovi does not download models. Download the directory yourself, "
                "check where it comes from, and pass its path."
            )
        return load_model(cls, dir_path, adata=adata, accelerator=accelerator, overrides=init_overrides,
                          device=device, prefix=prefix)  # fmt: skip

    def _n_labels_shown(self) -> int:
        """The number of labels a summary shows (SCANVI leaves out its "unlabeled" category)."""
        return self.summary_stats.get("n_labels", 1)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.init_params_.items())
        stats = self.summary_stats
        status = "trained" if self.is_trained else "not trained"
        return (
            f"{type(self).__name__}({params})\n"
            f"  module: {type(self.module).__name__} on {self.device}, {status}\n"
            f"  data: {stats.get('n_cells')} cells x {stats.get('n_vars')} genes, "
            f"{stats.get('n_batch', 1)} batch(es), {self._n_labels_shown()} label(s)"
        )
