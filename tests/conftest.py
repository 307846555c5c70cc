"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's tiny networks, restored afterwards.

    The networks in these tests are small: torch's intra-op threads gain little, and on a shared 2-core
    machine two threads per process made training steps 20-30x slower. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
