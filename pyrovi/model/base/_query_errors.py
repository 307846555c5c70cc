"""Errors for data given to a built model (queries, loading) that the model has no parameters for."""

from __future__ import annotations

from ...data import UnseenCategoryError


def unknown_to_model(err: UnseenCategoryError, model_name: str) -> UnseenCategoryError:
    """The error for new data with categories a model was not built for, with the fixes a model allows.

    A model has one embedding (or one-hot column) per registered category, so it cannot take new ones: the
    data layer's ``extend_categories`` only helps before a model is built.
    """
    return UnseenCategoryError(
        f"{err.source} has {len(err.unseen)} categor{'ies' if len(err.unseen) > 1 else 'y'} the {model_name} "
        f"model was not built with: {err.unseen[:10]}{' ...' if len(err.unseen) > 10 else ''}. It knows "
        f"{err.categories[:10]}{' ...' if len(err.categories) > 10 else ''} and has no parameters for other "
        "categories. Map those cells to a known category, or set up and train a model on data that includes them.",
        err.source,
        err.unseen,
        err.categories,
    )
