"""The backend ops as PyTorch custom operators, so that ``torch.compile`` sees through ``nvfp4.Linear``.

A fast backend is opaque to the compiler (ctypes calls into C, Triton launches, or the reference's data-dependent
NaN checks), so each op the layer calls is registered with ``torch.library.custom_op`` and given a *fake*
implementation that only computes output shapes and dtypes. Dynamo then traces the layer, its autograd function and
the whole model into one graph (``fullgraph=True`` works) while the kernels run as they do eagerly.

In eager mode the same Python implementation is called directly: custom-op dispatch costs host time that would
add up over six operands per layer per step. Both paths run the same function, so compiled and
eager results are the same bits.

The stochastic-rounding stream crosses as (``seed``, ``stream``, ``call``): ``call`` is the layer's call counter as
a 0-d int64 tensor (a tensor, so a compiled graph reads its current value instead of baking in a constant and
recompiling every step), and the offset is ``stream + OPERAND_COUNT * call`` (see ``nvfp4.linear._sr_stream``).
A CPU counter gives an int offset; a GPU counter gives a 0-d device tensor that the Triton kernels read
themselves, so no step syncs and a captured CUDA graph sees the counter advance. Each op builds one frozen
``QuantSpec`` per operand configuration (cached) and makes one ``quantize`` call on the backend.
"""

from __future__ import annotations

import functools

import torch

from nvfp4.formats.nvfp4 import BLOCK
from nvfp4.kernels.contract import QuantSpec
from nvfp4.recipe import OPERANDS

OPERAND_COUNT = len(OPERANDS)
_U64 = (1 << 64) - 1


def signed64(value: int) -> int:
    """A 64-bit unsigned value (SR seeds are) as the int64 a custom-op schema carries; undone by ``& 2**64-1``."""
    value &= _U64
    return value - (1 << 64) if value >= 1 << 63 else value


def sr_offset(stream: int, call: torch.Tensor | int) -> int | torch.Tensor:
    """stream + OPERAND_COUNT * call (mod 2^64): an int for a host counter, a 0-d int64 device tensor for a counter
    on a GPU (read there by the kernel: no sync, and a captured CUDA graph replays the advancing value)."""
    if isinstance(call, torch.Tensor) and call.device.type != "cpu":
        return device_offset(stream, call)
    return (stream + OPERAND_COUNT * int(call)) & _U64


def device_offset(stream: int, call: torch.Tensor) -> torch.Tensor:
    """The offset as a 0-d int64 tensor on the counter's device: int64 arithmetic wraps mod 2^64, so its bits are
    those of the host offset (the kernels read them as uint64)."""
    return call * OPERAND_COUNT + signed64(stream)


def _select(backend: str, device: torch.device):
    from nvfp4 import kernels

    return kernels.select(backend, device)


@functools.cache
def _spec(
    fmt: str,
    tile: tuple[int, int],
    stochastic: bool,
    transpose: bool,
    rht: int | None,
    out_dtype: torch.dtype | None,
    four_over_six: bool = False,
) -> QuantSpec:
    """One frozen spec per operand configuration (built once, then a dict hit on the hot path)."""
    return QuantSpec(fmt, tile, bool(stochastic), bool(transpose), rht, "ceil", out_dtype, bool(four_over_six))


def _logical_shape(x: torch.Tensor, transpose: bool) -> tuple[int, int]:
    return (x.shape[1], x.shape[0]) if transpose else (x.shape[0], x.shape[1])


