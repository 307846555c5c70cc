"""Errors of pyrovi's saved-model files."""

from __future__ import annotations


class ModelFileError(ValueError):
    """A saved model directory cannot be read: a file is missing, malformed, tampered with or foreign.

    Raised by ``Model.load`` before any of the directory's contents is used to build a model. The message
    names the file, what is wrong with it and what to do. Loading only ever parses JSON and safetensors
    (and an ``adata.h5ad``, which is HDF5): a pickle in a model directory is reported, never opened.

    Examples
    --------
    >>> import pyrovi
    >>> try:
    ...     pyrovi.model.SCVI.load("no_such_dir/")  # doctest: +SKIP
    ... except pyrovi.ModelFileError as err:
    ...     print(err)  # doctest: +SKIP
    """


__all__ = ["ModelFileError"]
