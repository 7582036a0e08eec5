"""An independent NumPy oracle for the numerics of SPEC §1–§4.

Why a second implementation: the library's reference quantizer is itself "the oracle" for the fast
backends, so it needs a check that does not share its code. Everything here is written from
``/work/shared/SPEC.md`` and from the generator / butterfly order documented in the docstrings of
``nvfp4/formats/rng.py`` and ``nvfp4/formats/hadamard.py`` — never by importing ``nvfp4``.

Conventions: inputs are 2-D float32 NumPy arrays; every arithmetic step that the SPEC puts in FP32
is done with ``np.float32`` operands (no Python floats, which could promote to float64); the
rounding helpers (E4M3, E2M1, BF16) are table/bit based and do not rely on ml_dtypes, which the
tests only use to cross-check them.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32
FLT_MAX = F32(np.finfo(np.float32).max)
E2M1_MAGNITUDES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)
E2M1_VALUES = np.concatenate([E2M1_MAGNITUDES, -E2M1_MAGNITUDES]).astype(np.float32)
E4M3_MAX = F32(448.0)
SPEC_SIGNS_16 = np.array([1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1], dtype=np.float32)
MASK32 = 0xFFFFFFFF


# ------------------------------------------------------------------------------------------------
# FP8 E4M3 (fn: no infinities, 0x7F/0xFF are NaN, max 448), from its bit layout.
# ------------------------------------------------------------------------------------------------


def _e4m3_table() -> np.ndarray:
    """Exact values of the 127 non-negative finite E4M3 bytes 0x00..0x7E (float64, increasing)."""
    vals = []
    for b in range(0x7F):
        e, m = (b >> 3) & 0xF, b & 7
        vals.append(math.ldexp(m / 8.0, -6) if e == 0 else math.ldexp(1.0 + m / 8.0, e - 7))
    return np.array(vals, dtype=np.float64)


E4M3_TABLE = _e4m3_table()


def e4m3_decode(byte: np.ndarray) -> np.ndarray:
    """float32 values of E4M3 bytes (NaN for 0x7F / 0xFF)."""
    byte = np.asarray(byte, dtype=np.uint8)
    mag_code = byte & 0x7F
    nan = mag_code == 0x7F
    mag = E4M3_TABLE[np.where(nan, 0, mag_code)]
    val = np.where(byte & 0x80, -mag, mag)
    return np.where(nan, np.nan, val).astype(np.float32)


def e4m3_rne_satfinite(a: np.ndarray) -> np.ndarray:
    """E4M3 bytes of float32 values: round to nearest, ties to even mantissa, |a| > 448 -> 448.

    NaN gives 0x7F. The sign bit follows ``signbit`` (so -0 and tiny negatives give 0x80).
    """
    a = np.asarray(a, dtype=np.float32)
    nan = np.isnan(a)
    mag = np.minimum(np.abs(np.where(nan, 0, a)).astype(np.float64), 448.0)
    hi = np.searchsorted(E4M3_TABLE, mag, side="left")  # first table value >= mag
    hi = np.minimum(hi, len(E4M3_TABLE) - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo = mag - E4M3_TABLE[lo]
    d_hi = E4M3_TABLE[hi] - mag
    # Ties go to the even byte: the mantissa's last bit is the byte's last bit.
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo).astype(np.uint8)
    code = np.where(np.signbit(a), code | 0x80, code).astype(np.uint8)
    return np.where(nan, np.uint8(0x7F), code).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# E2M1
# ------------------------------------------------------------------------------------------------


def e2m1_rne(v: np.ndarray) -> np.ndarray:
    """Codes per the SPEC §2 threshold table; sign bit iff v < 0; NaN -> code 0."""
    v = np.asarray(v, dtype=np.float32)
    a = np.abs(v)
    mag = np.zeros(v.shape, dtype=np.uint8)
    # (lower bound, inclusive?) of each magnitude index 1..7, straight from the SPEC's intervals.
    bounds = [(0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False)]
    for idx, (bound, inclusive) in enumerate(bounds, start=1):
        hit = (a >= bound) if inclusive else (a > bound)
        mag = np.where(hit, np.uint8(idx), mag)
    return (mag | np.where(v < 0, np.uint8(8), np.uint8(0))).astype(np.uint8)


def e2m1_value(codes: np.ndarray) -> np.ndarray:
    return E2M1_VALUES[np.asarray(codes, dtype=np.int64)]


def sr_step(a: np.ndarray) -> np.ndarray:
    """step(a) of SPEC §3 (float32)."""
    return np.where(a < 2, F32(0.5), np.where(a < 4, F32(1.0), F32(2.0))).astype(np.float32)


def e2m1_sr(v: np.ndarray, rbytes: np.ndarray) -> np.ndarray:
    """Stochastic-rounding codes of SPEC §3, every step in float32."""
    v = np.asarray(v, dtype=np.float32)
    a = np.abs(v)
    u = rbytes.astype(np.float32) / F32(256.0)
    t = (a + u * sr_step(a)).astype(np.float32)
    st = sr_step(t)
    q = np.minimum(np.floor(t / st) * st, F32(6.0)).astype(np.float32)
    mag = np.searchsorted(E2M1_MAGNITUDES, q).astype(np.uint8)  # q is exactly a grid point
    mag = np.where(np.isnan(q), np.uint8(0), mag)
    return (mag | np.where(v < 0, np.uint8(8), np.uint8(0))).astype(np.uint8)


def grid_neighbours(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(largest grid magnitude <= a, smallest grid magnitude >= a) for a in [0, 6]."""
    a = np.asarray(a, dtype=np.float64)
    hi_idx = np.minimum(np.searchsorted(E2M1_MAGNITUDES, a, side="left"), 7)
    lo_idx = np.searchsorted(E2M1_MAGNITUDES, a, side="right") - 1
    return E2M1_MAGNITUDES[lo_idx].astype(np.float64), E2M1_MAGNITUDES[hi_idx].astype(np.float64)


