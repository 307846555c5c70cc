"""Lightning warnings that do not apply to pyrovi's fits, silenced for the fitting thread only while it fits."""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections.abc import Iterator

#: Lightning warnings that every pyrovi fit silences
IGNORED_WARNINGS = (
    # Minibatches are indexed whole in the main process, so worker processes would not help.
    ".*does not have many workers.*",
    # Raised inside Lightning for newer torch releases; nothing a user can act on.
    ".*isinstance.treespec, LeafSpec.*",
    # The plan moves its flat minibatch dicts itself (TrainingPlan.transfer_batch_to_device).
    ".*overridden `transfer_batch_to_device`.*",
    # Step-level logging is opt-in (plan_kwargs={"on_step": True}); short epochs are no mistake.
    ".*smaller than the logging interval.*",
)
#: and those a resumed fit silences too: resuming into the checkpoint's own directory, or without writing further
#: checkpoints, is what resume_from is for, not a mistake
IGNORED_WHEN_RESUMING = (
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*callbacks used to create the checkpoint need to be.*",
)


class _ThreadMessage:
    """A warning filter's message pattern that matches only in one thread.

    ``warnings`` calls a filter's ``message.match(text)``; this one answers for the thread that made it and
    no other, so a fit in one thread does not silence another thread's warnings.
    """

    def __init__(self, pattern: str, thread: int):
        self.pattern = pattern  # as re.Pattern names it, for code that lists the filters
        self._regex = re.compile(pattern, re.IGNORECASE)  # as warnings.filterwarnings compiles it
        self._thread = thread

    def match(self, text: str) -> re.Match | None:
        return self._regex.match(text) if threading.get_ident() == self._thread else None


def _filters_mutated() -> None:
    """Tell ``warnings`` its filter list changed (it caches decisions per filter-list version)."""
    mutated = getattr(warnings, "_filters_mutated", None) or getattr(warnings, "_filters_mutated_lock_held", None)
    if mutated is not None:
        mutated()


@contextlib.contextmanager
def lightning_warnings_ignored(resuming: bool) -> Iterator[None]:
    """Silence :data:`IGNORED_WARNINGS` (and :data:`IGNORED_WHEN_RESUMING`) in this thread inside the block.

    ``warnings.catch_warnings`` saves and restores the whole filter list, which is not safe when two threads
    fit at once (one thread's exit would drop the other's filters, or bring back its own for good). Each block
    instead puts its own filters first (ahead of any ``"error"`` filter, e.g. a test's), matching only in its
    own thread, and removes exactly those afterwards: filters set by anyone else stay as and where they are.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     with lightning_warnings_ignored(resuming=False):
    ...         warnings.warn("The 'train_dataloader' does not have many workers which may be a bottleneck.")
    >>> caught
    []
    """
    messages = IGNORED_WARNINGS + (IGNORED_WHEN_RESUMING if resuming else ())
    thread = threading.get_ident()
    own = [("ignore", _ThreadMessage(message, thread), Warning, None, 0) for message in messages]
    for entry in reversed(own):
        warnings.filters.insert(0, entry)
    _filters_mutated()
    try:
        yield
    finally:
        for entry in own:
            # by identity: equal-looking filters of others are never taken for this block's own
            index = next((i for i, other in enumerate(warnings.filters) if other is entry), None)
            if index is not None:
                del warnings.filters[index]
        _filters_mutated()
