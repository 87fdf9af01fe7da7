import pytest
import torch


@pytest.fixture
def one_thread():
    """Run torch on one thread: on a busy 2-core machine OpenMP's second thread makes the small tensor
    ops of the evaluation tests many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