# ------------------------------------------------------------------------------------------------
# The counter-based generator documented in nvfp4/formats/rng.py (re-implemented on uint32 arrays)
# ------------------------------------------------------------------------------------------------


def _mix32_np(h: np.ndarray) -> np.ndarray:
    h = h.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x21F0AAAD)  # uint32 array products wrap modulo 2^32
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x735A2D97)
    h ^= h >> np.uint32(15)
    return h


def _mix32_scalar(h: int) -> int:
    return int(_mix32_np(np.array([h & MASK32], dtype=np.uint32))[0])


def rng_keys(seed: int, offset: int) -> tuple[int, int]:
    seed &= (1 << 64) - 1
    offset &= (1 << 64) - 1
    k = _mix32_scalar((seed & MASK32) ^ 0x9E3779B9)
    k = _mix32_scalar(k ^ (seed >> 32))
    k = _mix32_scalar(k ^ (offset & MASK32) ^ 0x85EBCA6B)
    k1 = _mix32_scalar(k ^ (offset >> 32))
    k2 = _mix32_scalar(k1 ^ 0xC2B2AE35)
    return k1, k2


def rng_bytes(index: np.ndarray, seed: int, offset: int = 0) -> np.ndarray:
    """The random byte of each (non-negative, < 2^64) element index, as uint8."""
    index = np.asarray(index, dtype=np.uint64)
    k1, k2 = rng_keys(seed, offset)
    i_lo = (index & np.uint64(MASK32)).astype(np.uint32)
    i_hi = (index >> np.uint64(32)).astype(np.uint32)
    h = _mix32_np(_mix32_np(i_lo ^ np.uint32(k1)) ^ i_hi ^ np.uint32(k2))
    return (h >> np.uint32(24)).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# NVFP4 (SPEC §2, §3)
# ------------------------------------------------------------------------------------------------


