import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Detector tests use tiny models: intra-op threads only add contention on a shared
    2-core machine (measured 10-50x slower with 2 threads under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
