"""Data parallelism for the trainer: process group set-up, DDP / FSDP2 wrapping, cross-rank reductions.

Launch with ``torchrun --nproc-per-node N -m nvfp4.cli train --distributed ddp ...``. Every rank
builds the same model from the same seed and converts it *before* wrapping, so the quantized
layers exist when DDP/FSDP register their hooks. With FSDP2 each rank stores a shard of every
weight, but a layer only ever runs on the all-gathered full weight, so every rank quantizes the
same bytes: the NVFP4 tensor scale (from the weight's amax) is identical without any extra
collective. ``all_reduce_max`` is the reducer for layers that really see a shard (tensor
parallelism). Gloo serves CPU runs (tests, laptops), NCCL serves GPUs.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import nvfp4


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the job; ``mode`` "none" is a single process."""

    mode: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this trainer created the process group, so it destroys it
    # Where collectives' tensors must live: NCCL reduces CUDA tensors only (a CPU tensor on an NCCL group fails),
    # gloo reduces CPU tensors. Every reduction below allocates on this device.
    collective_device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but no CUDA device is available; use --device cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(mode: str, device: str) -> tuple[DistContext, torch.device]:
    """Join (or create) the process group torchrun describes in the environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if mode == "none":
        if world_size > 1:
            raise ValueError(
                f"started by a launcher with WORLD_SIZE={world_size} but distributed='none'; "
                "pass --distributed ddp (or fsdp)"
            )
        return DistContext(), resolve_device(device)
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; use --distributed none")
    if not dist.is_initialized() and "RANK" not in os.environ:
        raise ValueError(
            f"--distributed {mode} needs a launcher: run `torchrun --nproc-per-node N -m nvfp4.cli train ...`"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device, local_rank)
    owns = False
    if not dist.is_initialized():
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        dist.init_process_group("nccl" if torch_device.type == "cuda" else "gloo")
        owns = True
    collective = torch_device if dist.get_backend() == "nccl" else torch.device("cpu")
    ctx = DistContext(mode, dist.get_rank(), dist.get_world_size(), local_rank, owns, collective)
    return ctx, torch_device


def teardown(ctx: DistContext) -> None:
    """Destroy the process group this trainer created, after the DDP/FSDP objects that use it.

    torch/gloo can deadlock at exit: when the group's last reference is dropped while the GIL is held
    (for instance by a DDP reducer freed after ``destroy_process_group``), the group's destructor
    joins gloo's worker threads, and a worker still releasing a finished collective waits for the GIL
    to free its tensors. So: free the wrappers while the group is registered (``gc.collect``; the
    trainer has dropped its references), synchronize, and give the workers a moment without the GIL.
    """
    if ctx.owns_group and dist.is_initialized():
        gc.collect()
        dist.barrier()
        time.sleep(0.1)  # releases the GIL: gloo's workers finish dropping completed work
        dist.destroy_process_group()


def all_reduce_max(amax: torch.Tensor) -> torch.Tensor:
    """The amax reducer for sharded weights: the global max, NaN if any rank saw a non-finite value.

    A MAX all-reduce alone may drop a NaN (comparisons with NaN are false), so the non-finite
    flag travels in a second slot of the same collective.
    """
    local = amax.detach().float().reshape(-1)
    packed = torch.cat([torch.nan_to_num(local, nan=0.0, posinf=0.0), (~torch.isfinite(local)).float()])
    dist.all_reduce(packed, op=dist.ReduceOp.MAX)
    n = local.numel()
    result = torch.where(packed[n:] > 0, torch.full_like(packed[:n], float("nan")), packed[:n])
    return result.reshape(amax.shape).to(amax.dtype)


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """DDP or FSDP2 around an already converted model; the model itself when not distributed."""
    if ctx.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if ctx.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:  # one all-gather per block: the unit FSDP overlaps with compute
            fully_shard(block)
        fully_shard(model)
        # No amax reducer: FSDP2 all-gathers the full weight before a layer runs, so every rank already
        # quantizes the same bytes with the same amax. A collective inside the layer would also deadlock,
        # because the layer's weight cache can hit on one rank and miss on another (see docs/training.md).
        nvfp4.set_amax_reducer(model, None)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under torch.compile and DDP wrappers (FSDP2 shards in place: no wrapper)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, ctx: DistContext, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on non-final micro-batches of gradient accumulation."""
    inner = getattr(model, "_orig_mod", model)
    if sync or ctx.mode == "none":
        yield
    elif ctx.mode == "ddp":
        with inner.no_sync():
            yield
    else:  # FSDP2
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)


def mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Average a scalar tensor over the ranks (the logged loss of the global batch)."""
    if ctx.world_size == 1:
        return value
    reduced = value.detach().float().to(ctx.collective_device, copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return (reduced / ctx.world_size).to(value.device)


def sum_floats(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sums over the ranks (in float64, for loss sums and token counts)."""
    if ctx.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.collective_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if it is True on one (a Ctrl-C seen by a single rank stops them all together)."""
    if ctx.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.collective_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's value of a picklable object on every rank."""
    if ctx.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=ctx.collective_device)
    return box[0]


# -- state dicts: full (unsharded) tensors on CPU, written by rank 0 -----------------------------------


def model_state_dict(model: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """The full model state (a collective under FSDP: every rank must call it)."""
    if ctx.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext) -> dict[str, Any]:
    if ctx.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)
    return _to_cpu(optimizer.state_dict())


def load_model_state_dict(model: nn.Module, state: dict[str, torch.Tensor], ctx: DistContext) -> None:
    if ctx.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    else:
        unwrap(model).load_state_dict(state)


def load_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], ctx: DistContext
) -> None:
    if ctx.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


def optimizer_state_format(ctx: DistContext) -> str:
    """FSDP optimizer states are keyed by parameter name, plain ones by index: they do not mix."""
    return "fqn" if ctx.mode == "fsdp" else "index"


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