class NVFP4Result:
    """Oracle output: codes (M,K) uint8, scale bytes (M,nb) uint8, scales float32, S_dec float32."""

    def __init__(self, codes: np.ndarray, scale_bytes: np.ndarray, s_dec: np.float32, enc: np.ndarray):
        self.codes = codes
        self.scale_bytes = scale_bytes
        self.scales = e4m3_decode(scale_bytes)
        self.s_dec = s_dec
        self.enc = enc  # per-block FP32 encode factor (M, nb)

    def dequantize(self) -> np.ndarray:
        """value(q) · s_b · S_dec in float32: value·s_b is exact, then one FP32 rounding."""
        cols = self.codes.shape[1]
        s = np.repeat(self.scales, 16, axis=1)[:, :cols]
        return (e2m1_value(self.codes) * s).astype(np.float32) * self.s_dec


def nvfp4_tensor_scales(amax: np.float32) -> tuple[np.float32, np.float32]:
    """(S_enc, S_dec) of SPEC §2, in float32."""
    with np.errstate(all="ignore"):
        s_enc = np.minimum(F32(448.0 * 6.0) / F32(amax), FLT_MAX).astype(np.float32)
        s_dec = (F32(1.0) / s_enc).astype(np.float32)
    return F32(s_enc), F32(s_dec)


