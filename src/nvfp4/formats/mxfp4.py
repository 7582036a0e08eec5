"""MXFP4: E2M1 values in 32-element blocks with a power-of-two (UE8M0) scale, no tensor scale.

Two scale rules:
- "ceil" (default, the NVFP4 paper's MXFP4 baseline): scale = 2^ceil(log2(amax_b / 6)), so the
  block's largest value never exceeds 6 after scaling (no saturation).
- "floor" (OCP MX v1.0): scale = 2^(floor(log2(amax_b)) − 2); values above 6 saturate to ±6.
A block holding a NaN or an Inf gets the NaN scale (0xFF) and codes 0, so it dequantizes to NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nvfp4.formats._validate import ceil_div
from nvfp4.formats.e2m1 import (
    E2M1_MAX,
    e2m1_round_nearest,
    e2m1_round_stochastic,
    e2m1_values,
    pack_codes,
    unpack_codes,
)
from nvfp4.formats.rng import random_bytes

MX_BLOCK = 32
E8M0_BIAS = 127
E8M0_NAN = 0xFF
SCALE_RULES = ("ceil", "floor")


@dataclass
class MXFP4Tensor:
    packed: torch.Tensor  # uint8 (M, ceil(K/32)*16)
    scales: torch.Tensor  # float8_e8m0fnu (M, ceil(K/32))
    shape: torch.Size

    @property
    def cols(self) -> int:
        return self.shape[-1]

    def codes(self) -> torch.Tensor:
        return unpack_codes(self.packed)[:, : self.cols]

    def scale_exponents(self) -> torch.Tensor:
        """Unbiased int32 exponents e (scale = 2^e); NaN scales read as 128."""
        return self.scales.view(torch.uint8).to(torch.int32) - E8M0_BIAS

    def scaled_values(self, dtype: torch.dtype = torch.bfloat16, padded: bool = False) -> torch.Tensor:
        """value(q) · 2^e: exact in BF16 unless 2^e leaves BF16's exponent range."""
        codes = unpack_codes(self.packed)
        scale = self.scales.to(torch.float32).repeat_interleave(MX_BLOCK, dim=1)
        values = (e2m1_values(codes, torch.float32) * scale).to(dtype)
        return values if padded else values[:, : self.cols]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.scaled_values(torch.float32).to(dtype).reshape(self.shape)


def _block_exponents(block_amax: torch.Tensor, scale_rule: str) -> torch.Tensor:
    """Exact integer exponents from frexp (no log2 rounding): amax_b = m·2^k with m in [0.5, 1)."""
    mantissa, exp = torch.frexp(block_amax)
    if scale_rule == "ceil":
        # Smallest e with 6·2^e >= amax = m·2^k: e = k − 3 when m <= 0.75, else k − 2. Working on amax
        # itself (not amax/6, which rounds and can underflow) keeps this exact for every input.
        e = torch.where(mantissa <= 0.75, exp - 3, exp - 2)
    else:
        e = (exp - 1) - 2  # floor(log2 amax) − emax(E2M1)
    e = torch.where(block_amax > 0, e, torch.full_like(e, -E8M0_BIAS))
    return torch.clamp(e, -E8M0_BIAS, E8M0_BIAS)


def reference_quantize_mxfp4_2d(
    x2d: torch.Tensor, stochastic: bool, seed: int, offset: int, scale_rule: str
) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = x2d.shape
    pcol = ceil_div(cols, MX_BLOCK) * MX_BLOCK
    xp = torch.nn.functional.pad(x2d.to(torch.float32), (0, pcol - cols))
    nblk = pcol // MX_BLOCK
    block_amax = xp.abs().view(rows, nblk, MX_BLOCK).amax(dim=-1)
    e = _block_exponents(block_amax, scale_rule)
    scale = torch.ldexp(torch.ones_like(block_amax), e.to(torch.float32))
    # A NaN/Inf block: NaN scale, so every value is NaN and every code 0 (as in NVFP4).
    scale = torch.where(torch.isfinite(block_amax), scale, torch.full_like(scale, float("nan")))
    v = xp.view(rows, nblk, MX_BLOCK) / scale.unsqueeze(-1)
    v = torch.clamp(v, -E2M1_MAX, E2M1_MAX).view(rows, pcol)
    if stochastic:
        r = torch.arange(rows, dtype=torch.int64, device=xp.device).unsqueeze(1)
        c = torch.arange(pcol, dtype=torch.int64, device=xp.device).unsqueeze(0)
        codes = e2m1_round_stochastic(v, random_bytes(r * cols + c, seed, offset))
    else:
        codes = e2m1_round_nearest(v)
    biased = (e + E8M0_BIAS).to(torch.uint8)
    biased = torch.where(torch.isfinite(block_amax), biased, torch.full_like(biased, E8M0_NAN))
    return pack_codes(codes), biased.view(torch.float8_e8m0fnu)
