"""Every ```python block of README.md and docs/**/*.md runs as written, on the bundled data.

One test per page: the page's blocks run top to bottom in one fresh namespace (as a reader pastes them into
one notebook), in a temporary working directory (pages save models), with matplotlib's non-interactive
backend. A block whose first line is ``# not run: <reason>`` (a GPU, a cluster, a user's own file, an
excerpt of pyrovi's source) is skipped.

Shortened training, the one difference from a reader's run: every ``train`` call of the models
(``BaseModelClass.train``, ``TOTALVI.train``, ``CellAssign.train``) is capped at ``PYROVI_DOCS_MAX_EPOCHS``
epochs (default 2; set the environment variable to run the pages with more). The pages' code is unchanged.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SKIP_MARK = "# not run:"
_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def _blocks(page: Path) -> list[str]:
    return _BLOCK.findall(page.read_text(encoding="utf-8"))


def _runnable(block: str) -> bool:
    return not block.lstrip().startswith(SKIP_MARK)


def _capped(train, max_epochs: int):
    signature = inspect.signature(train)

    @functools.wraps(train)
    def capped(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        requested = bound.arguments["max_epochs"]
        bound.arguments["max_epochs"] = max_epochs if requested is None else min(requested, max_epochs)
        return train(*bound.args, **bound.kwargs)

    return capped


@pytest.fixture
def short_training(monkeypatch):
    """Caps every model's ``train`` at ``PYROVI_DOCS_MAX_EPOCHS`` epochs (default 2)."""
    import pyrovi.model
    from pyrovi.model.base import BaseModelClass

    max_epochs = int(os.environ.get("PYROVI_DOCS_MAX_EPOCHS", "2"))
    for cls in (BaseModelClass, pyrovi.model.TOTALVI, pyrovi.model.CellAssign):
        if "train" in vars(cls):
            monkeypatch.setattr(cls, "train", _capped(vars(cls)["train"], max_epochs))


PAGES_WITH_CODE = [p for p in PAGES if any(_runnable(b) for b in _blocks(p))]


def test_skip_marks_name_a_reason() -> None:
    for page in PAGES:
        for block in _blocks(page):
            first = block.lstrip().splitlines()[0] if block.strip() else ""
            if first.startswith(SKIP_MARK):
                assert first[len(SKIP_MARK) :].strip(), f"{page.name}: '# not run:' without a reason"


def test_harness_caps_epochs_and_skips_marked_blocks() -> None:
    def train(self, max_epochs: int | None = None, lr: float = 1e-3):
        return max_epochs

    capped = _capped(train, 2)
    assert capped(None) == 2 and capped(None, 50) == 2 and capped(None, max_epochs=1) == 1
    assert capped(None, lr=0.1) == 2  # a default of None (the model's own number of epochs) is capped too
    assert not _runnable("# not run: needs a GPU\nmodel.train()\n") and _runnable("model.train()\n")
    assert _blocks(ROOT / "README.md"), "README.md has no python block"


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_blocks_run(page: Path, tmp_path: Path, monkeypatch, short_training) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import pyrovi

    monkeypatch.chdir(tmp_path)
    # pages change global settings; restore them for the tests that follow
    for name in ("seed", "batch_size", "encode_batch_size", "progress_bar", "verbosity"):
        if hasattr(pyrovi.settings, name):
            monkeypatch.setattr(pyrovi.settings, name, getattr(pyrovi.settings, name))
    pyrovi.settings.progress_bar = False
    namespace: dict = {"__name__": "__main__"}
    try:
        for number, block in enumerate(_blocks(page)):
            if _runnable(block):
                exec(compile(block, f"{page.relative_to(ROOT)} (python block {number})", "exec"), namespace)
    finally:
        plt.close("all")
