"""Every cross-rank reduction puts its tensor on the process group's device (NCCL reduces CUDA tensors only).

CI has no GPU and runs gloo, where a CPU tensor is right, so these tests use a context whose collective device is
``meta`` and a recording stand-in for torch.distributed: a reduction that allocated on the CPU (the NCCL crash of
issue #12) is caught without any GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from nvfp4.train import distributed as D

META = torch.device("meta")
CTX = D.DistContext("ddp", rank=0, world_size=2, local_rank=0, owns_group=False, collective_device=META)


class _Reached(Exception):
    """Raised by the stand-in collective once it has recorded its tensor (meta tensors cannot be read back)."""


@pytest.fixture
def record(monkeypatch):
    devices: list[torch.device] = []

    def all_reduce(tensor, op=None, group=None, async_op=False):
        devices.append(tensor.device)
        raise _Reached

    def broadcast_object_list(objects, src=0, group=None, device=None):
        devices.append(torch.device(device) if device is not None else torch.device("cpu"))
        raise _Reached

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast_object_list)
    return devices


CALLS = {
    "sum_floats": lambda: D.sum_floats([1.0, 2.0], CTX),
    "any_rank": lambda: D.any_rank(True, CTX),
    "mean": lambda: D.mean(torch.ones((), device=META), CTX),
    "mean_of_a_cpu_value": lambda: D.mean(torch.ones(()), CTX),
    "all_reduce_max": lambda: D.all_reduce_max(torch.ones((), device=META)),
    "broadcast_object": lambda: D.broadcast_object(True, CTX),
}


@pytest.mark.parametrize("name", CALLS)
def test_collective_runs_on_the_group_device(record, name):
    with pytest.raises(_Reached):
        CALLS[name]()
    assert record == [META], f"{name} handed a tensor on {record} to the collective, not on the group's device"


def test_single_process_makes_no_collective(record):
    solo = D.DistContext()
    assert D.sum_floats([1.0], solo) == [1.0]
    assert D.any_rank(False, solo) is False
    assert D.broadcast_object(3, solo) == 3
    assert record == []


def test_gloo_group_reduces_on_cpu_and_nccl_on_the_gpu(monkeypatch):
    """setup() picks the collective device from the group's backend."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    for backend, device in (("gloo", "cpu"), ("nccl", "cuda")):
        monkeypatch.setattr(dist, "get_backend", lambda b=backend: b)
        monkeypatch.setattr(
            D, "resolve_device", lambda d, r=0, dev=device: torch.device(dev, 0) if dev == "cuda" else torch.device(dev)
        )
        ctx, _ = D.setup("ddp", device)
        assert ctx.collective_device.type == device
