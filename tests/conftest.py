"""Suite-wide setting: tiny models on a small, often shared CPU run on one thread.

One thread is faster for tensors this small, and on a loaded machine extra OpenMP threads spin and wait
(tiny runs were seen 30x slower). Scripts the tests start as subprocesses inherit OMP_NUM_THREADS.
"""

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_url():
    """The demo page (demo/app.py) with the toy model, served in this process once for the demo tests."""
    from tests.demo_server import served_demo

    with served_demo() as url:
        yield url