def _own(t: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """Custom ops may not return (a view of) an input: copy a passed-through amax."""
    if source is not None and t.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
        return t.clone()
    return t


def _rht(signs: torch.Tensor | None) -> int | None:
    return None if signs is None else int(signs.numel())


# -- NVFP4 ----------------------------------------------------------------------------------------------------------


def _nvfp4_values(
    x: torch.Tensor,
    amax: torch.Tensor | None,
    tile_rows: int,
    stochastic: bool,
    seed: int,
    stream: int,
    call: torch.Tensor,
    transpose: bool,
    signs: torch.Tensor | None,
    backend: str,
    four_over_six: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    spec = _spec("nvfp4", (tile_rows, 16), stochastic, transpose, _rht(signs), torch.bfloat16, four_over_six)
    q = _select(backend, x.device).quantize(x, spec, amax=amax, signs=signs, seed=seed, offset=sr_offset(stream, call))
    return q.data, _own(q.amax, amax)


def _nvfp4_packed(
    x: torch.Tensor,
    amax: torch.Tensor | None,
    tile_rows: int,
    stochastic: bool,
    seed: int,
    stream: int,
    call: torch.Tensor,
    transpose: bool,
    signs: torch.Tensor | None,
    backend: str,
    four_over_six: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    spec = _spec("nvfp4", (tile_rows, 16), stochastic, transpose, _rht(signs), None, four_over_six)
    q = _select(backend, x.device).quantize(x, spec, amax=amax, signs=signs, seed=seed, offset=sr_offset(stream, call))
    return q.data, q.scales, _own(q.amax, amax)


def _nvfp4_scaled_values(packed: torch.Tensor, scales: torch.Tensor, backend: str) -> torch.Tensor:
    return _select(backend, packed.device).scaled_values(packed, scales, torch.bfloat16)


def _mxfp4_values(
    x: torch.Tensor,
    stochastic: bool,
    seed: int,
    stream: int,
    call: torch.Tensor,
    transpose: bool,
    signs: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    spec = _spec("mxfp4", (1, 32), stochastic, transpose, _rht(signs), torch.bfloat16)
    return _select(backend, x.device).quantize(x, spec, signs=signs, seed=seed, offset=sr_offset(stream, call)).data


def _fp8_values(x: torch.Tensor, tile_rows: int, tile_cols: int, transpose: bool, backend: str) -> torch.Tensor:
    spec = _spec("fp8", (tile_rows, tile_cols), False, transpose, None, torch.float32)
    return _select(backend, x.device).quantize(x, spec).data


def _mxfp8_values(x: torch.Tensor, transpose: bool, backend: str) -> torch.Tensor:
    spec = _spec("mxfp8", (1, 32), False, transpose, None, torch.bfloat16)
    return _select(backend, x.device).quantize(x, spec).data


def _fp8_packed(
    x: torch.Tensor, tile_rows: int, tile_cols: int, transpose: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    q = _select(backend, x.device).quantize(x, _spec("fp8", (tile_rows, tile_cols), False, transpose, None, None))
    return q.data, q.scales


# -- the CPU GEMM with the tensor scale in its accumulator -----------------------------------------------------------


def _cpu_scaled_mm(
    a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None, out_dtype: torch.dtype
) -> torch.Tensor:
    """(a · bᵀ) · scale for BF16 a, b on the CPU: addmm applies alpha to the FP32 accumulator, then rounds once.

    A custom op under compile because alpha must be a Python float (reading the 0-d CPU scale; no GPU involved).
    A non-finite scale (a NaN/Inf operand) takes the FP32 path so that NaN propagates as it does eagerly.
    """
    if scale is None or bool(torch.isfinite(scale)):
        alpha = 1.0 if scale is None else float(scale)
        zero = torch.zeros((), dtype=a.dtype, device=a.device)
        return torch.addmm(zero, a, b.t(), beta=0, alpha=alpha).to(out_dtype)
    return ((a.float() @ b.float().t()) * scale).to(out_dtype)


# -- registration -------------------------------------------------------------------------------------------------

_ops = {
    name: torch.library.custom_op(f"nvfp4::{name}", mutates_args=())(fn)
    for name, fn in (
        ("nvfp4_values", _nvfp4_values),
        ("nvfp4_packed", _nvfp4_packed),
        ("nvfp4_scaled_values", _nvfp4_scaled_values),
        ("mxfp4_values", _mxfp4_values),
        ("fp8_values", _fp8_values),
        ("fp8_packed", _fp8_packed),
        ("mxfp8_values", _mxfp8_values),
        ("cpu_scaled_mm", _cpu_scaled_mm),
    )
}


@_ops["nvfp4_values"].register_fake
def _(x, amax, tile_rows, stochastic, seed, stream, call, transpose, signs, backend, four_over_six=False):
    rows, cols = _logical_shape(x, transpose)
    return x.new_empty((rows, cols), dtype=torch.bfloat16), x.new_empty((), dtype=torch.float32)


@_ops["nvfp4_packed"].register_fake
def _(x, amax, tile_rows, stochastic, seed, stream, call, transpose, signs, backend, four_over_six=False):
    rows, cols = _logical_shape(x, transpose)
    nblk = -(-cols // BLOCK)
    return (
        x.new_empty((rows, nblk * 8), dtype=torch.uint8),
        x.new_empty((rows, nblk), dtype=torch.float8_e4m3fn),
        x.new_empty((), dtype=torch.float32),
    )


@_ops["nvfp4_scaled_values"].register_fake
def _(packed, scales, backend):
    return packed.new_empty((packed.shape[0], packed.shape[1] * 2), dtype=torch.bfloat16)


@_ops["mxfp4_values"].register_fake
def _(x, stochastic, seed, stream, call, transpose, signs, backend):
    return x.new_empty(_logical_shape(x, transpose), dtype=torch.bfloat16)


@_ops["fp8_values"].register_fake
def _(x, tile_rows, tile_cols, transpose, backend):
    return x.new_empty(_logical_shape(x, transpose), dtype=torch.float32)


@_ops["fp8_packed"].register_fake
def _(x, tile_rows, tile_cols, transpose, backend):
    rows, cols = _logical_shape(x, transpose)
    return (
        x.new_empty((rows, cols), dtype=torch.float8_e4m3fn),
        x.new_empty((rows, -(-cols // tile_cols)), dtype=torch.float32),
    )


@_ops["mxfp8_values"].register_fake
def _(x, transpose, backend):
    return x.new_empty(_logical_shape(x, transpose), dtype=torch.bfloat16)


@_ops["cpu_scaled_mm"].register_fake
def _(a, b, scale, out_dtype):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


def _dispatch(name: str, eager):
    op = _ops[name]

    def call(*args):
        return op(*args) if torch.compiler.is_compiling() else eager(*args)

    call.__name__ = name
    call.__doc__ = eager.__doc__
    return call


nvfp4_values = _dispatch("nvfp4_values", _nvfp4_values)
nvfp4_packed = _dispatch("nvfp4_packed", _nvfp4_packed)
nvfp4_scaled_values = _dispatch("nvfp4_scaled_values", _nvfp4_scaled_values)
mxfp4_values = _dispatch("mxfp4_values", _mxfp4_values)
fp8_values = _dispatch("fp8_values", _fp8_values)
fp8_packed = _dispatch("fp8_packed", _fp8_packed)
mxfp8_values = _dispatch("mxfp8_values", _mxfp8_values)
cpu_scaled_mm = _dispatch("cpu_scaled_mm", _cpu_scaled_mm)
