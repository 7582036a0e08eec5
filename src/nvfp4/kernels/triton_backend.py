"""Triton backend: NVFP4 amax, quantize (1x16 / 16x16, RN / SR), fused RHT+quantize, the fused GEMM operand
(``fake_quantize_nvfp4``), scaled values, and MXFP4 (packed, or fused with the RHT32 into the GEMM operand).
Transposed operands (``transpose=True``) are read in place through strides, never copied.

Every kernel reproduces ``nvfp4.formats.nvfp4.reference_quantize_nvfp4_2d`` (and the RHT of
``nvfp4.hadamard``) bit for bit. How each FP32 step is kept exact on a GPU:

* Divisions use ``tl.div_rn`` (IEEE ``div.rn.f32``): Triton's ``/`` on fp32 lowers to the
  approximate ``div.full.f32`` on NVIDIA, which is off by up to 2 ulp.
* Kernels launch with ``enable_fp_fusion=False`` so no multiply+add is contracted into an FMA.
  The only multiply feeding an add is SR's ``t = a + u*step`` where ``u*step`` is exact
  (r/256 times a power of two), so an FMA would give the same bits anyway; the RHT's sign
  multiply is exact too. Disabling fusion just removes the need for that argument.
* Clamps are ``tl.where`` comparisons, not ``tl.minimum``: ``minimum`` may lower to ``minnum``,
  which drops NaN, while ``torch.clamp`` (the reference) propagates it.
* Maxima are taken on the integer bit patterns of |x| (sign bit cleared): for non-negative
  floats integer order equals float order and every NaN sorts above +Inf, so NaN propagates
  through block maxima and the grid-wide atomic max without a separate NaN flag.
* FP32 -> E4M3 (RNE, saturating) and FP32 -> BF16 (RNE) use integer/exact-float arithmetic,
  independent of the hardware's conversion instructions and of the interpreter's emulation.
* Denormals are kept: the PTX (checked by compiling for sm_90, see the slow test) has
  ``div.rn.f32``, ``mul.rn.f32``, ``add.rn.f32`` without ``.ftz``; the only ``.ftz`` is floor
  (``cvt.rmi.ftz``), whose inputs here are >= 0, where flushing a denormal to 0 keeps floor = 0.
  No libdevice call is used (those honour nvvm-reflect-ftz).

Layout for speed: each program loads a (BLOCK_M, 16*BLOCKS_K) tile with 16-byte vector loads,
views it as (BLOCK_M, BLOCKS_K, 16) so block maxima are in-thread/in-warp reductions, packs two
codes per byte in registers, and writes packed bytes and scale bytes with vector stores. The
tensor amax is a per-tile max followed by one relaxed ``atomic_max`` per program.

Tests run the same kernels on a CPU with ``TRITON_INTERPRET=1``, which must be set before this
module is imported (the kernels are decorated then).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from nvfp4.formats.rng import derive_keys, device_key_words
from nvfp4.kernels.contract import BackendBase, Quantized, QuantSpec, Unsupported, logical_shape, offset_value

BLOCK = 16
_HADAMARD_SIZE = 16

# FP32 constants, each exactly representable, so Triton's fp32 literals hold the same values as
# the reference's FP32 tensors (1/6 is the FP32 rounding of 1/6, written out exactly).
_FLT_MAX: tl.constexpr = tl.constexpr(3.4028234663852886e38)
_E4M3_MAX: tl.constexpr = tl.constexpr(448.0)
_E4M3_TIMES_E2M1: tl.constexpr = tl.constexpr(2688.0)
_ONE_SIXTH_F32: tl.constexpr = tl.constexpr(0.1666666716337204)  # float32(1/6) = 0x3E2AAAAB
_E4M3_MIN_NORMAL: tl.constexpr = tl.constexpr(0.015625)  # 2^-6
_E4M3_SUBNORMAL_STEP: tl.constexpr = tl.constexpr(0.001953125)  # 2^-9
_ABS_MASK: tl.constexpr = tl.constexpr(0x7FFFFFFF)
_INF_BITS: tl.constexpr = tl.constexpr(0x7F800000)
_NAN_BITS: tl.constexpr = tl.constexpr(0x7FC00000)  # a NaN global would trip Triton's constant check (nan != nan)
_INV_SQRT32_F32: tl.constexpr = tl.constexpr(0.1767766922712326)  # float32(1/sqrt(32)), as hadamard.py's
_INV_SQRT32_F32_X256: tl.constexpr = tl.constexpr(0.1767766922712326 * 256.0)  # exact: a power of two times it
_RHT_BIG_BITS: tl.constexpr = tl.constexpr(0x7B800000)  # 2^120: chunks at or above are pre-scaled (hadamard.py)
_BF16_NAN_BITS: tl.constexpr = tl.constexpr(0x7FC0)  # torch's canonical BF16 NaN

# Launch shapes: one program per (rows x 16-element blocks) tile. 32 x 128 elements with 4 warps
# gives each thread 32 elements (two 16-byte loads per 8 bf16 / 4 fp32), and ~16K programs for an
# 8192x8192 tensor, enough to fill 132 SMs many times over. Untuned: measure with benchmarks/gpu.py.
_Q_BLOCK_M = 32
_Q_BLOCKS_K = 8
_Q_WARPS = 4
_MX_BLOCKS_K = 4  # MXFP4: 4 blocks of 32, the same 128 columns per program
_FP8_BLOCK_M = 16  # FP8: 16 rows x one 128-column block per program (a 128x128 tile loops over 8 of them)
# amax reads more per program (fewer atomics on the single output word).
_A_BLOCK_M = 32
_A_BLOCK_K = 256
_A_WARPS = 8


# ----------------------------------------------------------------------------------------------
# Elementwise helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _max_along(x, AXIS: tl.constexpr, KEEP_DIMS: tl.constexpr = False):
    """tl.max, spelled as tl.reduce with Triton's own max combiner.

    Why not tl.max: it is a @triton.jit library function, and the CPU interpreter can only run
    those if TRITON_INTERPRET was set before Triton was imported, which importing torch._dynamo
    (e.g. via torch.compiler.disable) does early. tl.reduce is a builtin, and with this combiner
    the interpreter still takes its vectorised NumPy path. Compiled code is identical to tl.max.
    """
    return tl.reduce(x, AXIS, tl.standard._elementwise_max, keep_dims=KEEP_DIMS)


@triton.jit
def _sum_along(x, AXIS: tl.constexpr, KEEP_DIMS: tl.constexpr = False):
    """tl.sum without dtype promotion (fp32 in, fp32 out), as tl.reduce for the reason above."""
    return tl.reduce(x, AXIS, tl.standard._sum_combine, keep_dims=KEEP_DIMS)


@triton.jit
def _abs_bits(x):
    """|x| as int32 bits: order-preserving for non-negative floats, NaN above Inf."""
    return x.to(tl.int32, bitcast=True) & _ABS_MASK


@triton.jit
def _nan_where(cond, x):
    """NaN where cond, else x (fp32)."""
    return tl.where(cond, (x.to(tl.int32, bitcast=True) * 0 + _NAN_BITS).to(tl.float32, bitcast=True), x)


@triton.jit
def _negate(x):
    """-x (fp32) by flipping the sign bit: IEEE negation, so -(+0.0) is -0.0. Triton's unary minus is 0 - x,
    which gave +0.0 for a zero in Triton 3.6's interpreter and so lost the reference's -0."""
    return (x.to(tl.uint32, bitcast=True) ^ 0x80000000).to(tl.float32, bitcast=True)


@triton.jit
def _clamp_max(x, hi):
    """min(x, hi) that keeps NaN (like torch.clamp)."""
    return tl.where(x > hi, hi, x)


@triton.jit
def _round_to_bf16(x):
    """FP32 -> nearest-even BF16, returned as FP32. Integer RNE on the top 16 bits; NaN passes
    through untouched (the integer trick could turn a low-payload NaN into Inf)."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(x != x, x, rounded.to(tl.float32, bitcast=True))


