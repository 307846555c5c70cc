"""The progress bar of the long checks: tqdm, shown only when ``pyrovi.settings.progress_bar`` is on."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from .._settings import settings


def progress(total: int, desc: str, unit: str) -> Any:
    """A tqdm bar of ``total`` steps, disabled when ``pyrovi.settings.progress_bar`` is False.

    It is a context manager: ``with progress(3, "Report", "step") as bar: bar.update()``. tqdm's ``auto``
    flavour draws a widget in notebooks and text in a terminal; the bar is left on screen when done.

    Examples
    --------
    >>> from pyrovi.criticism._progress import progress
    >>> with progress(2, "Example", "step") as bar:
    ...     bar.update(2)
    """
    return tqdm(total=total, desc=desc, unit=unit, disable=not settings.progress_bar, dynamic_ncols=True)
