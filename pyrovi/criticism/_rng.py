"""Draws made later from the random state of an earlier moment, without disturbing the caller's stream."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The states of Python's, numpy's and torch's generators (every CUDA device's too, once CUDA is in use).

    Examples
    --------
    >>> state = rng_state()
    >>> first = torch.rand(1)
    >>> with replaying(state):
    ...     again = torch.rand(1)
    >>> bool(first == again)
    True
    """
    state = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys() or a["random"] != b["random"] or not torch.equal(a["torch"], b["torch"]):
        return False
    if any(not torch.equal(x, y) for x, y in zip(a.get("cuda", []), b.get("cuda", []))):
        return False
    (kind_a, keys_a, *rest_a), (kind_b, keys_b, *rest_b) = a["numpy"], b["numpy"]
    return kind_a == kind_b and np.array_equal(keys_a, keys_b) and rest_a == rest_b


@contextlib.contextmanager
def replaying(state: dict[str, Any]) -> Iterator[None]:
    """Run the block from the random ``state`` (of :func:`rng_state`), as if it ran when ``state`` was taken.

    A lazy computation then draws exactly what it would have drawn at that moment. When nothing has drawn
    random numbers since, the block simply continues the stream (what follows sees the numbers it would
    have seen had the block run then); otherwise the caller's own state is put back after the block, so
    the lazy draws do not shift the random numbers of the code around it.
    """
    outer = rng_state()
    if _same_state(outer, state):
        yield
        return
    _set_rng_state(state)
    try:
        yield
    finally:
        _set_rng_state(outer)
