import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The planner tests run tiny tensors: one intra-op thread is far faster on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
