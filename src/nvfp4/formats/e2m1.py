"""FP4 E2M1 elements: rounding, stochastic rounding, packing (SPEC §1–§3).

Codes are uint8 0..15: bit 3 is the sign, bits 0–2 index ``E2M1_MAGNITUDES``.
Rounding works on values already scaled into [-6, 6]; NaN maps to code 0 (the block's
scale carries the NaN, see ``nvfp4.py``), and the sign bit is set exactly when v < 0, so a
small negative value becomes −0 (code 8) as in Transformer Engine's reference.
"""

from __future__ import annotations

import functools

import torch

E2M1_MAX = 6.0
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_VALUES = E2M1_MAGNITUDES + tuple(-m for m in E2M1_MAGNITUDES)


def e2m1_round_nearest(v: torch.Tensor) -> torch.Tensor:
    """Round-to-nearest-even codes for FP32 values in [-6, 6].

    The comparisons below are the RNE decision boundaries: a strict ``>`` where the lower
    neighbour has an even mantissa (ties go down), ``>=`` where it is odd (ties go up).
    """
    a = v.abs()
    mag = (a > 0.25).to(torch.uint8) + (a >= 0.75) + (a > 1.25) + (a >= 1.75) + (a > 2.5) + (a >= 3.5) + (a > 5.0)
    return mag | ((v < 0).to(torch.uint8) << 3)


def e2m1_round_stochastic(v: torch.Tensor, random_bytes: torch.Tensor) -> torch.Tensor:
    """Stochastic-rounding codes (SPEC §3) for FP32 values in [-6, 6].

    ``random_bytes`` holds integers 0..255 (u = r/256). t = a + u·step(a) lands in the next
    grid interval with probability (a − lo)/step, so E[q] = a: unbiased, the point of SR.
    """
    a = v.abs()
    u = random_bytes.to(torch.float32) * (1.0 / 256.0)
    t = a + u * _grid_step(a)
    step_t = _grid_step(t)
    q = torch.clamp(torch.floor(t / step_t) * step_t, max=E2M1_MAX)
    # q is exactly a grid point; map it to its code with the (exact) nearest rounding.
    # (a NaN stays NaN through t and q, and rounds to magnitude 0 like in RNE.)
    mag = e2m1_round_nearest(q) & 7
    return mag | ((v < 0).to(torch.uint8) << 3)


def _grid_step(a: torch.Tensor) -> torch.Tensor:
    """Spacing of the E2M1 grid just above magnitude ``a``: 0.5 below 2, 1 below 4, else 2."""
    return torch.where(a < 2.0, 0.5, torch.where(a < 4.0, 1.0, 2.0)).to(torch.float32)


def e2m1_values(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Real values of codes (lookup table); exact in any float dtype."""
    return _value_table(dtype, codes.device)[codes.long()]


@functools.cache
def _value_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 16-entry table, made once per dtype and device (not copied to a GPU on every call)."""
    return torch.tensor(E2M1_VALUES, dtype=dtype, device=device)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Two codes per byte along the last dim (even element in the LOW nibble). Last dim must be even."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_codes`."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)