def quantize_nvfp4(
    x: np.ndarray,
    tile_rows: int = 1,
    stochastic: bool = False,
    seed: int = 0,
    offset: int = 0,
    global_amax: float | None = None,
) -> NVFP4Result:
    """NVFP4 of a 2-D array, SPEC §2 step by step (tile_rows 1: 1x16 blocks; 16: 16x16 tiles)."""
    x = np.asarray(x, dtype=np.float32)
    rows, cols = x.shape
    with np.errstate(all="ignore"):
        amax = F32(np.max(np.abs(x))) if global_amax is None else F32(global_amax)
        s_enc, s_dec = nvfp4_tensor_scales(amax)
        prow = -(-rows // tile_rows) * tile_rows
        pcol = -(-cols // 16) * 16
        nb = pcol // 16
        xp = np.zeros((prow, pcol), dtype=np.float32)
        xp[:rows, :cols] = x
        blocks = np.abs(xp).reshape(prow // tile_rows, tile_rows, nb, 16)
        block_amax = np.repeat(blocks.max(axis=(1, 3)), tile_rows, axis=0).astype(np.float32)

        scale_f32 = np.minimum(block_amax * (s_enc * F32(1.0 / 6.0)), FLT_MAX).astype(np.float32)
        scale_bytes = e4m3_rne_satfinite(np.minimum(scale_f32, E4M3_MAX))
        bad = ~np.isfinite(block_amax) | (not np.isfinite(amax))
        scale_bytes = np.where(bad, np.uint8(0x7F), scale_bytes).astype(np.uint8)
        s_b = e4m3_decode(scale_bytes)

        enc = np.minimum(F32(1.0) / (s_b * s_dec).astype(np.float32), FLT_MAX).astype(np.float32)
        v = np.clip(xp * np.repeat(enc, 16, axis=1), F32(-6.0), F32(6.0)).astype(np.float32)
        if stochastic:
            r = np.arange(prow, dtype=np.uint64)[:, None]
            c = np.arange(pcol, dtype=np.uint64)[None, :]
            rbytes = rng_bytes(r * np.uint64(cols) + c, seed, offset)
            codes = e2m1_sr(v, rbytes)
        else:
            codes = e2m1_rne(v)
    return NVFP4Result(codes[:rows, :cols], scale_bytes[:rows], s_dec, enc[:rows])


# ------------------------------------------------------------------------------------------------
# MXFP4 (SPEC §1, §5): 32-blocks, power-of-two scales, no tensor scale
# ------------------------------------------------------------------------------------------------


def mx_exponent(amax_b: float, rule: str) -> int | None:
    """Unbiased scale exponent of one block (None for a non-finite block), clamped to E8M0's range."""
    if not math.isfinite(amax_b):
        return None
    if amax_b == 0.0:
        return -127
    if rule == "ceil":
        # Smallest e with 6·2^e >= amax_b, decided by exact float64 comparisons.
        e = math.frexp(amax_b / 6.0)[1]
        while math.ldexp(6.0, e - 1) >= amax_b:
            e -= 1
        while math.ldexp(6.0, e) < amax_b:
            e += 1
    else:
        e = (math.frexp(amax_b)[1] - 1) - 2  # floor(log2 amax) - emax(E2M1)
    return max(-127, min(127, e))


def quantize_mxfp4(
    x: np.ndarray, rule: str = "ceil", stochastic: bool = False, seed: int = 0, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(codes (M,K) uint8, scale bytes (M, ceil(K/32)) uint8; 0xFF for a NaN/Inf block)."""
    x = np.asarray(x, dtype=np.float32)
    rows, cols = x.shape
    pcol = -(-cols // 32) * 32
    nb = pcol // 32
    xp = np.zeros((rows, pcol), dtype=np.float32)
    xp[:, :cols] = x
    with np.errstate(all="ignore"):
        block_amax = np.abs(xp).reshape(rows, nb, 32).max(axis=-1)
    scale_bytes = np.zeros((rows, nb), dtype=np.uint8)
    scale = np.zeros((rows, nb), dtype=np.float32)
    for i in range(rows):
        for j in range(nb):
            e = mx_exponent(float(block_amax[i, j]), rule)
            scale_bytes[i, j] = 0xFF if e is None else e + 127
            scale[i, j] = np.nan if e is None else math.ldexp(1.0, e)
    with np.errstate(all="ignore"):
        v = np.clip(xp / np.repeat(scale, 32, axis=1), F32(-6.0), F32(6.0)).astype(np.float32)
        if stochastic:
            r = np.arange(rows, dtype=np.uint64)[:, None]
            c = np.arange(pcol, dtype=np.uint64)[None, :]
            codes = e2m1_sr(v, rng_bytes(r * np.uint64(cols) + c, seed, offset))
        else:
            codes = e2m1_rne(v)
    return codes[:, :cols], scale_bytes


# ------------------------------------------------------------------------------------------------
# FP8 blockwise (SPEC §1 baseline): s_b = amax_b / 448 in FP32, data = e4m3(x / s_b)
# ------------------------------------------------------------------------------------------------


def quantize_fp8(x: np.ndarray, tile: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(data bytes (M,K) uint8, scales float32 (M, ceil(K/tc))); zero block -> scale 1, NaN/Inf -> NaN."""
    x = np.asarray(x, dtype=np.float32)
    rows, cols = x.shape
    tr, tc = tile
    prow, pcol = -(-rows // tr) * tr, -(-cols // tc) * tc
    xp = np.zeros((prow, pcol), dtype=np.float32)
    xp[:rows, :cols] = x
    with np.errstate(all="ignore"):
        block_amax = np.abs(xp).reshape(prow // tr, tr, pcol // tc, tc).max(axis=(1, 3)).astype(np.float32)
        scale = (block_amax / E4M3_MAX).astype(np.float32)
        tiny = np.float32(math.ldexp(1.0, -149))
        scale = np.where(scale > 0, scale, np.where(block_amax > 0, tiny, F32(1.0))).astype(np.float32)
        scale = np.where(np.isfinite(block_amax), scale, F32(np.nan)).astype(np.float32)
        full = np.repeat(np.repeat(scale, tr, axis=0), tc, axis=1)
        data = e4m3_rne_satfinite(np.clip(xp / full, -E4M3_MAX, E4M3_MAX).astype(np.float32))
    return data[:rows, :cols], np.repeat(scale, tr, axis=0)[:rows]


# ------------------------------------------------------------------------------------------------
# MXFP8 (Transformer Engine's MXFP8BlockScaling, documented in nvfp4/formats/mxfp8.py): E4M3 in 32-blocks,
# scale = the smallest power of two >= amax_b * FP32(1/448), within [2^-127, 2^127]
# ------------------------------------------------------------------------------------------------


def mxfp8_biased_exponent(amax_b: float) -> int | None:
    """Biased E8M0 exponent of one block (None for a non-finite block), from exact float64 arithmetic."""
    if not math.isfinite(amax_b):
        return None
    s = float(np.float32(amax_b) * np.float32(1.0 / 448.0))  # the FP32 product, then exact in float64
    if s == 0.0:
        return 0
    m, k = math.frexp(s)  # s = m * 2^k, m in [0.5, 1): 2^(k-1) when m = 0.5, else 2^k is the smallest >= s
    e = k - 1 if m == 0.5 else k
    return max(0, min(254, e + 127))


def quantize_mxfp8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E4M3 data bytes (M, K) uint8, scale bytes (M, ceil(K/32)) uint8); a NaN/Inf block -> 0xFF scale, NaN data."""
    x = np.asarray(x, dtype=np.float32)
    rows, cols = x.shape
    nb = -(-cols // 32)
    xp = np.zeros((rows, nb * 32), dtype=np.float32)
    xp[:, :cols] = x
    data = np.zeros_like(xp, dtype=np.uint8)
    scale_bytes = np.zeros((rows, nb), dtype=np.uint8)
    for i in range(rows):
        for j in range(nb):
            block = xp[i, 32 * j : 32 * (j + 1)]
            with np.errstate(invalid="ignore"):
                e = mxfp8_biased_exponent(float(np.abs(block).max()))
            if e is None:
                scale_bytes[i, j] = 0xFF
                data[i, 32 * j : 32 * (j + 1)] = 0x7F
                continue
            scale_bytes[i, j] = e
            factor = F32(1.0) if e == 0 else F32(math.ldexp(1.0, 127 - e))  # TE encodes e = 0 with factor 1
            data[i, 32 * j : 32 * (j + 1)] = e4m3_rne_satfinite(np.clip(block * factor, -E4M3_MAX, E4M3_MAX))
    return data[:, :cols], scale_bytes


# ------------------------------------------------------------------------------------------------
# BF16 and the RHT (SPEC §4)
# ------------------------------------------------------------------------------------------------


def bf16_rne_bits(x: np.ndarray) -> np.ndarray:
    """BF16 bit patterns (uint16) of finite float32 values, round to nearest even."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))
    return (rounded >> np.uint64(16)).astype(np.uint16)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint32) << np.uint32(16)).view(np.float32)


def sylvester(n: int) -> np.ndarray:
    """Natural-order Sylvester Hadamard matrix (±1, float64)."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), h)
    return h


def rht_matrix(n: int, signs: np.ndarray) -> np.ndarray:
    """diag(s) · H_n / sqrt(n) in float64."""
    return np.diag(np.asarray(signs, dtype=np.float64)) @ sylvester(n) / math.sqrt(n)


def rht_exact(x: np.ndarray, n: int, signs: np.ndarray, inverse: bool = False) -> np.ndarray:
    """float64 chunk @ M (or @ Mᵀ) along the last dim, no rounding."""
    m = rht_matrix(n, signs)
    m = m.T if inverse else m
    x = np.asarray(x, dtype=np.float64)
    chunks = x.reshape(*x.shape[:-1], x.shape[-1] // n, n)
    return (chunks @ m).reshape(x.shape)


def rht_butterfly_bf16_bits(x: np.ndarray, n: int, signs: np.ndarray, inverse: bool = False) -> np.ndarray:
    """The documented order along the last dim: (×s), stages h=1,2,..,n/2 in FP32, ×fp32(1/√n), (×s), BF16."""
    x = np.asarray(x, dtype=np.float32)
    s = np.asarray(signs, dtype=np.float32)
    y = x.reshape(*x.shape[:-1], x.shape[-1] // n, n).copy()
    if not inverse:
        y = y * s
    h = 1
    while h < n:
        out = np.empty_like(y)
        for start in range(0, n, 2 * h):
            a = y[..., start : start + h]
            b = y[..., start + h : start + 2 * h]
            out[..., start : start + h] = a + b
            out[..., start + h : start + 2 * h] = a - b
        y = out
        h *= 2
    y = (y * F32(1.0 / math.sqrt(n))).astype(np.float32)
    if inverse:
        y = y * s
    return bf16_rne_bits(y.reshape(x.shape))
