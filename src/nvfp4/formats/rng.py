"""Counter-based random bytes for stochastic rounding, identical on every device and backend.

Why counter-based: the byte used for an element depends only on (seed, offset, element
index), never on thread scheduling or on how many numbers were drawn before. The same seed
therefore gives the same bits on the CPU reference, the C kernel and the Triton kernel, and a
resumed run reproduces an uninterrupted one exactly.

The generator (all arithmetic on unsigned 32-bit words, wrapping):

    mix32(h):  h ^= h >> 16; h *= 0x21F0AAAD; h ^= h >> 15; h *= 0x735A2D97; h ^= h >> 15
    key derivation (host side, once per call), seed and offset are 64-bit:
        k  = mix32(seed_lo ^ 0x9E3779B9)
        k  = mix32(k ^ seed_hi)
        k  = mix32(k ^ offset_lo ^ 0x85EBCA6B)
        k1 = mix32(k ^ offset_hi)
        k2 = mix32(k1 ^ 0xC2B2AE35)
    per element with index i (row-major position in the ORIGINAL, unpadded (M, K) tensor):
        h = mix32(mix32(i_lo ^ k1) ^ i_hi ^ k2)
        random byte r = h >> 24            (u = r / 256 in SPEC §3)

``mix32`` is a bijective integer hash (Chris Wellons' two-round "lowbias32" finalizer); two
rounds keyed by independent words decorrelate streams of different seeds and offsets.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
_MIX_MUL1 = 0x21F0AAAD
_MIX_MUL2 = 0x735A2D97


def mix32_int(h: int) -> int:
    """``mix32`` on a Python int (host-side key derivation)."""
    h &= MASK32
    h ^= h >> 16
    h = (h * _MIX_MUL1) & MASK32
    h ^= h >> 15
    h = (h * _MIX_MUL2) & MASK32
    h ^= h >> 15
    return h


_OFFSET_SALT = 0x85EBCA6B
_K2_SALT = 0xC2B2AE35


def _seed_word(seed: int) -> int:
    seed &= (1 << 64) - 1
    return mix32_int(mix32_int((seed & MASK32) ^ 0x9E3779B9) ^ (seed >> 32))


def derive_keys(seed: int, offset: int = 0) -> tuple[int, int]:
    """The two 32-bit stream keys for (seed, offset); both are 64-bit non-negative ints."""
    offset &= (1 << 64) - 1
    k = mix32_int(_seed_word(seed) ^ (offset & MASK32) ^ _OFFSET_SALT)
    k1 = mix32_int(k ^ (offset >> 32))
    k2 = mix32_int(k1 ^ _K2_SALT)
    return k1, k2


def device_key_words(seed: int) -> tuple[int, int]:
    """(w1, w2) from which a kernel that reads the offset from device memory derives the keys of ``derive_keys``:
    k1 = mix32(mix32(w1 ^ offset_lo) ^ offset_hi), k2 = mix32(k1 ^ w2) (XOR is associative: w1 = seed word ^ salt)."""
    return _seed_word(seed) ^ _OFFSET_SALT, _K2_SALT


def _mix32_tensor(h: torch.Tensor) -> torch.Tensor:
    # int64 holds every uint32; products wrap modulo 2^64, and the mask keeps the low 32 bits,
    # which is exactly uint32 wrapping multiplication.
    h = h ^ (h >> 16)
    h = (h * _MIX_MUL1) & MASK32
    h = h ^ (h >> 15)
    h = (h * _MIX_MUL2) & MASK32
    return h ^ (h >> 15)


def random_bytes(index: torch.Tensor, seed: int, offset: int = 0) -> torch.Tensor:
    """Random bytes (int64 in 0..255) for the given int64 element indices."""
    k1, k2 = derive_keys(seed, offset)
    index = index.to(torch.int64)
    h = _mix32_tensor((index & MASK32) ^ k1)
    h = _mix32_tensor(h ^ (index >> 32) ^ k2)
    return h >> 24


def random_bytes_for_shape(
    rows: int, cols: int, seed: int, offset: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Random bytes for every element of a row-major (rows, cols) tensor."""
    index = torch.arange(rows * cols, dtype=torch.int64, device=device).view(rows, cols)
    return random_bytes(index, seed, offset)
