"""Random Hadamard transform (SPEC §4): chunk ← chunk · diag(s) · H_n / √n, rounded to BF16.

Why: multiplying both operands of the weight-gradient GEMM by the same orthogonal matrix
along the reduction (token) dim leaves dW unchanged in exact arithmetic, but spreads outliers
over a block so the 16-element FP4 blocks lose less to them.

The product is computed as a fast Walsh–Hadamard butterfly in FP32 with a FIXED order
(stages h = 1, 2, 4, …, n/2; each stage (a, b) → (a + b, a − b)), then scaled by FP32 1/√n
(exact for n = 4^k) and rounded to BF16. A fixed order makes the result bit-reproducible on
every backend; it equals the matrix product up to FP32 rounding order.
"""

from __future__ import annotations

import math

import torch

from nvfp4.formats.rng import random_bytes

# Transformer Engine's default 16-element sign vector (SPEC §4).
DEFAULT_SIGNS_16 = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)
_SIGN_SEED = 0x5EED


def default_signs(size: int) -> torch.Tensor:
    """TE's vector for 16; for other sizes, bit 0 of our counter RNG (seed 0x5EED): fixed, documented."""
    if size == 16:
        return torch.tensor(DEFAULT_SIGNS_16, dtype=torch.float32)
    bits = random_bytes(torch.arange(size, dtype=torch.int64), _SIGN_SEED) & 1
    return (1 - 2 * bits).to(torch.float32)


def hadamard_matrix(size: int) -> torch.Tensor:
    """Unnormalised Sylvester Hadamard matrix H_n (entries ±1), natural order."""
    _check_size(size)
    h = torch.ones(1, 1)
    while h.shape[0] < size:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


_BIG = 2.0**120  # chunks with a |value| at least this are pre-scaled (32 x 2^120 < FLT_MAX: no sum overflows)
_PRE = 2.0**-8


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 2 or size > 128 or size & (size - 1):
        raise ValueError(f"Hadamard size must be a power of 2 between 2 and 128, got {size!r}")


def _butterfly(x: torch.Tensor, size: int) -> torch.Tensor:
    """x (..., size) fp32 → x · H_size (unnormalised), in the fixed stage order."""
    lead = x.shape[:-1]
    h = 1
    while h < size:
        pairs = x.reshape(*lead, size // (2 * h), 2, h)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, size)
        h *= 2
    return x


def random_hadamard_transform(
    x: torch.Tensor,
    dim: int = -1,
    size: int = 16,
    signs: torch.Tensor | None = None,
    *,
    inverse: bool = False,
) -> torch.Tensor:
    """Apply the RHT in chunks of ``size`` along ``dim``; returns BF16 (SPEC §4).

    The length of ``dim`` must be a multiple of ``size`` (zero-pad first: zeros do not change a
    dot product of two transformed operands). ``inverse=True`` applies the transpose (H·diag(s)/√n).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError("random_hadamard_transform needs a floating-point torch.Tensor")
    _check_size(size)
    if x.numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}); nothing to transform")
    dim = dim % x.dim()
    length = x.shape[dim]
    if length % size:
        raise ValueError(
            f"dim {dim} has length {length}, not a multiple of the Hadamard size {size}; "
            "zero-pad it to a multiple first"
        )
    if signs is None:
        signs = default_signs(size)
    if not isinstance(signs, torch.Tensor):
        signs = torch.as_tensor(signs, dtype=torch.float32)
    # Host-side values are checked; a vector already on the GPU (the layer's per-device cache) is not read back,
    # which would cost a device sync per call, nor is one inside a compiled graph (a data-dependent branch).
    check = signs.device.type == "cpu" and not torch.compiler.is_compiling()
    if signs.shape != (size,) or (check and not bool(((signs == 1) | (signs == -1)).all())):
        raise ValueError(f"signs must be a ({size},) tensor of ±1")
    if signs.device != x.device or signs.dtype != torch.float32:
        signs = signs.to(device=x.device, dtype=torch.float32)

    moved = x.movedim(dim, -1).to(torch.float32)
    chunks = moved.reshape(*moved.shape[:-1], length // size, size)
    if not inverse:
        chunks = chunks * signs
    # Overflow-safe (SPEC §4): a chunk with a value >= 2^120 is scaled by 2^-8 before the butterfly (exact: a power
    # of two) and by norm x 2^8 after it, so no partial sum overflows where the exact result is finite; every other
    # chunk takes the plain path, bit for bit (the fast kernels do the same).
    norm = torch.tensor(1.0 / math.sqrt(size), dtype=torch.float32).item()
    big = chunks.abs().amax(dim=-1, keepdim=True) >= _BIG
    chunks = _butterfly(torch.where(big, chunks * _PRE, chunks), size) * torch.where(big, norm * 256.0, norm)
    if inverse:
        chunks = chunks * signs
    return chunks.reshape(moved.shape).to(torch.bfloat16).movedim(-1, dim)
