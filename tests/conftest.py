"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small GEMMs: one intra-op thread avoids oversubscription on the 2-core CI machines."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
