"""Feature-name lookups shared by the queries of every model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def feature_positions(names: Sequence[str], wanted: Sequence[str] | None, argument: str) -> np.ndarray | None:
    """Positions of ``wanted`` among ``names`` (``None`` when ``wanted`` is ``None``: all features).

    Raises a ValueError naming the unknown features and the argument that held them.

    Examples
    --------
    >>> feature_positions(["CD3D", "MS4A1", "LYZ"], ["LYZ", "CD3D"], "gene_list")
    array([2, 0])
    """
    if wanted is None:
        return None
    if isinstance(wanted, str):
        raise TypeError(
            f"{argument} must be a list of names, got the string {wanted!r:.80}; pass [{wanted!r:.80}] for one feature."
        )
    lookup = {name: i for i, name in enumerate(names)}
    missing = [name for name in wanted if name not in lookup]
    if missing:
        raise ValueError(f"{argument} holds features the model does not know: {missing[:10]}.")
    return np.array([lookup[name] for name in wanted], dtype=np.int64)
