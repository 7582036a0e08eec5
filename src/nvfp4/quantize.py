"""The public quantizers: validate the input, then run the selected backend (SPEC §2, §3).

This module sits above both ``nvfp4.formats`` (the tensor types and the reference arithmetic, which import nothing
fast) and ``nvfp4.kernels`` (the backends, which implement the reference's results bit for bit). Every backend,
``"reference"`` included, gives the same bits; ``"auto"`` picks the fastest one available for the input's device.
"""

from __future__ import annotations

import torch

from nvfp4 import kernels
from nvfp4.formats._validate import as_2d, check_finite_strict, check_float_input, check_tile
from nvfp4.formats.fouroversix import tensor_scale_numerator
from nvfp4.formats.fp8 import FP8_TILES, FP8Tensor
from nvfp4.formats.mxfp4 import SCALE_RULES, MXFP4Tensor
from nvfp4.formats.mxfp8 import MXFP8Tensor
from nvfp4.formats.nvfp4 import NVFP4_TILES, NVFP4Tensor

__all__ = ["quantize_fp8_blockwise", "quantize_mxfp4", "quantize_mxfp8", "quantize_nvfp4"]


def _checked_2d(x: torch.Tensor, strict: bool) -> torch.Tensor:
    check_float_input(x)
    x2d = as_2d(x)
    if strict:
        check_finite_strict(x2d)
    return x2d


def _caller_amax(global_amax: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    amax = torch.as_tensor(global_amax, dtype=torch.float32, device=device).reshape(())
    if bool(amax < 0) or bool(torch.signbit(amax) & (amax == 0)):
        raise ValueError(f"global_amax must be >= 0 (a max of absolute values), got {float(amax)}")
    return amax


def quantize_nvfp4(
    x: torch.Tensor,
    tile: tuple[int, int] = (1, 16),
    stochastic: bool = False,
    seed: int = 0,
    global_amax: torch.Tensor | float | None = None,
    *,
    offset: int = 0,
    strict: bool = False,
    backend: str = "auto",
    four_over_six: bool = False,
) -> NVFP4Tensor:
    """Quantize ``x`` to NVFP4 along its last dim (SPEC §2, §3).

    tile: (1, 16) blocks, or (16, 16) tiles for weights (so W and Wᵀ quantize identically).
    stochastic: SR with random bytes keyed by (seed, offset, element index) — same bits anywhere.
    global_amax: a caller-reduced amax (e.g. across ranks); must be >= max|x|.
    strict: raise ``NonFiniteError`` on NaN/Inf instead of propagating NaN into the scales.
    backend: "auto" (fastest available for the device), "reference", or a name from
    ``nvfp4.kernels.available_backends()``.
    four_over_six: Four Over Six block scales (``nvfp4.formats.fouroversix``): each block keeps the better of its
    amax/6 and amax/4 scales; the tensor scale targets 256 (with 16/17 headroom under SR). ``dequantize()`` knows.
    """
    tile = check_tile(tile, NVFP4_TILES)
    x2d = _checked_2d(x, strict)
    impl = kernels.select(backend, x2d.device)
    amax = impl.amax(x2d) if global_amax is None else _caller_amax(global_amax, x2d.device)
    packed, scales = impl.quantize_nvfp4(
        x2d, amax, tile[0], bool(stochastic), int(seed), int(offset), four_over_six=bool(four_over_six)
    )
    numerator = tensor_scale_numerator(bool(four_over_six), bool(stochastic))
    return NVFP4Tensor(packed, scales, amax, x.shape, tile, backend, numerator)


def quantize_mxfp4(
    x: torch.Tensor,
    stochastic: bool = False,
    seed: int = 0,
    *,
    offset: int = 0,
    scale_rule: str = "ceil",
    strict: bool = False,
    backend: str = "auto",
) -> MXFP4Tensor:
    """Quantize ``x`` to MXFP4 along its last dim (32-blocks, E8M0 scales; rules in ``nvfp4.formats.mxfp4``).

    scale_rule: "ceil" (the paper's MXFP4 baseline, no saturation) or "floor" (OCP MX v1.0).
    backend: "auto" (fastest available for the device) or "reference"; every backend gives the same bits.
    """
    if scale_rule not in SCALE_RULES:
        raise ValueError(f"scale_rule={scale_rule!r} is not supported; accepted: {', '.join(SCALE_RULES)}")
    x2d = _checked_2d(x, strict)
    impl = kernels.select(backend, x2d.device)
    packed, scales = impl.quantize_mxfp4(x2d, bool(stochastic), int(seed), int(offset), scale_rule=scale_rule)
    return MXFP4Tensor(packed=packed, scales=scales, shape=x.shape)


def quantize_fp8_blockwise(
    x: torch.Tensor, tile: tuple[int, int] = (1, 128), *, strict: bool = False, backend: str = "auto"
) -> FP8Tensor:
    """E4M3 values x / s_b (RNE, saturating at ±448) with FP32 block scales s_b = amax_b / 448 (the paper's FP8
    baseline). tile: (1, 128) blocks or (128, 128) tiles. An all-zero block gets scale 1; a NaN/Inf block a NaN
    scale (and NaN data)."""
    tile = check_tile(tile, FP8_TILES)
    x2d = _checked_2d(x, strict)
    data, scales = kernels.select(backend, x2d.device).quantize_fp8(x2d, tile)
    return FP8Tensor(data=data, scales=scales, shape=x.shape, tile=tile)


def quantize_mxfp8(x: torch.Tensor, *, strict: bool = False, backend: str = "auto") -> MXFP8Tensor:
    """Quantize ``x`` to MXFP8 along its last dim: E4M3 values in 32-blocks with E8M0 scales rounded up (Transformer
    Engine's MXFP8 arithmetic; rules in ``nvfp4.formats.mxfp8``)."""
    x2d = _checked_2d(x, strict)
    data, scales = kernels.select(backend, x2d.device).quantize_mxfp8(x2d)
    return MXFP8Tensor(data=data, scales=scales, shape=x.shape)
