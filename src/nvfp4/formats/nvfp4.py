"""NVFP4: E2M1 values in 16-element blocks, E4M3 block scales, an FP32 tensor scale (SPEC §2).

This file is the plain-PyTorch reference ("the oracle") and imports nothing fast. Fast backends in ``nvfp4.kernels``
must reproduce its codes and scales bit for bit; ``nvfp4.quantize.quantize_nvfp4`` (above both) dispatches to them.
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

BLOCK = 16
E4M3_MAX = 448.0
ENCODE_NUMERATOR = E4M3_MAX * 6.0  # S_enc = 448·6 / amax (SPEC §2); Four Over Six uses 256·6 (formats.fouroversix)
FLT_MAX = torch.finfo(torch.float32).max
NVFP4_TILES = ((1, 16), (16, 16))

# FP32(1/6) as a Python float: a tensor times a Python scalar is an FP32 product (the scalar is exact in FP32),
# on every device, with no constant tensor to copy to a GPU. Divisions instead take a full_like() tensor as the
# dividend or divisor, never a scalar divisor: CUDA turns `t / scalar` into `t * (1/scalar)`, which rounds twice.
_ONE_SIXTH_F32 = torch.tensor(1.0 / 6.0, dtype=torch.float32).item()


@dataclass
class NVFP4Tensor:
    """A quantized tensor: packed codes, E4M3 block scales and the amax of the tensor scale."""

    packed: torch.Tensor  # uint8 (M, ceil(K/16)*8)
    scales: torch.Tensor  # float8_e4m3fn (M, ceil(K/16)); a 16x16 tile's scale repeated over its rows
    global_amax: torch.Tensor  # float32 0-d
    shape: torch.Size  # the original shape (any leading dims)
    tile: tuple[int, int]
    backend: str = "auto"  # the backend that made it; the layer decodes GEMM operands with the same one
    # The tensor scale's numerator C (S_enc = C / amax): 448·6, or Four Over Six's 256·6 (·16/17 with SR).
    encode_numerator: float = ENCODE_NUMERATOR

    @property
    def rows(self) -> int:
        return self.packed.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[-1]

    @property
    def decode_scale(self) -> torch.Tensor:
        """S_dec = 1 / S_enc (FP32), the tensor-level factor applied after a GEMM."""
        return global_decode_scale(self.global_amax, self.encode_numerator)

    def codes(self) -> torch.Tensor:
        """uint8 codes 0..15, shape (M, K), padding removed."""
        return unpack_codes(self.packed)[:, : self.cols]

    def scaled_values(self, dtype: torch.dtype = torch.bfloat16, padded: bool = False) -> torch.Tensor:
        """value(q) × block scale, WITHOUT the tensor scale: exact in BF16 (SPEC §2), the GEMM operand.

        The reference decode; ``nvfp4.kernels`` backends have fast ones (``scaled_values``) with the same bits."""
        values = reference_scaled_values(self.packed, self.scales, dtype)
        return values if padded else values[:, : self.cols]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x ≈ value(q) · s_b · S_dec, in the original shape."""
        values = self.scaled_values(torch.float32) * self.decode_scale
        return values.to(dtype).reshape(self.shape)


def global_encode_scale(global_amax: torch.Tensor, numerator: float = ENCODE_NUMERATOR) -> torch.Tensor:
    """S_enc = min(C / amax, FLT_MAX), C = 448·6 (an FP32 constant); an all-zero tensor (amax 0) gives FLT_MAX."""
    dividend = torch.full_like(global_amax, numerator, dtype=torch.float32)
    return torch.clamp(dividend / global_amax, max=FLT_MAX)


def global_decode_scale(global_amax: torch.Tensor, numerator: float = ENCODE_NUMERATOR) -> torch.Tensor:
    """S_dec = 1 / S_enc: the tensor-level factor applied after a GEMM."""
    return fp32_reciprocal(global_encode_scale(global_amax.to(torch.float32), numerator))


def fp32_reciprocal(t: torch.Tensor) -> torch.Tensor:
    """1/t as a true FP32 division (``1.0 / t`` may become reciprocal·1.0, not guaranteed exact)."""
    return torch.div(torch.ones_like(t), t)


def tensor_amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| in FP32 (NaN if any element is NaN, like the quantizer needs)."""
    return x.abs().amax().to(torch.float32)


def _pad_to_blocks(x2d: torch.Tensor, row_multiple: int) -> torch.Tensor:
    rows, cols = x2d.shape
    pad_rows = ceil_div(rows, row_multiple) * row_multiple - rows
    pad_cols = ceil_div(cols, BLOCK) * BLOCK - cols
    if pad_rows or pad_cols:
        x2d = torch.nn.functional.pad(x2d, (0, pad_cols, 0, pad_rows))
    return x2d


def reference_quantize_nvfp4_2d(
    x2d: torch.Tensor,
    global_amax: torch.Tensor,
    tile_rows: int,
    stochastic: bool,
    seed: int,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference kernel on a 2-D tensor: returns (packed uint8, scales e4m3), both trimmed to M rows."""
    rows, cols = x2d.shape
    xp = _pad_to_blocks(x2d.to(torch.float32), tile_rows)
    prow, pcol = xp.shape
    nblk = pcol // BLOCK
    amax = global_amax.to(device=xp.device, dtype=torch.float32)

    # Block amax: 1x16 along the row, or 16x16 tiles (then repeated over the tile's 16 rows).
    if tile_rows == 1:
        block_amax = xp.abs().view(prow, nblk, BLOCK).amax(dim=-1)
    else:
        tiles = xp.abs().view(prow // tile_rows, tile_rows, nblk, BLOCK).amax(dim=(1, 3))
        block_amax = tiles.repeat_interleave(tile_rows, dim=0)

    s_enc = global_encode_scale(amax)
    s_dec = fp32_reciprocal(s_enc)
    scale_f32 = torch.clamp(block_amax * (s_enc * _ONE_SIXTH_F32), max=FLT_MAX)
    scales = torch.clamp(scale_f32, max=E4M3_MAX).to(torch.float8_e4m3fn)
    # Non-finite input must never become finite garbage: a NaN/Inf block (or tensor amax) gets a NaN scale.
    bad = ~torch.isfinite(block_amax) | ~torch.isfinite(amax)
    if bool(bad.any()):
        scales = torch.where(bad, float("nan"), scales.to(torch.float32)).to(torch.float8_e4m3fn)

    # Encode with the ROUNDED scale, by a true FP32 division (SPEC §2).
    enc = torch.clamp(fp32_reciprocal(scales.to(torch.float32) * s_dec), max=FLT_MAX)
    v = torch.clamp(xp.view(prow, nblk, BLOCK) * enc.unsqueeze(-1), -E2M1_MAX, E2M1_MAX).view(prow, pcol)

    if stochastic:
        r = torch.arange(prow, dtype=torch.int64, device=xp.device).unsqueeze(1)
        c = torch.arange(pcol, dtype=torch.int64, device=xp.device).unsqueeze(0)
        codes = e2m1_round_stochastic(v, random_bytes(r * cols + c, seed, offset))
    else:
        codes = e2m1_round_nearest(v)
    return pack_codes(codes)[:rows], scales[:rows]


def reference_scaled_values(
    packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """value(q) × block scale for every (padded) element: (M, ceil(K/16)*16), exact in BF16."""
    values = e2m1_values(unpack_codes(packed), torch.float32)
    return (values * scales.to(torch.float32).repeat_interleave(BLOCK, dim=1)).to(dtype)
