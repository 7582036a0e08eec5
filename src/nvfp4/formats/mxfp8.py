"""MXFP8: E4M3 values in 32-element blocks with a power-of-two (UE8M0) scale, no tensor scale (OCP MX v1.0).

The paper keeps its most sensitive layers in "BF16 or MXFP8"; this is Transformer Engine's MXFP8 arithmetic
(``MXFP8BlockScaling``, E4M3 in both passes), reproduced bit for bit on ordinary data:

- s = amax_b × FP32(1/448) (an FP32 product, as TE multiplies by the reciprocal of E4M3's max);
- the biased E8M0 exponent is s rounded UP to a power of two: the FP32 exponent field of s, plus one when the
  mantissa is non-zero (saturating at 254 = 2^127; an FP32-subnormal s <= 2^-127 gives 0, i.e. 2^-127);
- values are x × 2^(127 − e) (exact: a power of two), cast to E4M3 with round-to-nearest-even, saturating at ±448.
  As in TE, a block whose biased exponent is 0 (amax_b <= 448·2^-127, about 2.6e-36) is encoded with the factor 1,
  so its values, far below E4M3's resolution, become zeros.

Non-finite blocks (ours, where TE leaves a TODO): a block holding a NaN or an Inf gets the NaN scale (0xFF) and NaN
data, so it dequantizes to NaN. Rounding is to nearest only (TE defines no stochastic MXFP8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nvfp4.formats._validate import ceil_div

MX_BLOCK = 32
E4M3_MAX = 448.0
E8M0_NAN = 0xFF
_MANTISSA_BITS = 23
# FP32(1/448) as a Python float: exact in FP32, so tensor × scalar is the FP32 product TE computes.
_RCP_E4M3_MAX_F32 = torch.tensor(1.0 / E4M3_MAX, dtype=torch.float32).item()


@dataclass
class MXFP8Tensor:
    """E4M3 values (M, K) and one E8M0 scale per 32-block along the last dim (M, ceil(K/32))."""

    data: torch.Tensor  # float8_e4m3fn (M, K)
    scales: torch.Tensor  # float8_e8m0fnu (M, ceil(K/32))
    shape: torch.Size

    @property
    def cols(self) -> int:
        return self.shape[-1]

    def scale_exponents(self) -> torch.Tensor:
        """Unbiased int32 exponents e (scale = 2^e); NaN scales read as 128."""
        return self.scales.view(torch.uint8).to(torch.int32) - 127

    def scaled_values(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """value(q) · 2^e, (M, K): exact in BF16 while 2^e·value stays inside BF16's normal range."""
        return reference_mxfp8_values(self.data, self.scales, dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.scaled_values(torch.float32).to(dtype).reshape(self.shape)


def e8m0_round_up(s: torch.Tensor) -> torch.Tensor:
    """Biased E8M0 exponents (int32) of FP32 values s >= 0, rounded up to a power of two, saturating at 254."""
    bits = s.contiguous().view(torch.int32)
    exponent = (bits >> _MANTISSA_BITS) & 0xFF
    mantissa = bits & 0x7FFFFF
    up = (mantissa > 0) & (exponent != 0xFE) & ~((exponent == 0) & (mantissa <= 0x400000))
    return exponent + up.to(torch.int32)


def encode_factor(biased: torch.Tensor) -> torch.Tensor:
    """2^(127 − e) as FP32 (1 for e = 0, as TE's ``exp2f_rcp``)."""
    factor = ((254 - biased) << _MANTISSA_BITS).view(torch.float32)
    return torch.where(biased == 0, torch.ones_like(factor), factor)


def reference_quantize_mxfp8_2d(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference kernel on a 2-D tensor: (E4M3 data (M, K), E8M0 scales (M, ceil(K/32)))."""
    rows, cols = x2d.shape
    pcol = ceil_div(cols, MX_BLOCK) * MX_BLOCK
    xp = torch.nn.functional.pad(x2d.to(torch.float32), (0, pcol - cols))
    nblk = pcol // MX_BLOCK
    block_amax = xp.abs().view(rows, nblk, MX_BLOCK).amax(dim=-1)
    finite = torch.isfinite(block_amax)
    biased = e8m0_round_up(torch.where(finite, block_amax, 0.0) * _RCP_E4M3_MAX_F32)
    v = xp.view(rows, nblk, MX_BLOCK) * encode_factor(biased).unsqueeze(-1)
    v = torch.where(finite.unsqueeze(-1), torch.clamp(v, -E4M3_MAX, E4M3_MAX), float("nan"))
    data = v.view(rows, pcol)[:, :cols].to(torch.float8_e4m3fn)
    scales = torch.where(finite, biased, E8M0_NAN).to(torch.uint8).view(torch.float8_e8m0fnu)
    return data, scales


def reference_mxfp8_values(
    data: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """value(q) · 2^e for every element, (M, K) in ``dtype`` (a NaN scale gives NaN)."""
    scale = scales.to(torch.float32).repeat_interleave(MX_BLOCK, dim=1)[:, : data.shape[1]]
    return (data.to(torch.float32) * scale).to(dtype)
