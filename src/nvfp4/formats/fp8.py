"""Blockwise FP8 (E4M3) with FP32 scales amax_b / 448: the paper's FP8 baseline (DeepSeek-V3 style)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nvfp4.formats._validate import ceil_div

E4M3_MAX = 448.0
FP8_TILES = ((1, 128), (128, 128))
_SMALLEST_SUBNORMAL = torch.finfo(torch.float32).smallest_normal * 2.0**-23


@dataclass
class FP8Tensor:
    data: torch.Tensor  # float8_e4m3fn (M, K)
    scales: torch.Tensor  # float32 (M, ceil(K/B)); a 128x128 tile's scale repeated over its rows
    shape: torch.Size
    tile: tuple[int, int]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        block = self.tile[1]
        scale = self.scales.repeat_interleave(block, dim=1)[:, : self.shape[-1]]
        return (self.data.to(torch.float32) * scale).to(dtype).reshape(self.shape)


def reference_quantize_fp8_2d(x2d: torch.Tensor, tile: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 values x / s_b (RNE, saturating at ±448) with s_b = amax_b / 448 in FP32: (data (M, K), scales).

    An all-zero block gets scale 1; a block whose amax is NaN/Inf gets a NaN scale (and NaN data).
    """
    rows, cols = x2d.shape
    tr, tc = tile
    prow, pcol = ceil_div(rows, tr) * tr, ceil_div(cols, tc) * tc
    xp = torch.nn.functional.pad(x2d.to(torch.float32), (0, pcol - cols, 0, prow - rows))
    block_amax = xp.abs().view(prow // tr, tr, pcol // tc, tc).amax(dim=(1, 3))
    scale = block_amax / torch.full_like(block_amax, E4M3_MAX)  # a true FP32 division (no scalar divisor on CUDA)
    # amax 0: any scale gives zeros, use 1; an underflowed scale (amax < ~6e-43) uses the smallest subnormal.
    scale = torch.where(scale > 0, scale, torch.where(block_amax > 0, _SMALLEST_SUBNORMAL, 1.0)).to(torch.float32)
    scale = torch.where(torch.isfinite(block_amax), scale, float("nan"))
    full_scale = scale.repeat_interleave(tr, dim=0).repeat_interleave(tc, dim=1)
    data = torch.clamp(xp / full_scale, -E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    scales = scale.repeat_interleave(tr, dim=0)[:rows]
    return data[:rows, :cols], scales
