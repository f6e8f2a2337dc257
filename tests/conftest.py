"""Shared test setup: one intra-op thread for the whole session.

The tests run tiny workloads on a 2-core machine that is often shared; two spinning OpenMP
threads per process make them many times slower. The library itself never sets threads.
"""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