@triton.jit
def _e4m3_encode(s):
    """FP32 -> E4M3 (fn) byte, round-to-nearest-even, saturating to ±448, NaN -> 0x7F|sign.

    Normal range (|s| >= 2^-6): add the RNE bias to the 20 discarded mantissa bits and rebias
    the exponent (127 -> 7). Subnormal range: |s|/2^-9 is exact, and is rounded to an integer
    0..8 with an exact floor/fraction test (8 is the smallest normal, encoded 0x08 as well).
    """
    bits = s.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = tl.abs(s)
    a = tl.where(a > _E4M3_MAX, _E4M3_MAX, a)  # satfinite (NaN is handled below)
    abits = a.to(tl.int32, bitcast=True)
    normal = ((abits + 0x7FFFF + ((abits >> 20) & 1)) >> 20) - (120 << 3)
    y = a * 512.0  # exact (power-of-two scaling); only used where a < 2^-6, i.e. y < 8
    floor_y = tl.floor(y)
    frac = y - floor_y  # exact (Sterbenz)
    q = floor_y.to(tl.int32)
    round_up = (frac > 0.5) | ((frac == 0.5) & ((q & 1) == 1))
    subnormal = q + round_up.to(tl.int32)
    mag = tl.where(a >= _E4M3_MIN_NORMAL, normal, subnormal)
    mag = tl.where(s != s, 0x7F, mag)
    return mag | sign


@triton.jit
def _e4m3_decode(byte):
    """E4M3 (fn) byte (int32 0..255) -> FP32, exactly; 0x7F/0xFF -> NaN."""
    exp = (byte >> 3) & 0xF
    man = byte & 7
    normal = (((exp + 120) << 23) | (man << 20)).to(tl.float32, bitcast=True)
    subnormal = man.to(tl.float32) * _E4M3_SUBNORMAL_STEP
    mag = tl.where(exp == 0, subnormal, normal)
    mag = _nan_where((byte & 0x7F) == 0x7F, mag)
    return tl.where((byte & 0x80) != 0, _negate(mag), mag)


@triton.jit
def _e2m1_magnitude_rn(a):
    """E2M1 magnitude index 0..7 of |v| in [0, 6] by round-to-nearest-even (the decision boundaries of e2m1.py).

    From the bits instead of a 7-compare chain: for a >= 1, a = 1.m x 2^e and the index is 2 + 2e + (top mantissa
    bit) after rounding the mantissa to one bit, nearest-even, by integer arithmetic (a carry moves into the
    exponent: 1.75 -> 2.0); below 1 two compares pick 0, 0.5 or 1. NaN compares false: index 0."""
    bits = a.to(tl.int32, bitcast=True)
    big = ((bits + 0x1FFFFF + ((bits >> 22) & 1)) >> 22) - 252  # (exponent << 1 | m1) - (127 << 1) + 2
    small = (a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32)
    return tl.where(a >= 1.0, big, small)


@triton.jit
def _grid_step(a):
    return tl.where(a < 2.0, 0.5, tl.where(a < 4.0, 1.0, 2.0))


@triton.jit
def _mix32(h):
    """The uint32 finalizer of nvfp4.formats.rng (wrapping multiplies)."""
    h = h ^ (h >> 16)
    h = h * 0x21F0AAAD
    h = h ^ (h >> 15)
    h = h * 0x735A2D97
    return h ^ (h >> 15)


@triton.jit
def _random_bytes(index, key1, key2):
    """Counter-based random byte for int64 element indices (nvfp4.formats.rng.random_bytes)."""
    lo = index.to(tl.uint32)  # truncation keeps the low word
    hi = (index >> 32).to(tl.uint32)
    h = _mix32(_mix32(lo ^ key1) ^ hi ^ key2)
    return (h >> 24).to(tl.int32)


@triton.jit
def _stream_keys(key1, key2, offset_ptr, DEVICE_OFFSET: tl.constexpr):
    """The SR stream keys (k1, k2) as uint32. With DEVICE_OFFSET the 64-bit offset is read from device memory and
    the keys are derived here (nvfp4.formats.rng.device_key_words gives key1 = the seed's word, key2 = the last
    constant), so an offset that advances every step needs no host sync and no new launch arguments."""
    k1 = key1.to(tl.uint32, bitcast=True)
    k2 = key2.to(tl.uint32, bitcast=True)
    if DEVICE_OFFSET:
        off = tl.load(offset_ptr)
        k1 = _mix32(_mix32(k1 ^ off.to(tl.uint32)) ^ (off >> 32).to(tl.uint32))
        k2 = _mix32(k1 ^ k2)
    return k1, k2


