"""Guides for a module's global latent sites (hyperpriors, priors on decoder parameters)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Union

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoNormal

from ..._pyro_lock import pyro_lock

GlobalGuide = Union[Literal["normal", "delta"], Callable[[Callable], Callable]]


def check_global_guide(kind: object) -> None:
    """``kind`` is ``"normal"``, ``"delta"`` or a callable ``model -> guide``; checked even when a module has
    no global site (a misspelt guide would otherwise go unnoticed until a prior with hyperpriors is used).

    Examples
    --------
    >>> check_global_guide("bogus")
    Traceback (most recent call last):
    ...
    ValueError: global_guide='bogus': use 'normal', 'delta' or a callable model -> guide (e.g. pyro.infer.autoguide.AutoLowRankMultivariateNormal).
    """
    if not (callable(kind) or (isinstance(kind, str) and kind in ("normal", "delta"))):
        raise ValueError(
            f"global_guide={kind!r:.80}: use 'normal', 'delta' or a callable model -> guide "
            "(e.g. pyro.infer.autoguide.AutoLowRankMultivariateNormal)."
        )


def make_global_guide(global_model: Callable[[], None], sites: Sequence[str], kind: GlobalGuide = "normal"):
    """An autoguide over exactly ``sites`` of ``global_model`` (a function running the global sample statements).

    ``"normal"`` gives an :class:`~pyro.infer.autoguide.AutoNormal` (mean-field Normal in unconstrained
    space), ``"delta"`` an :class:`~pyro.infer.autoguide.AutoDelta` (MAP), and a callable is called with
    the blocked model (e.g. ``pyro.infer.autoguide.AutoLowRankMultivariateNormal``). Returns ``None`` when
    there are no global sites. Attach the guide to its module, then call :func:`materialise_guide`.

    Examples
    --------
    >>> def global_model():
    ...     pyro.sample("prior_scale", dist.HalfCauchy(torch.ones(3)).to_event(1))
    >>> guide = make_global_guide(global_model, ["prior_scale"], "delta")
    >>> type(guide).__name__
    'AutoDelta'
    """
    check_global_guide(kind)
    if not sites:
        return None
    blocked = poutine.block(global_model, expose=list(sites))
    if kind == "normal":
        guide = AutoNormal(blocked)
    elif kind == "delta":
        guide = AutoDelta(blocked)
    elif callable(kind):
        guide = kind(blocked)
    else:
        raise ValueError(f"global_guide={kind!r}: use 'normal', 'delta' or a callable model -> guide.")
    return guide


def materialise_guide(guide: Callable | None) -> None:
    """Run a guide once so that its lazily created parameters exist.

    A freshly built module then has the same ``state_dict`` keys as a trained one (loading is strict),
    and an optimiser built before the first step sees every parameter. Call it after the guide is an
    attribute of its module: a ``PyroModule`` must not run before it joins its parent.
    """
    if guide is not None:
        with torch.no_grad(), pyro_lock(), poutine.block():  # a Pyro run: one at a time (pyrovi._pyro_lock)
            guide()
