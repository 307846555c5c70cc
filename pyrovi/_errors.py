"""Errors of pyrovi's saved-model and checkpoint files, and of training."""

from __future__ import annotations


class ModelFileError(ValueError):
    """A saved model directory or a training checkpoint cannot be read: missing, malformed, tampered or foreign.

    Raised by ``Model.load`` before any of the directory's contents is used to build a model, and by
    ``Model.train(resume_from=...)`` before a checkpoint's contents are used. The message names the file, what
    is wrong with it and what to do. Loading only ever parses JSON and safetensors (and an ``adata.h5ad``,
    which is HDF5): a pickle (or a ``torch.save`` file) where a model or checkpoint should be is reported,
    never opened.

    Examples
    --------
    >>> import pyrovi
    >>> try:
    ...     pyrovi.model.SCVI.load("no_such_dir/")
    ... except pyrovi.ModelFileError as err:
    ...     print(err)
    no_such_dir: no such directory. Pass the directory that Model.save wrote.
    """


class NumericalFaultError(FloatingPointError):
    """Training met a NaN or infinite loss or gradient, and stopped before the optimiser applied it.

    The model keeps its parameters from before the faulty step (the last finite state). The message names
    the step, the epoch and what was not finite (the loss, or which parameter's gradient), with the likely
    causes: data that are not raw counts (normalised or log values) or a learning rate that is too high.
    ``model.train(..., plan_kwargs={"on_nonfinite": "skip"})`` skips such steps instead and counts them.

    Attributes
    ----------
    step, epoch
        Optimiser step (Lightning's ``global_step``) and epoch of the faulty step.
    culprit
        ``"loss"`` or the name of the first parameter whose gradient was not finite.

    Examples
    --------
    >>> import pyrovi
    >>> try:
    ...     model.train(max_epochs=3, plan_kwargs={"lr": 1e6}, enable_progress_bar=False)
    ... except pyrovi.NumericalFaultError as err:
    ...     print(err.culprit)
    loss
    """

    def __init__(self, message: str, step: int, epoch: int, culprit: str):
        super().__init__(message)
        self.step, self.epoch, self.culprit = step, epoch, culprit


__all__ = ["ModelFileError", "NumericalFaultError"]
