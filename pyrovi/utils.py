"""Small helpers shared by pyrovi's layers and offered to users: :class:`attrdict` and :func:`dependencies`."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any

__all__ = ["attrdict", "dependencies"]


class attrdict(dict):  # noqa: N801  (lower case, as the name users know from scvi-tools)
    """A ``dict`` whose keys can also be read and written as attributes.

    Nested plain dicts given at construction become ``attrdict`` too (with ``recursive=True``, the
    default), so ``manager.data_registry.batch.attr_key`` reads like ``registry["batch"]["attr_key"]``.
    It compares equal to any mapping with the same items.

    Parameters
    ----------
    *args, **kwargs
        As for :class:`dict`.
    recursive
        Turn nested dicts into ``attrdict`` as well.

    Examples
    --------
    >>> from pyrovi.utils import attrdict
    >>> stats = attrdict({"n_batch": 2, "inner": {"a": 1}})
    >>> stats.n_batch, stats["n_batch"], stats.inner.a
    (2, 2, 1)
    >>> stats == {"n_batch": 2, "inner": {"a": 1}}
    True
    """

    def __init__(self, *args: Any, recursive: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if recursive:
            for key, value in self.items():
                if isinstance(value, dict) and not isinstance(value, attrdict):
                    dict.__setitem__(self, key, attrdict(value, recursive=True))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"No key {name!r}; the keys are {list(self)}.") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"attrdict({dict.__repr__(self)})"


def dependencies(*modules: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function that needs optional packages: calling it without them raises a clear ImportError.

    The check runs when the function is called, not when it is defined, so a module using the decorator
    imports fine without the optional packages.

    Parameters
    ----------
    *modules
        Names of the importable modules the function needs, e.g. ``"mudata"``.

    Examples
    --------
    >>> from pyrovi.utils import dependencies
    >>> @dependencies("json")
    ... def dump(value):
    ...     import json
    ...     return json.dumps(value)
    >>> dump([1])
    '[1]'
    """

    def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            missing = [name for name in modules if importlib.util.find_spec(name) is None]
            if missing:
                raise ImportError(
                    f"{function.__name__} needs the package(s) {missing}, which are not installed. Install them, "
                    f"e.g. pip install {' '.join(missing)}."
                )
            return function(*args, **kwargs)

        return wrapper

    return decorator
