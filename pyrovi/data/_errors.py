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
