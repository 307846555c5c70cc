"""One process-wide lock around every run of a Pyro program: training steps, queries and sampling.

Pyro keeps its effect handlers on one stack shared by the whole process
(``pyro.poutine.runtime._PYRO_STACK``), as well as the plates' dimension allocator and the validation flags. Two
Pyro programs running at the same time in two threads would therefore each see the other's handlers (Pyro then
fails with ``Multiple sample sites named 'cells'`` or ``duplicate plate``, or worse, records one model's sites in
the other's trace). pyrovi holds this re-entrant lock for the whole of each Pyro run it makes: the ELBO of each
training or validation step (not the backward pass and optimiser step, which run no Pyro handler), each E-step,
and each public query call. Runs from different threads are thereby serialised; within one thread the lock is
re-entrant, so a query may call another. An uncontended acquisition costs well under a microsecond.

This module imports nothing from pyrovi, so that every layer can use it.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])

_LOCK = threading.RLock()

#: attribute of a model that names the thread training it (set by ``train()`` for its duration)
_TRAINING_THREAD = "_pyrovi_training_thread"


def pyro_lock() -> threading.RLock:
    """The process-wide re-entrant lock that pyrovi holds around each Pyro run.

    Hold it around Pyro code of your own (a custom query that traces a pyrovi module) when other threads may be
    training or querying pyrovi models at the same time.

    Returns
    -------
    The lock, a context manager.

    Examples
    --------
    >>> import pyrovi
    >>> with pyrovi.pyro_lock():
    ...     pass  # e.g. poutine.trace(model.module.guide).get_trace(*args, **kwargs)
    """
    return _LOCK


def _reinit_after_fork() -> None:
    # A child forked while another thread held the lock would otherwise wait for a thread it does not have.
    global _LOCK
    _LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)


def refuse_if_training_elsewhere(
    model: Any,
    action: str = "querying it",
    why: str = "a query would switch its networks to evaluation mode in the middle of training and read weights "
    "between two optimiser steps",
) -> None:
    """Raise if ``model`` is being trained by another thread (call with the lock held)."""
    owner = getattr(model, _TRAINING_THREAD, None)
    if owner is not None and owner != threading.get_ident():
        raise RuntimeError(
            f"This {type(model).__name__} is being trained in another thread; {action} must wait until that train() "
            f"returns (e.g. join the training thread): {why}. Other models can be queried and trained meanwhile."
        )


def serialised_query(method: _F) -> _F:
    """Run a model's query method while holding :func:`pyro_lock`, refusing a model that trains in another thread.

    Examples
    --------
    >>> class MyModel(SCVI):
    ...     @serialised_query
    ...     def n_cells(self, adata=None):
    ...         return self._validate_anndata(adata).adata.n_obs
    >>> MyModel.setup_anndata(adata)
    >>> MyModel(adata).n_cells()
    200
    """

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with pyro_lock():
            refuse_if_training_elsewhere(self)
            saved = pyro_global_state()
            try:
                return method(self, *args, **kwargs)
            except BaseException:  # e.g. a Ctrl-C inside a handler's __enter__: leave no handler behind
                restore_pyro_global_state(saved)
                raise

    locked._pyrovi_serialised = True  # type: ignore[attr-defined]
    return locked  # type: ignore[return-value]


def claim_training(model: Any) -> None:
    """Mark ``model`` as trained by this thread (call with the lock held); refuse one trained already."""
    owner = getattr(model, _TRAINING_THREAD, None)
    if owner is not None:
        where = "this thread (train() was called again from inside training)" if owner == threading.get_ident() else "another thread"
        raise RuntimeError(
            f"This {type(model).__name__} is already being trained by {where}; one model trains one run at a time. "
            "Wait for that train() to return, or train a separate model (e.g. one built on the same AnnData)."
        )
    setattr(model, _TRAINING_THREAD, threading.get_ident())


def release_training(model: Any) -> None:
    setattr(model, _TRAINING_THREAD, None)


def pyro_global_state() -> tuple[int, list]:
    """What a Pyro run may leave behind if interrupted at the wrong instant: the handler stack's depth and the
    plates' dimension allocations."""
    from pyro.poutine import runtime

    with pyro_lock():  # not in the middle of another thread's run
        return len(runtime._PYRO_STACK), list(runtime._DIM_ALLOCATOR._stack)


def restore_pyro_global_state(saved: tuple[int, list]) -> None:
    """Drop handlers and plate dimensions left over by an interrupted run (a ``KeyboardInterrupt`` that arrived
    inside a handler's ``__enter__``), so that later runs do not inherit them. Holds the lock: another thread's
    run is never in progress while this runs."""
    from pyro.poutine import runtime

    depth, dims = saved
    with pyro_lock():
        if len(runtime._PYRO_STACK) > depth:
            del runtime._PYRO_STACK[depth:]
        if runtime._DIM_ALLOCATOR._stack != dims:
            runtime._DIM_ALLOCATOR._stack[:] = dims
