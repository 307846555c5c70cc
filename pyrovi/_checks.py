"""Argument checks shared by every layer: each names the argument, what it must be, and what it got.

A wrong type or range is refused before any work starts, so it never surfaces as an error deep inside
torch, Lightning or numpy, and never as a silently wrong result (a learning rate of 0 trains nothing;
``"False"`` is a true string).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np


def _got(value: Any) -> str:
    return f"got {value!r:.80}" + ("" if isinstance(value, (int, float, str)) else f" ({type(value).__name__})")


def check_int(
    name: str, value: Any, minimum: int = 1, allow_none: bool = False, expected: str | None = None
) -> None:
    """``value`` is a whole number (not a bool, not a float; numpy integers too) of at least ``minimum``.

    ``expected`` words the requirement in the message (default ``"an integer >= {minimum}"``), e.g. ``"a
    positive integer"`` for sizes, where users know that phrase from scvi-tools' messages.

    Examples
    --------
    >>> check_int("n_samples", 0)
    Traceback (most recent call last):
    ...
    ValueError: n_samples must be an integer >= 1, got 0.
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        expected = expected or f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {expected}{' or None' if allow_none else ''}, {_got(value)}.")


def check_number(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> None:
    """``value`` is a finite real number (not a bool) in the interval from ``low`` to ``high``.

    Examples
    --------
    >>> check_number("dropout_rate", 1.0, 0.0, 1.0, high_open=True)
    Traceback (most recent call last):
    ...
    ValueError: dropout_rate must be a finite number in [0.0, 1.0), got 1.0.
    """
    if value is None and allow_none:
        return
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open or low == -math.inf else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
        interval = interval.replace("-inf", "-∞").replace("inf", "∞")
        raise ValueError(
            f"{name} must be a finite number in {interval}{' or None' if allow_none else ''}, {_got(value)}."
        )


def check_bool(name: str, value: Any) -> None:
    """``value`` is True or False (numpy booleans too), not a truthy string or number.

    Examples
    --------
    >>> check_bool("give_mean", "no")
    Traceback (most recent call last):
    ...
    TypeError: give_mean must be True or False, got 'no' (str).
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r:.80} ({type(value).__name__}).")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """``value`` is one of ``choices``.

    Examples
    --------
    >>> check_choice("mode", "bad", ["vanilla", "change"])
    Traceback (most recent call last):
    ...
    ValueError: mode must be one of ['vanilla', 'change'], got 'bad'.
    """
    if not isinstance(value, (str, int, float, type(None))) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, {_got(value)}.")


def check_path(name: str, value: Any) -> str:
    """``value`` is a file-system path (a ``str`` or an ``os.PathLike`` giving a ``str``); returns it as text.

    ``None``, numbers and ``bytes`` are refused: ``bytes`` paths would be written under a name that other tools
    show differently, and ``None`` or a number is a forgotten or misplaced argument, never a path.

    Examples
    --------
    >>> check_path("dir_path", None)
    Traceback (most recent call last):
    ...
    TypeError: dir_path must be a path (str or os.PathLike), got None (NoneType).
    """
    import os

    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {value!r:.80} ({type(value).__name__}).")
    if "\x00" in text:
        raise ValueError(f"{name} must not contain a NUL character, got {value!r:.80}.")
    return text
