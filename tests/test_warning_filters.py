"""The fit's warning filters: first in line, only in the fitting thread, and removed exactly."""

import threading
import warnings

import pytest

from pyrovi.train._warning_filters import lightning_warnings_ignored

WORKERS = "The 'train_dataloader' does not have many workers which may be a bottleneck."
RESUME = "Checkpoint directory /tmp/x exists and is not empty."


def test_silenced_ahead_of_an_error_filter_and_removed_afterwards_leaving_others_in_place():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # the same pattern, set before
        warnings.simplefilter("error")
        before = list(warnings.filters)
        with lightning_warnings_ignored(resuming=False):
            warnings.warn(WORKERS)  # silenced despite "error"
            with pytest.raises(UserWarning):
                warnings.warn(RESUME)  # only silenced when resuming
        assert list(warnings.filters) == before
        with lightning_warnings_ignored(resuming=True):
            warnings.warn(RESUME)
        assert list(warnings.filters) == before
        with pytest.raises(UserWarning):
            warnings.warn("something else")


def test_another_threads_warnings_are_not_silenced_and_overlapping_blocks_leave_nothing_behind():
    before = list(warnings.filters)
    entered, warned = threading.Event(), threading.Event()
    caught_in_thread = []

    def other():
        with lightning_warnings_ignored(resuming=False):  # overlaps the main thread's block
            entered.set()
            warned.wait(10)
        caught_in_thread.append(True)

    thread = threading.Thread(target=other)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thread.start()
        entered.wait(10)
        warnings.warn(WORKERS)  # this thread is not in a block: shown
        with lightning_warnings_ignored(resuming=False):
            warnings.warn(WORKERS)  # now silenced
            warned.set()
            thread.join(10)
    assert [str(w.message) for w in caught] == [WORKERS]
    assert caught_in_thread == [True]
    assert list(warnings.filters) == before
