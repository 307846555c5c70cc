"""Checks of the arguments the modules share (option names, layer sizes, extra network arguments)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from .._checks import check_int


def check_option(name: str, value: Any, choices: Sequence[str]) -> None:
    """``value`` is one of the option names ``choices`` (the message quotes them as the user writes them).

    Examples
    --------
    >>> check_option("dispersion", "genes", ("gene", "gene-batch"))
    Traceback (most recent call last):
    ...
    ValueError: dispersion='genes' is not one of 'gene', 'gene-batch'.
    """
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(repr(c) for c in choices)}.")


def check_sizes(**sizes: Any) -> None:
    """Layer and latent sizes are positive integers (0 builds empty layers that fail, or train on nothing).

    Examples
    --------
    >>> check_sizes(n_hidden=128, n_latent=0)
    Traceback (most recent call last):
    ...
    ValueError: n_latent must be a positive integer, got 0.
    """
    for name, value in sizes.items():
        check_int(name, value, expected="a positive integer")


def check_extra_kwargs(name: str, kwargs: dict | None, target: Callable, reserved: Sequence[str]) -> dict:
    """``kwargs`` for ``target``, refusing names it does not take and names the module sets itself.

    Examples
    --------
    >>> def layer(n_input, dropout_rate=0.1): ...
    >>> check_extra_kwargs("extra_encoder_kwargs", {"dropout": 0.2}, layer, ("n_input",))
    Traceback (most recent call last):
    ...
    ValueError: extra_encoder_kwargs has arguments ['dropout'] that layer does not take or that the model sets itself; accepted: ['dropout_rate'].
    """
    kwargs = dict(kwargs or {})
    accepted = set(inspect.signature(target).parameters) - {"self", *reserved}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"{name} has arguments {unknown} that {target.__qualname__.split('.')[0]} does not take or that the "
            f"model sets itself; accepted: {sorted(accepted)}."
        )
    return kwargs
