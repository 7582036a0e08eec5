"""Fixtures shared by the kernel tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", params=["native", "portable"])
def cpu(request):
    """The C backend twice: the build for this CPU (AVX-512 here) and the portable scalar build."""
    from nvfp4.kernels.cpu import CPUBackend, build_library

    if request.param == "native":
        return CPUBackend.instance()
    return CPUBackend(build_library((("-fopenmp", "-DNVFP4_PORTABLE"), ("-DNVFP4_PORTABLE",))))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Run the reference single-threaded: on a shared machine its many small ops crawl when OpenMP threads wait
    for busy cores. The kernels' results do not depend on the thread count; the large-input tests use 2."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
