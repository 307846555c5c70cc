"""Library-wide settings: random seed, default minibatch size and verbosity."""

from __future__ import annotations

import difflib
import logging
import warnings

import numpy as np
import pyro

from ._checks import check_bool, check_int

_logger = logging.getLogger("pyrovi")


#: scvi-tools settings that pyrovi has no use for, and why
_SCVI_TOOLS_ONLY = {
    "dl_num_workers": "minibatches are gathered whole in the main process; worker processes would not help.",
    "dl_persistent_workers": "minibatches are gathered in the main process, without worker processes.",
    "dl_pin_memory": "pass pin_memory to the data splitter (datasplitter_kwargs) instead.",
    "num_threads": "call torch.set_num_threads(n) to set the number of CPU threads.",
    "progress_bar_style": "pyrovi draws one text progress bar (settings.progress_bar turns it off).",
    "logging_dir": "pass a Lightning logger to train(logger=...) to write logs.",
    "jax_preallocate_gpu_memory": "pyrovi does not use JAX.",
}


class Settings:
    """Settings shared by every pyrovi model.

    Attributes
    ----------
    seed
        Seed of torch, numpy and Pyro's random number generators. Setting it seeds all three at once;
        data splits and minibatch shuffling are derived from it, so a run is reproducible.
    batch_size
        Default minibatch size of training (``SCVI.train`` and every model built on the base ``train``) and
        of posterior queries: ``train()`` and the queries read it when their ``batch_size`` is not given.
        TOTALVI's and CellAssign's ``train`` keep their own defaults (256 and 1024, as in scvi-tools).
    encode_batch_size
        Default minibatch size of queries that run the encoder alone (``get_latent_representation``).
        Such a pass holds only a sparse minibatch and the hidden layer, so a large one costs little
        memory, and it saves the per-minibatch overhead (measured in ``benchmarks/README.md``). The results
        do not depend on it.
    verbosity
        Logging level of pyrovi (and of Lightning's messages), e.g. ``logging.INFO`` or ``"WARNING"``.
    progress_bar
        Whether training, and the long checks of :mod:`pyrovi.criticism` (the posterior predictive draws,
        ``report``), show a progress bar.

    Examples
    --------
    >>> import pyrovi
    >>> pyrovi.settings.seed = 1
    >>> pyrovi.settings.batch_size = 256
    """

    #: the settings; assigning any other attribute (a misspelt name) is an error
    _NAMES = ("seed", "batch_size", "encode_batch_size", "verbosity", "progress_bar")

    def __init__(self, seed: int = 0, batch_size: int = 128, verbosity: int | str = logging.INFO):
        self._seed = seed
        self.batch_size = batch_size
        self.encode_batch_size = 1024
        self.progress_bar = True
        self.verbosity = verbosity

    def __setattr__(self, name: str, value: object) -> None:
        if name in _SCVI_TOOLS_ONLY:
            # notebooks written for scvi-tools set these; they keep running, and say that nothing changes
            warnings.warn(
                f"pyrovi.settings.{name} (a scvi-tools setting) has no effect in pyrovi: {_SCVI_TOOLS_ONLY[name]}",
                UserWarning,
                stacklevel=2,
            )
            return
        if not name.startswith("_") and name not in self._NAMES:
            close = difflib.get_close_matches(name, self._NAMES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise AttributeError(f"pyrovi.settings has no setting {name!r}; the settings are {list(self._NAMES)}.{hint}")
        super().__setattr__(name, value)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        check_int("batch_size", value, expected="a positive integer")
        self._batch_size = int(value)

    @property
    def encode_batch_size(self) -> int:
        return self._encode_batch_size

    @encode_batch_size.setter
    def encode_batch_size(self, value: int) -> None:
        check_int("encode_batch_size", value, expected="a positive integer")
        self._encode_batch_size = int(value)

    @property
    def progress_bar(self) -> bool:
        return self._progress_bar

    @progress_bar.setter
    def progress_bar(self, value: bool) -> None:
        check_bool("progress_bar", value)
        self._progress_bar = bool(value)

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        check_int("seed", value, minimum=0, expected="a non-negative integer")
        self._seed = int(value)
        pyro.set_rng_seed(self._seed)  # seeds torch, numpy and python's random together

    @property
    def verbosity(self) -> int:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, level: int | str) -> None:
        if isinstance(level, (bool, np.bool_)) or not isinstance(level, (str, int, np.integer)):
            raise TypeError(f"verbosity must be a logging level such as logging.INFO or 'WARNING', got {level!r}.")
        given = level
        level = logging.getLevelName(level.upper()) if isinstance(level, str) else int(level)
        if not isinstance(level, int) or level < 0:
            raise ValueError(f"unknown verbosity {given!r}; use e.g. 'INFO' or 'WARNING'.")
        self._verbosity = level
        _logger.setLevel(level)
        if not _logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s (pyrovi) %(message)s"))
            _logger.addHandler(handler)
            _logger.propagate = False
        # Lightning reports its device choices at INFO; show them only when asked for detail.
        logging.getLogger("lightning.pytorch").setLevel(max(level, logging.WARNING))

    def __repr__(self) -> str:
        return (
            f"Settings(seed={self.seed}, batch_size={self.batch_size}, encode_batch_size={self.encode_batch_size}, "
            f"verbosity={logging.getLevelName(self.verbosity)}, progress_bar={self.progress_bar})"
        )


settings = Settings()

__all__ = ["settings", "Settings"]