@triton.jit
def _random_bytes32(index, key1, key2):
    """_random_bytes for indices below 2^32 (uint32): the high word is 0, so no 64-bit arithmetic is needed."""
    h = _mix32(_mix32(index ^ key1) ^ key2)
    return (h >> 24).to(tl.int32)


@triton.jit
def _e2m1_value(code):
    """Real value of a code 0..15 (exact in FP32); code 8 gives -0.0 like the reference table."""
    m = code & 7
    mf = m.to(tl.float32)
    mag = tl.where(m < 4, mf * 0.5, tl.where(m < 6, mf - 2.0, (mf - 4.0) * 2.0))
    return tl.where(code >= 8, _negate(mag), mag)


@triton.jit
def _butterfly_stage(y, ROWS: tl.constexpr, H: tl.constexpr, N: tl.constexpr = 16):
    """One stage of hadamard._butterfly on rows of N: pairs (j, j+H) -> (a + b, a - b).

    Written with reductions over the size-2 pair axis instead of split/join/permute: Triton keeps
    a reduce + broadcast over an in-thread axis in registers, whereas split/join chains made
    it shuffle data through shared memory. A 2-element sum is the single FP32 addition a + b
    (commutative, so it does not matter which lane adds), and IEEE defines a - b as a + (-b),
    so every result is bit-identical to the reference's.
    """
    z = tl.reshape(y, (ROWS, N // (2 * H), 2, H))
    second = (tl.arange(0, 2) == 1)[None, None, :, None]
    total = _sum_along(z, 2, True)
    difference = _sum_along(tl.where(second, _negate(z), z), 2, True)
    return tl.reshape(tl.where(second, difference, total), (ROWS, N))


@triton.jit
def _rht(x, signs_ptr, BLOCK_M: tl.constexpr, BK: tl.constexpr, N: tl.constexpr = 16):
    """N-point RHT (N = 16 or 32) of each N-chunk of a (BLOCK_M, BK) fp32 tile, rounded to BF16 (kept as fp32).

    Same FP32 operations in the same order as hadamard.random_hadamard_transform: sign multiply
    (exact), stages h = 1, 2, 4, 8 (, 16), then * FP32(1/sqrt(N)), then RNE to BF16. (A tl.dot would
    sum in a different order and not be bit-identical.)
    """
    ROWS: tl.constexpr = BLOCK_M * (BK // N)
    signs = tl.load(signs_ptr + tl.arange(0, N))
    y = tl.reshape(x, (ROWS, N)) * signs[None, :]
    # Overflow-safe: a chunk with a |value| >= 2^120 is scaled by 2^-8 first and by norm x 2^8 last (hadamard.py).
    big = _max_along(_abs_bits(y), 1) >= _RHT_BIG_BITS
    y = tl.where(big[:, None], y * 0.00390625, y)
    y = _butterfly_stage(y, ROWS, 1, N)
    y = _butterfly_stage(y, ROWS, 2, N)
    y = _butterfly_stage(y, ROWS, 4, N)
    y = _butterfly_stage(y, ROWS, 8, N)
    if N == 32:
        y = _butterfly_stage(y, ROWS, 16, N)
        y = _round_to_bf16(y * tl.where(big, _INV_SQRT32_F32_X256, _INV_SQRT32_F32)[:, None])
    else:
        y = _round_to_bf16(y * tl.where(big, 64.0, 0.25)[:, None])
    return tl.reshape(y, (BLOCK_M, BK))


@triton.jit
def _load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS: tl.constexpr):
    """(rows, cols) tile of the logical (M, K) tensor at x[r * stride_r + k * stride_k], as fp32; out-of-range
    elements read as 0 (the reference's zero padding). A transposed operand (stride_r = 1) is read in place.

    BF16 input arrives as its int16 bits and is widened by a shift (exact for every value;
    Triton's CPU interpreter mis-converts BF16 subnormals, the GPU's cvt would be exact too).
    """
    mask = (rows < M)[:, None] & (cols < K)[None, :]
    offs = rows.to(tl.int64)[:, None] * stride_r + cols.to(tl.int64)[None, :] * stride_k
    if BF16_BITS:
        raw = tl.load(x_ptr + offs, mask=mask, other=0)
        return (raw.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    return tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _e2m1_codes(v, rows, cols, K, key1, key2, STOCHASTIC: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCKS_K: tl.constexpr, BLOCK_SIZE: tl.constexpr, INDEX64: tl.constexpr):  # fmt: skip
    """E2M1 codes (RN or SR, SPEC §2-3) of scaled values v (BLOCK_M, BLOCKS_K, BLOCK_SIZE): clamped to ±6 first
    (NaN stays NaN and gets code 0); SR bytes keyed by the element index row * K + col of the logical tensor."""
    v = tl.where(v < -6.0, -6.0, _clamp_max(v, 6.0))
    a = tl.abs(v)
    if STOCHASTIC:
        # Padding columns alias the next row's indices as in the reference; they hold zeros and round to 0.
        k1, k2 = key1, key2  # uint32 (from _stream_keys)
        if INDEX64:
            index = rows.to(tl.int64)[:, None] * K + cols[None, :]
            r = _random_bytes(index, k1, k2)
        else:  # the launcher checked that every index (padding included) is below 2^32
            index = rows.to(tl.uint32)[:, None] * K.to(tl.uint32) + cols.to(tl.uint32)[None, :]
            r = _random_bytes32(index, k1, k2)
        r = tl.reshape(r, (BLOCK_M, BLOCKS_K, BLOCK_SIZE))
        u = r.to(tl.float32) * 0.00390625  # r/256, exact
        t = a + u * _grid_step(a)  # u*step exact, so FMA or not gives the same t
        # q = min(floor(t / step(t)) * step(t), 6) is a grid value; its index follows from n = floor(t / step(t))
        # directly: n on the 0.5-grid (t < 2), n + 2 on the 1-grid (t < 4), n + 4 on the 2-grid (t < 8 always, so
        # n <= 3 there and the clamp to 6 is the index clamp to 7). t / step(t) == t * (1/step(t)) exactly: the
        # reciprocal is a power of two. A NaN t gets index 0, as the reference's comparisons give it.
        inv_step_t = tl.where(t < 2.0, 2.0, tl.where(t < 4.0, 1.0, 0.5))
        offset = tl.where(t < 2.0, 0, tl.where(t < 4.0, 2, 4))
        n = tl.floor(t * inv_step_t)
        mag = tl.where(t != t, 0, tl.minimum(tl.where(t != t, 0.0, n).to(tl.int32) + offset, 7))
    else:
        mag = _e2m1_magnitude_rn(a)
    return mag | ((v < 0).to(tl.int32) << 3)


@triton.jit
def _store_values(out_ptr, values, rows, cols, M, K, stride_o, OUT_BF16: tl.constexpr):
    """Store exact GEMM values (BLOCK_M, BK) of the logical (M, K) output. BF16 goes out as its bits (the top half
    of the FP32 bits: the values are exact in BF16), NaN as torch's 0x7FC0, so no float conversion is involved."""
    offs = rows.to(tl.int64)[:, None] * stride_o + cols[None, :]
    mask = (rows < M)[:, None] & (cols < K)[None, :]
    if OUT_BF16:
        bits = (values.to(tl.int32, bitcast=True) >> 16) & 0xFFFF
        bits = tl.where(values != values, _BF16_NAN_BITS, bits)
        tl.store(out_ptr + offs, bits.to(tl.int16), mask=mask)
    else:
        tl.store(out_ptr + offs, values, mask=mask)


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _tile_of_program(col_programs):
    """(row tile, column tile) of this program in a 1-D grid of row tiles x ``col_programs``, column tiles varying
    fastest. One axis of up to 2^31 - 1 programs: a 2-D grid's second axis stops at 65,535, which a transposed
    operand (column tiles = tokens / 128) reached above ~8.4M tokens."""
    pid = tl.program_id(0)
    pid_m = pid // col_programs
    return pid_m, pid - pid_m * col_programs


@triton.jit
def _amax_kernel(
    x_ptr,
    signs_ptr,
    out_ptr,
    M,
    K,
    stride_r,
    stride_k,
    BF16_BITS: tl.constexpr,
    RHT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Stage 1: max |x| bits of one tile; stage 2: atomic max into one int32 word (= fp32 bits)."""
    pid_m, pid_k = _tile_of_program((K + BLOCK_K - 1) // BLOCK_K)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    x = _load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS)
    if RHT:
        x = _rht(x, signs_ptr, BLOCK_M, BLOCK_K)
    tile_max = _max_along(_max_along(_abs_bits(x), 1), 0)
    tl.atomic_max(out_ptr, tile_max, sem="relaxed")


@triton.jit(do_not_specialize=["key1", "key2"])
def _quantize_kernel(
    x_ptr,
    amax_ptr,
    signs_ptr,
    packed_ptr,
    scales_ptr,
    M,
    K,
    NB,
    stride_r,
    stride_k,
    stride_p,
    stride_s,
    key1,
    key2,
    offset_ptr,
    BF16_BITS: tl.constexpr,
    TILE_ROWS: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    DEVICE_OFFSET: tl.constexpr,
    INDEX64: tl.constexpr,
    RHT: tl.constexpr,
    OUT_VALUES: tl.constexpr,
    OUT_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCKS_K: tl.constexpr,
):
    """One program quantizes BLOCK_M rows x BLOCKS_K 16-element blocks (SPEC §2, §3).

    OUT_VALUES: write the GEMM operand value(q) * s_b (FP32 or BF16, (M, K), row stride stride_p) to packed_ptr
    instead of packed codes + scale bytes ("fake quantization": no packed intermediate)."""
    BK: tl.constexpr = BLOCKS_K * 16
    pid_m, pid_k = _tile_of_program((NB + BLOCKS_K - 1) // BLOCKS_K)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BK + tl.arange(0, BK)
    x = _load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS)
    if RHT:
        x = _rht(x, signs_ptr, BLOCK_M, BK)
    x3 = tl.reshape(x, (BLOCK_M, BLOCKS_K, 16))

    # Block amax (bits; NaN sorts highest), 1x16 or 16x16 (repeated over the tile's rows).
    amax_bits = _max_along(_abs_bits(x3), 2)
    if TILE_ROWS == 16:
        tile_bits = _max_along(tl.reshape(amax_bits, (BLOCK_M // 16, 16, BLOCKS_K)), 1)
        amax_bits = tl.reshape(
            tl.broadcast_to(tile_bits[:, None, :], (BLOCK_M // 16, 16, BLOCKS_K)), (BLOCK_M, BLOCKS_K)
        )
    block_amax = amax_bits.to(tl.float32, bitcast=True)

    # Tensor scale, in the reference's order: S_enc = min(2688/amax, FLT_MAX), S_dec = 1/S_enc.
    amax = tl.load(amax_ptr)
    s_enc = _clamp_max(tl.div_rn(_E4M3_TIMES_E2M1, amax), _FLT_MAX)
    s_dec = tl.div_rn(1.0, s_enc)
    scale = block_amax * (s_enc * _ONE_SIXTH_F32)  # S_enc*(1/6) first, then * amax_b
    scale = _clamp_max(scale, _E4M3_MAX)  # = clamp(FLT_MAX) then clamp(448)
    scale_byte = _e4m3_encode(scale)
    bad = (amax_bits >= _INF_BITS) | (_abs_bits(amax) >= _INF_BITS)
    scale_byte = tl.where(bad, 0x7F, scale_byte)

    # Encode with the ROUNDED scale, by a true division; zero scale -> 1/0 = inf -> FLT_MAX.
    enc = _clamp_max(tl.div_rn(1.0, _e4m3_decode(scale_byte) * s_dec), _FLT_MAX)
    v = x3 * enc[:, :, None]
    k1, k2 = _stream_keys(key1, key2, offset_ptr, DEVICE_OFFSET)
    codes = _e2m1_codes(v, rows, cols, K, k1, k2, STOCHASTIC, BLOCK_M, BLOCKS_K, 16, INDEX64)
    if OUT_VALUES:
        values = _e2m1_value(codes) * _e4m3_decode(scale_byte)[:, :, None]
        _store_values(packed_ptr, tl.reshape(values, (BLOCK_M, BK)), rows, cols, M, K, stride_p, OUT_BF16)
    else:
        # Pack two codes per byte, even element in the low nibble, in registers.
        lo, hi = tl.split(tl.reshape(codes, (BLOCK_M, BLOCKS_K * 8, 2)))
        packed = (lo | (hi << 4)).to(tl.uint8)
        row_ok = (rows < M)[:, None]
        pcols = pid_k * (BLOCKS_K * 8) + tl.arange(0, BLOCKS_K * 8)
        tl.store(
            packed_ptr + rows.to(tl.int64)[:, None] * stride_p + pcols[None, :],
            packed,
            mask=row_ok & (pcols < NB * 8)[None, :],
        )
        bcols = pid_k * BLOCKS_K + tl.arange(0, BLOCKS_K)
        tl.store(
            scales_ptr + rows.to(tl.int64)[:, None] * stride_s + bcols[None, :],
            scale_byte.to(tl.uint8),
            mask=row_ok & (bcols < NB)[None, :],
        )


@triton.jit
def _pow2(n):
    """2^n as FP32 for integer n in [-127, 127] (2^-127 is the subnormal 0x00400000)."""
    return tl.where(n >= -126, (n + 127) << 23, 0x00400000).to(tl.float32, bitcast=True)


@triton.jit(do_not_specialize=["key1", "key2"])
def _mxfp4_kernel(
    x_ptr,
    signs_ptr,
    out_ptr,
    scales_ptr,
    M,
    K,
    NB,
    stride_r,
    stride_k,
    stride_o,
    stride_s,
    key1,
    key2,
    offset_ptr,
    BF16_BITS: tl.constexpr,
    CEIL_RULE: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    DEVICE_OFFSET: tl.constexpr,
    INDEX64: tl.constexpr,
    RHT: tl.constexpr,
    OUT_VALUES: tl.constexpr,
    OUT_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCKS_K: tl.constexpr,
):
    """MXFP4 (nvfp4.formats.mxfp4) of BLOCK_M rows x BLOCKS_K 32-element blocks, optionally after an RHT32 along K:
    packed codes + E8M0 scale bytes, or (OUT_VALUES) the GEMM operand value(q) * 2^e. No tensor scale: one pass."""
    BK: tl.constexpr = BLOCKS_K * 32
    pid_m, pid_k = _tile_of_program((NB + BLOCKS_K - 1) // BLOCKS_K)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BK + tl.arange(0, BK)
    x = _load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS)
    if RHT:
        x = _rht(x, signs_ptr, BLOCK_M, BK, 32)
    x3 = tl.reshape(x, (BLOCK_M, BLOCKS_K, 32))
    amax_bits = _max_along(_abs_bits(x3), 2)
    # The exponent exactly, from the bits of the block amax = m * 2^k with m in [0.5, 1): k = E - 126 for a normal
    # amax; m <= 0.75 iff the mantissa field is <= 2^22. A zero or subnormal amax gives e <= -128: clamped to -127.
    biased = amax_bits >> 23
    k = biased - 126
    if CEIL_RULE:
        e = tl.where((amax_bits & 0x7FFFFF) <= 0x400000, k - 3, k - 2)
    else:
        e = k - 3
    e = tl.where(biased == 0, -127, e)
    e = tl.where(e < -127, -127, tl.where(e > 127, 127, e))
    bad = amax_bits >= _INF_BITS  # a NaN or Inf in the block: NaN scale (0xFF), codes 0, values NaN
    inv = _nan_where(bad, _pow2(-e))
    k1, k2 = _stream_keys(key1, key2, offset_ptr, DEVICE_OFFSET)
    codes = _e2m1_codes(x3 * inv[:, :, None], rows, cols, K, k1, k2, STOCHASTIC, BLOCK_M, BLOCKS_K, 32, INDEX64)
    if OUT_VALUES:
        values = _e2m1_value(codes) * _nan_where(bad, _pow2(e))[:, :, None]
        _store_values(out_ptr, tl.reshape(values, (BLOCK_M, BK)), rows, cols, M, K, stride_o, OUT_BF16)
    else:
        lo, hi = tl.split(tl.reshape(codes, (BLOCK_M, BLOCKS_K * 16, 2)))
        row_ok = (rows < M)[:, None]
        pcols = pid_k * (BLOCKS_K * 16) + tl.arange(0, BLOCKS_K * 16)
        tl.store(
            out_ptr + rows.to(tl.int64)[:, None] * stride_o + pcols[None, :],
            (lo | (hi << 4)).to(tl.uint8),
            mask=row_ok & (pcols < NB * 16)[None, :],
        )
        bcols = pid_k * BLOCKS_K + tl.arange(0, BLOCKS_K)
        tl.store(
            scales_ptr + rows.to(tl.int64)[:, None] * stride_s + bcols[None, :],
            tl.where(bad, 0xFF, e + 127).to(tl.uint8),
            mask=row_ok & (bcols < NB)[None, :],
        )


@triton.jit
def _fp8_scale(amax_bits):
    """The FP8 block scale from the block amax bits (nvfp4.formats.fp8): amax/448 by a true division; an all-zero
    block gets 1, an amax whose quotient underflows gets the smallest subnormal, a non-finite amax NaN."""
    amax = amax_bits.to(tl.float32, bitcast=True)
    scale = tl.div_rn(amax, _E4M3_MAX)  # div.rn: never a multiply by 1/448 (which rounds twice)
    tiny = (amax_bits * 0 + 1).to(tl.float32, bitcast=True)  # 2^-149, the smallest subnormal
    scale = tl.where(scale > 0, scale, tl.where(amax > 0, tiny, 1.0))
    return _nan_where(amax_bits >= _INF_BITS, scale)


@triton.jit
def _fp8_store(x, scale, rows, cols, M, K, out_ptr, stride_o, OUT_VALUES: tl.constexpr):
    """E4M3 of x / scale (RNE, saturating at ±448; NaN stays NaN) as bytes, or (OUT_VALUES) e4m3 · scale in FP32."""
    byte = _e4m3_encode(tl.div_rn(x, scale))
    offs = rows.to(tl.int64)[:, None] * stride_o + cols.to(tl.int64)[None, :]
    mask = (rows < M)[:, None] & (cols < K)[None, :]
    if OUT_VALUES:
        tl.store(out_ptr + offs, _e4m3_decode(byte) * scale, mask=mask)
    else:
        tl.store(out_ptr + offs, byte.to(tl.uint8), mask=mask)


@triton.jit
def _fp8_kernel(
    x_ptr, out_ptr, scales_ptr, M, K, NB, stride_r, stride_k, stride_o, stride_s,
    BF16_BITS: tl.constexpr, TILE_ROWS: tl.constexpr, OUT_VALUES: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """Blockwise FP8 (E4M3 values, FP32 scales amax_b / 448) of 1x128 blocks or 128x128 tiles of the logical (M, K)
    tensor. One program per block column and BLOCK_M rows (1x128) or per 128x128 tile (looping over its rows twice:
    amax, then encode). The grid is 1-D (pid = row program * NB + block column): no 65,535 limit on either axis."""
    pid = tl.program_id(0)
    pid_m = pid // NB
    pid_k = pid % NB
    cols = pid_k * 128 + tl.arange(0, 128)
    if TILE_ROWS == 1:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        x = _load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS)
        scale = _fp8_scale(_max_along(_abs_bits(x), 1))
        _fp8_store(x, scale[:, None], rows, cols, M, K, out_ptr, stride_o, OUT_VALUES)
        tl.store(scales_ptr + rows.to(tl.int64) * stride_s + pid_k, scale, mask=rows < M)
    else:
        first = pid_m * 128
        amax_bits = tl.full((BLOCK_M,), 0, tl.int32)  # tl.full, a builtin: tl.zeros is a jit function (see _max_along)
        for r in range(0, 128, BLOCK_M):
            rows = first + r + tl.arange(0, BLOCK_M)
            x = _load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS)
            amax_bits = tl.maximum(amax_bits, _max_along(_abs_bits(x), 1))
        scale = _fp8_scale(_max_along(amax_bits, 0))
        for r in range(0, 128, BLOCK_M):
            rows = first + r + tl.arange(0, BLOCK_M)
            x = _load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS)
            _fp8_store(x, scale, rows, cols, M, K, out_ptr, stride_o, OUT_VALUES)
            tl.store(scales_ptr + rows.to(tl.int64) * stride_s + pid_k, tl.full((BLOCK_M,), 0.0, tl.float32) + scale,
                     mask=rows < M)  # fmt: skip


@triton.jit
def _scaled_values_kernel(
    packed_ptr, scales_ptr, out_ptr, M, NB, stride_p, stride_s, stride_o, BLOCK_M: tl.constexpr, BLOCKS_K: tl.constexpr
):
    """value(code) * float(scale) for every (padded) element; exact in bf16/fp16/fp32."""
    pid_m, pid_k = _tile_of_program((NB + BLOCKS_K - 1) // BLOCKS_K)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = (rows < M)[:, None]
    roff = rows.to(tl.int64)[:, None]
    pcols = pid_k * (BLOCKS_K * 8) + tl.arange(0, BLOCKS_K * 8)
    packed = tl.load(
        packed_ptr + roff * stride_p + pcols[None, :], mask=row_ok & (pcols < NB * 8)[None, :], other=0
    ).to(tl.int32)
    codes = tl.reshape(tl.join(packed & 15, packed >> 4), (BLOCK_M, BLOCKS_K, 16))
    bcols = pid_k * BLOCKS_K + tl.arange(0, BLOCKS_K)
    scale_bytes = tl.load(
        scales_ptr + roff * stride_s + bcols[None, :], mask=row_ok & (bcols < NB)[None, :], other=0
    ).to(tl.int32)
    values = _e2m1_value(codes) * _e4m3_decode(scale_bytes)[:, :, None]
    ocols = pid_k * (BLOCKS_K * 16) + tl.arange(0, BLOCKS_K * 16)
    tl.store(
        out_ptr + roff * stride_o + ocols[None, :],
        tl.reshape(values, (BLOCK_M, BLOCKS_K * 16)).to(out_ptr.dtype.element_ty),
        mask=row_ok & (ocols < NB * 16)[None, :],
    )


# ----------------------------------------------------------------------------------------------
# Backend
# ----------------------------------------------------------------------------------------------

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _interpreted() -> bool:
    """True when the kernels above were built by Triton's CPU interpreter (TRITON_INTERPRET=1 was
    set when this module was imported; the kernels' type records what actually happened)."""
    return type(_quantize_kernel).__name__ == "InterpretedFunction"


def _as_int32(key: int) -> int:
    """A uint32 key as the int32 with the same bits (Triton passes it as i32, bitcast in-kernel)."""
    return key - (1 << 32) if key >= 1 << 31 else key


def _bf16_as_bits(x: torch.Tensor) -> torch.Tensor:
    """BF16 tensors go to the kernels as int16 bits (see _load_tile)."""
    return x.view(torch.int16) if x.dtype == torch.bfloat16 else x


def _needs_index64(rows: int, padded_cols: int) -> bool:
    """Whether SR element indices (row * K + col, padding columns included) can reach 2^32 (then 64-bit index
    arithmetic; else the cheaper 32-bit path, same bits)."""
    return rows * padded_cols >= 1 << 32


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class TritonBackend(BackendBase):
    """NVFP4, MXFP4 and FP8 kernels in Triton for CUDA devices (and the CPU under TRITON_INTERPRET=1, for tests)."""

    name = "triton"
    _FUSED_RHT = {"nvfp4": 16, "mxfp4": 32, "fp8": None}

    @classmethod
    def is_available(cls, device: torch.device) -> bool:
        device = torch.device(device)
        if device.type == "cuda":
            return torch.cuda.is_available()
        interpret = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")
        return device.type == "cpu" and interpret and _interpreted()

    @classmethod
    @functools.cache
    def instance(cls) -> TritonBackend:
        return cls()

    def __init__(self) -> None:
        self._signs_cache: dict[tuple[tuple[float, ...], str], torch.Tensor] = {}

    def supports(
        self, op: str, x: torch.Tensor, spec: QuantSpec | None = None, *,
        signs: torch.Tensor | None = None, amax: torch.Tensor | None = None,
    ) -> str | None:  # fmt: skip
        if not self.is_available(x.device):
            return f"not available on {x.device}"
        if x.dim() != 2 or x.numel() == 0:
            return "non-empty 2-D tensors only"
        if op == "scaled_values":
            return None
        if x.dtype not in _FLOAT_DTYPES:
            return f"fp32/bf16/fp16 input only, got {x.dtype}"
        if op != "quantize":
            return None
        if spec.format == "nvfp4" and spec.tile[0] not in (1, 16):
            return f"nvfp4 tiles (1, 16) and (16, 16) only, got {spec.tile}"
        if spec.rht is not None:
            if spec.rht != self._FUSED_RHT[spec.format] or signs is None:
                return f"no fused {spec.rht}-point RHT for {spec.format}"
            if logical_shape(x, spec)[1] % spec.rht:
                return f"K is not a multiple of the RHT size {spec.rht}"
            if signs.device.type == "cpu":  # a host vector is checked (once: cached); a device one would sync
                try:
                    self._device_signs(signs, x.device)
                except Unsupported as exc:
                    return str(exc)
        elif signs is not None:
            return "signs without spec.rht"
        return None

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _operand(x2d: torch.Tensor, transpose: bool) -> torch.Tensor:
        """The logical operand t = x2d (or x2d.t()) as a strided view the kernels read in place."""
        t = x2d.t() if transpose else x2d
        return t if 1 in t.stride() else t.contiguous()  # row- or column-major views are read as they are

    @staticmethod
    def _device_guard(device: torch.device) -> contextlib.AbstractContextManager:
        """Launch on the tensor's GPU; under the interpreter, silence NumPy's warnings about the
        IEEE results the kernels rely on (1/0 = inf, NaN compares) — they are not errors."""
        if device.type == "cuda":
            return torch.cuda.device(device)
        if _interpreted():
            import numpy

            return numpy.errstate(divide="ignore", invalid="ignore", over="ignore")
        return contextlib.nullcontext()

    def _device_signs(self, signs: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The sign vector as fp32 on ``device``. Host-side vectors (the usual case) are checked and
        their device copies cached, so a training step neither syncs nor copies; a vector that is
        already on the GPU is used as is (checking it would cost a device sync)."""
        if signs.device.type != "cpu":
            return signs.to(device=device, dtype=torch.float32).contiguous()
        values = tuple(float(v) for v in signs.reshape(-1).tolist())
        if any(v not in (1.0, -1.0) for v in values):
            raise Unsupported("signs must be ±1 (the reference raises the error)")
        key = (values, str(device))
        cached = self._signs_cache.get(key)
        if cached is None:
            cached = self._signs_cache[key] = torch.tensor(values, dtype=torch.float32, device=device)
        return cached

    @staticmethod
    def _sr_args(
        stochastic: bool, seed: int, offset: int | torch.Tensor, device: torch.device, dummy: torch.Tensor
    ) -> tuple[int, int, torch.Tensor, bool]:
        """(key1, key2, offset pointer, DEVICE_OFFSET): an offset tensor on the kernel's device is read by the kernel
        (no host sync, CUDA-graph safe); an int, or a tensor elsewhere (e.g. a CPU counter), gives host-side keys."""
        if not stochastic:
            return 0, 0, dummy, False
        if isinstance(offset, torch.Tensor) and offset.device == device:
            w1, w2 = device_key_words(seed)
            return _as_int32(w1), _as_int32(w2), offset.reshape(1).to(torch.int64), True
        k1, k2 = derive_keys(seed, offset_value(offset))
        return _as_int32(k1), _as_int32(k2), dummy, False

    def _launch_amax(self, t: torch.Tensor, signs: torch.Tensor | None) -> torch.Tensor:
        rows, cols = t.shape
        out = torch.zeros(1, dtype=torch.int32, device=t.device)  # +0.0; every |x| bit pattern is >= 0
        grid = (_cdiv(rows, _A_BLOCK_M) * _cdiv(cols, _A_BLOCK_K),)
        with self._device_guard(t.device):
            _amax_kernel[grid](
                _bf16_as_bits(t),
                signs if signs is not None else out,
                out,
                rows,
                cols,
                t.stride(0),
                t.stride(1),
                BF16_BITS=t.dtype == torch.bfloat16,
                RHT=signs is not None,
                BLOCK_M=_A_BLOCK_M,
                BLOCK_K=_A_BLOCK_K,
                num_warps=_A_WARPS,
                enable_fp_fusion=False,
            )
        return out.view(torch.float32).reshape(())

    def _launch_quantize(
        self,
        t: torch.Tensor,
        amax: torch.Tensor,
        tile_rows: int,
        stochastic: bool,
        seed: int,
        offset: int | torch.Tensor,
        signs: torch.Tensor | None,
        values_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """NVFP4 of the logical (M, K) tensor t: (packed, scales), or (values (M, K), None) when values_dtype is set
        (bf16 or fp32)."""
        rows, cols = t.shape
        nblk = _cdiv(cols, BLOCK)
        if values_dtype is None:
            out = torch.empty(rows, nblk * 8, dtype=torch.uint8, device=t.device)
            scales = torch.empty(rows, nblk, dtype=torch.uint8, device=t.device)
        else:
            out = torch.empty(rows, cols, dtype=values_dtype, device=t.device)
            scales = None
        amax_buf = amax.to(device=t.device, dtype=torch.float32).reshape(1)
        key1, key2, offset_buf, device_offset = self._sr_args(stochastic, seed, offset, t.device, amax_buf)
        grid = (_cdiv(rows, _Q_BLOCK_M) * _cdiv(nblk, _Q_BLOCKS_K),)
        with self._device_guard(t.device):
            _quantize_kernel[grid](
                _bf16_as_bits(t),
                amax_buf,
                signs if signs is not None else amax_buf,
                _bf16_as_bits(out),
                scales if scales is not None else amax_buf,
                rows,
                cols,
                nblk,
                t.stride(0),
                t.stride(1),
                out.stride(0),
                scales.stride(0) if scales is not None else 0,
                key1,
                key2,
                offset_buf,
                BF16_BITS=t.dtype == torch.bfloat16,
                TILE_ROWS=tile_rows,
                STOCHASTIC=bool(stochastic),
                DEVICE_OFFSET=device_offset,
                INDEX64=_needs_index64(rows, nblk * BLOCK),
                RHT=signs is not None,
                OUT_VALUES=values_dtype is not None,
                OUT_BF16=values_dtype == torch.bfloat16,
                BLOCK_M=_Q_BLOCK_M,
                BLOCKS_K=_Q_BLOCKS_K,
                num_warps=_Q_WARPS,
                enable_fp_fusion=False,
            )
        return (out, None) if scales is None else (out, scales.view(torch.float8_e4m3fn))

    def _launch_mxfp4(
        self,
        t: torch.Tensor,
        stochastic: bool,
        seed: int,
        offset: int | torch.Tensor,
        scale_rule: str,
        signs: torch.Tensor | None,
        values_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows, cols = t.shape
        nblk = _cdiv(cols, 32)
        if values_dtype is None:
            out = torch.empty(rows, nblk * 16, dtype=torch.uint8, device=t.device)
            scales = torch.empty(rows, nblk, dtype=torch.uint8, device=t.device)
        else:
            out = torch.empty(rows, cols, dtype=values_dtype, device=t.device)
            scales = None
        key1, key2, offset_buf, device_offset = self._sr_args(stochastic, seed, offset, t.device, out)
        grid = (_cdiv(rows, _Q_BLOCK_M) * _cdiv(nblk, _MX_BLOCKS_K),)
        with self._device_guard(t.device):
            _mxfp4_kernel[grid](
                _bf16_as_bits(t),
                signs if signs is not None else out,
                _bf16_as_bits(out),
                scales if scales is not None else out,
                rows,
                cols,
                nblk,
                t.stride(0),
                t.stride(1),
                out.stride(0),
                scales.stride(0) if scales is not None else 0,
                key1,
                key2,
                offset_buf,
                BF16_BITS=t.dtype == torch.bfloat16,
                CEIL_RULE=scale_rule == "ceil",
                STOCHASTIC=bool(stochastic),
                DEVICE_OFFSET=device_offset,
                INDEX64=_needs_index64(rows, nblk * 32),
                RHT=signs is not None,
                OUT_VALUES=values_dtype is not None,
                OUT_BF16=values_dtype == torch.bfloat16,
                BLOCK_M=_Q_BLOCK_M,
                BLOCKS_K=_MX_BLOCKS_K,
                num_warps=_Q_WARPS,
                enable_fp_fusion=False,
            )
        return (out, None) if scales is None else (out, scales.view(torch.float8_e8m0fnu))

    def _launch_fp8(
        self, t: torch.Tensor, tile: tuple[int, int], out_values: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = t.shape
        nblk = _cdiv(cols, 128)
        out = torch.empty(rows, cols, dtype=torch.float32 if out_values else torch.uint8, device=t.device)
        scales = torch.empty(rows, nblk, dtype=torch.float32, device=t.device)
        row_programs = _cdiv(rows, _FP8_BLOCK_M if tile[0] == 1 else 128)
        with self._device_guard(t.device):
            _fp8_kernel[(row_programs * nblk,)](
                _bf16_as_bits(t), out, scales, rows, cols, nblk, t.stride(0), t.stride(1), out.stride(0),
                scales.stride(0), BF16_BITS=t.dtype == torch.bfloat16, TILE_ROWS=tile[0], OUT_VALUES=out_values,
                BLOCK_M=_FP8_BLOCK_M, num_warps=4, enable_fp_fusion=False,
            )  # fmt: skip
        return out, scales

    # -- the kernels of the contract (nvfp4.kernels.contract; semantics: ReferenceBackend) ----------

    def amax_kernel(self, x2d: torch.Tensor) -> torch.Tensor:
        """max|x| as an FP32 0-d tensor (NaN if any NaN), one pass with a grid-wide atomic max."""
        return self._launch_amax(self._operand(x2d, False), None)

    def quantize_kernel(
        self, x2d: torch.Tensor, spec: QuantSpec, *, amax: torch.Tensor | None = None,
        signs: torch.Tensor | None = None, seed: int = 0, offset: int | torch.Tensor = 0,
    ) -> Quantized:  # fmt: skip
        """t read in place (never transposed by a copy); NVFP4: the amax pass (of the RHT'd t, recomputed rather
        than stored: re-reading x costs less than writing and re-reading a BF16 intermediate) unless given, then one
        fused pass; MXFP4 and FP8: one pass."""
        t = self._operand(x2d, spec.transpose)
        dev_signs = None if signs is None else self._device_signs(signs, t.device)
        values_dtype = None
        if not spec.packed:
            values_dtype = spec.out_dtype if spec.out_dtype in (torch.bfloat16, torch.float32) else torch.float32
        if spec.format == "nvfp4":
            if amax is None:
                used = self._launch_amax(t, dev_signs)
            else:
                used = torch.as_tensor(amax).to(device=t.device, dtype=torch.float32).reshape(())
            out, scales = self._launch_quantize(
                t, used, spec.tile[0], spec.stochastic, int(seed), offset, dev_signs, values_dtype
            )
        elif spec.format == "mxfp4":
            used = None
            out, scales = self._launch_mxfp4(
                t, spec.stochastic, int(seed), offset, spec.scale_rule, dev_signs, values_dtype
            )
        else:
            used = None
            out, scales = self._launch_fp8(t, spec.tile, out_values=not spec.packed)
            if spec.packed:
                return Quantized(out.view(torch.float8_e4m3fn), scales, None)
            scales = None
        if not spec.packed and out.dtype != spec.out_dtype:
            out = out.to(spec.out_dtype)
        return Quantized(out, scales, used)

    def scaled_values_kernel(
        self, packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
    ) -> torch.Tensor:
        """value(q) × block scale for every (padded) element: (M, ceil(K/16)*16), exact in BF16."""
        native = dtype if dtype in _FLOAT_DTYPES else torch.float32
        rows, nbytes = packed.shape
        nblk = nbytes // 8
        packed = packed.contiguous()
        scale_bytes = scales.view(torch.uint8).to(packed.device).contiguous()
        out = torch.empty(rows, nblk * BLOCK, dtype=native, device=packed.device)
        grid = (_cdiv(rows, _Q_BLOCK_M) * _cdiv(nblk, _Q_BLOCKS_K),)
        with self._device_guard(packed.device):
            _scaled_values_kernel[grid](
                packed,
                scale_bytes,
                out,
                rows,
                nblk,
                packed.stride(0),
                scale_bytes.stride(0),
                out.stride(0),
                BLOCK_M=_Q_BLOCK_M,
                BLOCKS_K=_Q_BLOCKS_K,
                num_warps=_Q_WARPS,
                enable_fp_fusion=False,
            )
        return out if native == dtype else out.to(dtype)
