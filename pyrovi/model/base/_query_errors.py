"""Errors for data given to a built model (queries, loading) that the model has no parameters for."""

from __future__ import annotations

from ...data import UnseenCategoryError


def unknown_to_model(err: UnseenCategoryError, model_name: str) -> UnseenCategoryError:
    """The error for new data with categories a model was not built for, with the fixes a model allows.

    A model has one embedding (or one-hot column) per registered category, so it cannot take new ones as it is:
    ``load_query_data`` builds a query model with weights for them.
    """
    return UnseenCategoryError(
        f"{err.source} has {len(err.unseen)} categor{'ies' if len(err.unseen) > 1 else 'y'} the {model_name} "
        f"model was not built with: {err.unseen[:10]}{' ...' if len(err.unseen) > 10 else ''}. It knows "
        f"{err.categories[:10]}{' ...' if len(err.categories) > 10 else ''} and has no parameters for other "
        "categories. To learn weights for new batches or covariate categories from the query while keeping the model's "
        f"own, map it: {model_name}.load_query_data(adata, model) (see the query mapping guide); or map those cells to "
        "a known category.",
        err.source,
        err.unseen,
        err.categories,
    )
