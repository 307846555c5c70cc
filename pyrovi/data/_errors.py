"""The error raised when a key named at setup is absent from the AnnData."""

from __future__ import annotations


class MissingKeyError(KeyError, ValueError):
    """A key named at setup (obs column, layer, obsm entry, uns entry) is absent from the AnnData.

    It derives from both :class:`KeyError` and :class:`ValueError` so that callers may catch either, and
    prints its message as written (a plain :class:`KeyError` would print the message's repr).

    Examples
    --------
    >>> try:
    ...     raise MissingKeyError("adata.obs has no column 'batch'. Available columns: ['donor'].")
    ... except KeyError as err:
    ...     print(err)
    adata.obs has no column 'batch'. Available columns: ['donor'].
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnseenCategoryError(ValueError):
    """Data transferred to a registered setup holds categories (batches, labels...) the setup did not have.

    Raised when query data, or the data given when a saved model is loaded, has a category of a categorical
    obs column that was not registered. The attributes let a caller word the fix for its context (a trained
    model cannot embed a category it has never seen).

    Parameters
    ----------
    message
        The message to print.
    source
        Where the column lives, e.g. ``"adata.obs['batch']"``.
    unseen
        The new categories, as strings.
    categories
        The registered categories, as strings.

    Examples
    --------
    >>> err = UnseenCategoryError("new batch 'c'", "adata.obs['batch']", ["c"], ["a", "b"])
    >>> isinstance(err, ValueError), err.unseen
    (True, ['c'])
    """

    def __init__(self, message: str, source: str, unseen: list[str], categories: list[str]):
        super().__init__(message)
        self.source = source
        self.unseen = list(unseen)
        self.categories = list(categories)


class RegisteredDataChangedError(ValueError):
    """The data a model was set up with changed after setup and no longer passes its validation.

    Raised when training (or a query on the model's own data) starts and the registered arrays were
    replaced or modified in place (e.g. ``adata.X`` log-normalised after ``SCVI(adata)``) in a way the
    registered setup does not accept. A change that still validates (the same counts in a copy) is accepted.
    It is a :class:`ValueError`; ``__cause__`` holds the validation error.

    Examples
    --------
    >>> err = RegisteredDataChangedError("adata.X changed after setup")
    >>> isinstance(err, ValueError)
    True
    """
