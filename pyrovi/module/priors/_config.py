"""JSON configurations of priors and distributions, so that models using them save without pickle."""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch

from ._base import LatentPrior
from ._builtins import BUILTIN_PRIORS


def prior_to_config(prior: LatentPrior) -> dict[str, Any]:
    """``{"name", "kwargs"}`` for a built-in prior; ``{"custom": qualified class name}`` otherwise.

    Examples
    --------
    >>> from pyrovi.priors import MixtureOfGaussians
    >>> prior_to_config(MixtureOfGaussians(5))["name"]
    'MixtureOfGaussians'
    """
    if BUILTIN_PRIORS.get(type(prior).__name__) is type(prior):
        return prior.config()
    return {"custom": f"{type(prior).__module__}.{type(prior).__qualname__}"}


def prior_from_config(config: dict[str, Any]) -> LatentPrior:
    """Rebuild a built-in prior from :func:`prior_to_config`; a custom one must be passed by the user.

    Examples
    --------
    >>> prior_from_config({"name": "StudentT", "kwargs": {"df": 5.0}})
    StudentT()
    """
    if "custom" in config:
        raise ValueError(
            f"This model was saved with a user-defined prior ({config['custom']}); its weights are in the "
            "saved file but its code is not. Pass an instance to load: `Model.load(path, adata, "
            "prior=MyPrior(...))`."
        )
    name, kwargs = config.get("name"), config.get("kwargs", {})
    # Only the built-in priors are looked up by name: a saved file never names code to import or call.
    if not isinstance(name, str) or name not in BUILTIN_PRIORS:
        raise ValueError(f"unknown prior {name!r}; the built-in priors are {sorted(BUILTIN_PRIORS)}.")
    if not isinstance(kwargs, dict):
        raise ValueError(f"the arguments of prior {name} must be a JSON object, got {kwargs!r}.")
    try:
        return BUILTIN_PRIORS[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"prior {name} cannot be built from the arguments {kwargs!r}: {err}") from err


def distribution_to_config(d: dist.Distribution) -> dict[str, Any]:
    """Name and parameters (as lists) of a Pyro distribution with tensor parameters.

    Examples
    --------
    >>> distribution_to_config(dist.LogNormal(0.0, 1.0))
    {'name': 'LogNormal', 'args': {'loc': 0.0, 'scale': 1.0}}
    """
    name = type(d).__name__
    if getattr(dist, name, None) is not type(d):
        raise ValueError(
            f"Only pyro.distributions classes can be saved by name; got {type(d).__qualname__}."
        )
    given = set(d.__dict__)  # before getattr: reading a lazy property stores it in __dict__
    args = {}
    for key in d.arg_constraints:
        value = getattr(d, key, None)  # a property for transformed distributions such as LogNormal
        if torch.is_tensor(value):
            args[key] = value.detach().cpu().tolist()
    for a, b in (("probs", "logits"), ("logits", "probs")):
        # lazily derived twins: keep only the parameterisation the user gave
        if a in args and b in args and a not in given:
            del args[a]
    return {"name": name, "args": args}


def distribution_from_config(config: dict[str, Any]) -> dist.Distribution:
    """Inverse of :func:`distribution_to_config`.

    Only classes of ``pyro.distributions`` are built, and only from numbers: ``pyro.distributions`` also
    holds functions (``enable_validation``...), which a saved file must not be able to call.

    Examples
    --------
    >>> distribution_from_config({"name": "LogNormal", "args": {"loc": 0.0, "scale": 1.0}})
    LogNormal()
    >>> distribution_from_config({"name": "enable_validation", "args": {}})
    Traceback (most recent call last):
    ...
    ValueError: 'enable_validation' is not a distribution of pyro.distributions.
    """
    name, args = config.get("name"), config.get("args", {})
    cls = getattr(dist, name, None) if isinstance(name, str) and not name.startswith("_") else None
    if not (isinstance(cls, type) and issubclass(cls, torch.distributions.Distribution)):
        raise ValueError(f"{name!r} is not a distribution of pyro.distributions.")
    if not isinstance(args, dict):
        raise ValueError(f"the parameters of {name} must be a JSON object, got {args!r}.")
    try:
        return cls(**{k: torch.tensor(v) for k, v in args.items()})
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} cannot be built from the parameters {args!r}: {err}") from err
