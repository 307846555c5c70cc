"""Every public class and function has a docstring example that runs (``--doctest-modules pyrovi``).

"Public" is what pyrovi's public modules export in ``__all__``. An example whose every line is marked
``+SKIP`` does not count: ``+SKIP`` is kept for examples needing a GPU, minutes of training or the user's
own files. A new export without a running example fails here.
"""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

PUBLIC_MODULES = (
    "pyrovi",
    "pyrovi.data",
    "pyrovi.dataloaders",
    "pyrovi.datasets",
    "pyrovi.module",
    "pyrovi.module.nn",
    "pyrovi.module.distributions",
    "pyrovi.module.priors",
    "pyrovi.priors",
    "pyrovi.train",
    "pyrovi.model",
    "pyrovi.criticism",
    "pyrovi.criticism.plots",
    "pyrovi.utils",
    "pyrovi.external",
)


def _public_api() -> dict[str, object]:
    api: dict[str, object] = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                api.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return api


def _executed_examples(obj: object) -> list[doctest.Example]:
    examples = doctest.DocTestParser().get_examples(inspect.getdoc(obj) or "")
    return [example for example in examples if not example.options.get(doctest.SKIP, False)]


def test_the_public_api_is_found() -> None:
    api = _public_api()
    assert "pyrovi.model._scvi.SCVI" in api and "pyrovi.criticism._ppc.PosteriorPredictiveCheck" in api
    assert len(api) > 80


@pytest.mark.parametrize("qualified_name", sorted(_public_api()))
def test_public_object_has_an_executed_example(qualified_name: str) -> None:
    obj = _public_api()[qualified_name]
    # the example must be in the object's own docstring, where pytest's doctest collection finds it
    assert obj.__doc__, f"{qualified_name} has no docstring"
    assert _executed_examples(obj), (
        f"{qualified_name} has no docstring example that runs under --doctest-modules (all +SKIP or none): "
        "add one using the names conftest.py provides (adata, model, totalvi, cellassign, markers, ...)"
    )
