"""Triton numerics: exact FP32 building blocks shared by the kernels (E4M3/BF16 rounding on bits, E2M1 codes,
the counter-based RNG, the 16-point RHT butterflies, tile loads and stores).

Every helper reproduces a step of the reference (``nvfp4.formats``) bit for bit. How each FP32 step is kept exact on
a GPU:
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
"""

from __future__ import annotations

import triton
import triton.language as tl

BLOCK = 16


# FP32 constants, each exactly representable, so Triton's fp32 literals hold the same values as
# the reference's FP32 tensors (1/6 is the FP32 rounding of 1/6, written out exactly).
FLT_MAX: tl.constexpr = tl.constexpr(3.4028234663852886e38)
E4M3_MAX: tl.constexpr = tl.constexpr(448.0)
E4M3_TIMES_E2M1: tl.constexpr = tl.constexpr(2688.0)
RCP_E4M3_MAX_F32: tl.constexpr = tl.constexpr(0.0022321429569274187)  # float32(1/448) = 0x3B124925
ONE_SIXTH_F32: tl.constexpr = tl.constexpr(0.1666666716337204)  # float32(1/6) = 0x3E2AAAAB
E4M3_MIN_NORMAL: tl.constexpr = tl.constexpr(0.015625)  # 2^-6
E4M3_SUBNORMAL_STEP: tl.constexpr = tl.constexpr(0.001953125)  # 2^-9
ABS_MASK: tl.constexpr = tl.constexpr(0x7FFFFFFF)
INF_BITS: tl.constexpr = tl.constexpr(0x7F800000)
NAN_BITS: tl.constexpr = tl.constexpr(0x7FC00000)  # a NaN global would trip Triton's constant check (nan != nan)
INV_SQRT32_F32: tl.constexpr = tl.constexpr(0.1767766922712326)  # float32(1/sqrt(32)), as hadamard.py's
INV_SQRT32_F32_X256: tl.constexpr = tl.constexpr(0.1767766922712326 * 256.0)  # exact: a power of two times it
RHT_BIG_BITS: tl.constexpr = tl.constexpr(0x7B800000)  # 2^120: chunks at or above are pre-scaled (hadamard.py)
BF16_NAN_BITS: tl.constexpr = tl.constexpr(0x7FC0)  # torch's canonical BF16 NaN

# ----------------------------------------------------------------------------------------------
# Elementwise helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def max_along(x, AXIS: tl.constexpr, KEEP_DIMS: tl.constexpr = False):
    """tl.max, spelled as tl.reduce with Triton's own max combiner.

    Why not tl.max: it is a @triton.jit library function, and the CPU interpreter can only run
    those if TRITON_INTERPRET was set before Triton was imported, which importing torch._dynamo
    (e.g. via torch.compiler.disable) does early. tl.reduce is a builtin, and with this combiner
    the interpreter still takes its vectorised NumPy path. Compiled code is identical to tl.max.
    """
    return tl.reduce(x, AXIS, tl.standard._elementwise_max, keep_dims=KEEP_DIMS)


@triton.jit
def sum_along(x, AXIS: tl.constexpr, KEEP_DIMS: tl.constexpr = False):
    """tl.sum without dtype promotion (fp32 in, fp32 out), as tl.reduce for the reason above."""
    return tl.reduce(x, AXIS, tl.standard._sum_combine, keep_dims=KEEP_DIMS)


@triton.jit
def abs_bits(x):
    """|x| as int32 bits: order-preserving for non-negative floats, NaN above Inf."""
    return x.to(tl.int32, bitcast=True) & ABS_MASK


@triton.jit
def nan_where(cond, x):
    """NaN where cond, else x (fp32)."""
    return tl.where(cond, (x.to(tl.int32, bitcast=True) * 0 + NAN_BITS).to(tl.float32, bitcast=True), x)


@triton.jit
def negate(x):
    """-x (fp32) by flipping the sign bit: IEEE negation, so -(+0.0) is -0.0. Triton's unary minus is 0 - x,
    which gave +0.0 for a zero in Triton 3.6's interpreter and so lost the reference's -0."""
    return (x.to(tl.uint32, bitcast=True) ^ 0x80000000).to(tl.float32, bitcast=True)


@triton.jit
def clamp_max(x, hi):
    """min(x, hi) that keeps NaN (like torch.clamp)."""
    return tl.where(x > hi, hi, x)


@triton.jit
def round_to_bf16(x):
    """FP32 -> nearest-even BF16, returned as FP32. Integer RNE on the top 16 bits; NaN passes
    through untouched (the integer trick could turn a low-payload NaN into Inf)."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(x != x, x, rounded.to(tl.float32, bitcast=True))


@triton.jit
def e4m3_encode(s):
    """FP32 -> E4M3 (fn) byte, round-to-nearest-even, saturating to ±448, NaN -> 0x7F|sign.

    Normal range (|s| >= 2^-6): add the RNE bias to the 20 discarded mantissa bits and rebias
    the exponent (127 -> 7). Subnormal range: |s|/2^-9 is exact, and is rounded to an integer
    0..8 with an exact floor/fraction test (8 is the smallest normal, encoded 0x08 as well).
    """
    bits = s.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = tl.abs(s)
    a = tl.where(a > E4M3_MAX, E4M3_MAX, a)  # satfinite (NaN is handled below)
    abits = a.to(tl.int32, bitcast=True)
    normal = ((abits + 0x7FFFF + ((abits >> 20) & 1)) >> 20) - (120 << 3)
    y = a * 512.0  # exact (power-of-two scaling); only used where a < 2^-6, i.e. y < 8
    floor_y = tl.floor(y)
    frac = y - floor_y  # exact (Sterbenz)
    q = floor_y.to(tl.int32)
    round_up = (frac > 0.5) | ((frac == 0.5) & ((q & 1) == 1))
    subnormal = q + round_up.to(tl.int32)
    mag = tl.where(a >= E4M3_MIN_NORMAL, normal, subnormal)
    mag = tl.where(s != s, 0x7F, mag)
    return mag | sign


@triton.jit
def e4m3_decode(byte):
    """E4M3 (fn) byte (int32 0..255) -> FP32, exactly; 0x7F/0xFF -> NaN."""
    exp = (byte >> 3) & 0xF
    man = byte & 7
    normal = (((exp + 120) << 23) | (man << 20)).to(tl.float32, bitcast=True)
    subnormal = man.to(tl.float32) * E4M3_SUBNORMAL_STEP
    mag = tl.where(exp == 0, subnormal, normal)
    mag = nan_where((byte & 0x7F) == 0x7F, mag)
    return tl.where((byte & 0x80) != 0, negate(mag), mag)


@triton.jit
def e2m1_magnitude_rn(a):
    """E2M1 magnitude index 0..7 of |v| in [0, 6] by round-to-nearest-even (the decision boundaries of e2m1.py).

    From the bits instead of a 7-compare chain: for a >= 1, a = 1.m x 2^e and the index is 2 + 2e + (top mantissa
    bit) after rounding the mantissa to one bit, nearest-even, by integer arithmetic (a carry moves into the
    exponent: 1.75 -> 2.0); below 1 two compares pick 0, 0.5 or 1. NaN compares false: index 0."""
    bits = a.to(tl.int32, bitcast=True)
    big = ((bits + 0x1FFFFF + ((bits >> 22) & 1)) >> 22) - 252  # (exponent << 1 | m1) - (127 << 1) + 2
    small = (a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32)
    return tl.where(a >= 1.0, big, small)


@triton.jit
def grid_step(a):
    return tl.where(a < 2.0, 0.5, tl.where(a < 4.0, 1.0, 2.0))


@triton.jit
def mix32(h):
    """The uint32 finalizer of nvfp4.formats.rng (wrapping multiplies)."""
    h = h ^ (h >> 16)
    h = h * 0x21F0AAAD
    h = h ^ (h >> 15)
    h = h * 0x735A2D97
    return h ^ (h >> 15)


@triton.jit
def random_bytes(index, key1, key2):
    """Counter-based random byte for int64 element indices (nvfp4.formats.rng.random_bytes)."""
    lo = index.to(tl.uint32)  # truncation keeps the low word
    hi = (index >> 32).to(tl.uint32)
    h = mix32(mix32(lo ^ key1) ^ hi ^ key2)
    return (h >> 24).to(tl.int32)


@triton.jit
def stream_keys(key1, key2, offset_ptr, DEVICE_OFFSET: tl.constexpr):
    """The SR stream keys (k1, k2) as uint32. With DEVICE_OFFSET the 64-bit offset is read from device memory and
    the keys are derived here (nvfp4.formats.rng.device_key_words gives key1 = the seed's word, key2 = the last
    constant), so an offset that advances every step needs no host sync and no new launch arguments."""
    k1 = key1.to(tl.uint32, bitcast=True)
    k2 = key2.to(tl.uint32, bitcast=True)
    if DEVICE_OFFSET:
        off = tl.load(offset_ptr)
        k1 = mix32(mix32(k1 ^ off.to(tl.uint32)) ^ (off >> 32).to(tl.uint32))
        k2 = mix32(k1 ^ k2)
    return k1, k2


@triton.jit
def random_bytes32(index, key1, key2):
    """random_bytes for indices below 2^32 (uint32): the high word is 0, so no 64-bit arithmetic is needed."""
    h = mix32(mix32(index ^ key1) ^ key2)
    return (h >> 24).to(tl.int32)


@triton.jit
def e2m1_value(code):
    """Real value of a code 0..15 (exact in FP32); code 8 gives -0.0 like the reference table."""
    m = code & 7
    mf = m.to(tl.float32)
    mag = tl.where(m < 4, mf * 0.5, tl.where(m < 6, mf - 2.0, (mf - 4.0) * 2.0))
    return tl.where(code >= 8, negate(mag), mag)


@triton.jit
def butterfly_stage(y, ROWS: tl.constexpr, H: tl.constexpr, N: tl.constexpr = 16):
    """One stage of hadamard._butterfly on rows of N: pairs (j, j+H) -> (a + b, a - b).

    Written with reductions over the size-2 pair axis instead of split/join/permute: Triton keeps
    a reduce + broadcast over an in-thread axis in registers, whereas split/join chains made
    it shuffle data through shared memory. A 2-element sum is the single FP32 addition a + b
    (commutative, so it does not matter which lane adds), and IEEE defines a - b as a + (-b),
    so every result is bit-identical to the reference's.
    """
    z = tl.reshape(y, (ROWS, N // (2 * H), 2, H))
    second = (tl.arange(0, 2) == 1)[None, None, :, None]
    total = sum_along(z, 2, True)
    difference = sum_along(tl.where(second, negate(z), z), 2, True)
    return tl.reshape(tl.where(second, difference, total), (ROWS, N))


@triton.jit
def rht(x, signs_ptr, BLOCK_M: tl.constexpr, BK: tl.constexpr, N: tl.constexpr = 16):
    """N-point RHT (N = 16 or 32) of each N-chunk of a (BLOCK_M, BK) fp32 tile, rounded to BF16 (kept as fp32).

    Same FP32 operations in the same order as hadamard.random_hadamard_transform: sign multiply
    (exact), stages h = 1, 2, 4, 8 (, 16), then * FP32(1/sqrt(N)), then RNE to BF16. (A tl.dot would
    sum in a different order and not be bit-identical.)
    """
    ROWS: tl.constexpr = BLOCK_M * (BK // N)
    signs = tl.load(signs_ptr + tl.arange(0, N))
    y = tl.reshape(x, (ROWS, N)) * signs[None, :]
    # Overflow-safe: a chunk with a |value| >= 2^120 is scaled by 2^-8 first and by norm x 2^8 last (hadamard.py).
    big = max_along(abs_bits(y), 1) >= RHT_BIG_BITS
    y = tl.where(big[:, None], y * 0.00390625, y)
    y = butterfly_stage(y, ROWS, 1, N)
    y = butterfly_stage(y, ROWS, 2, N)
    y = butterfly_stage(y, ROWS, 4, N)
    y = butterfly_stage(y, ROWS, 8, N)
    if N == 32:
        y = butterfly_stage(y, ROWS, 16, N)
        y = round_to_bf16(y * tl.where(big, INV_SQRT32_F32_X256, INV_SQRT32_F32)[:, None])
    else:
        y = round_to_bf16(y * tl.where(big, 64.0, 0.25)[:, None])
    return tl.reshape(y, (BLOCK_M, BK))


@triton.jit
def load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS: tl.constexpr):
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
def e2m1_codes(
    v,
    rows,
    cols,
    K,
    key1,
    key2,
    STOCHASTIC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCKS_K: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    INDEX64: tl.constexpr,
):
    """E2M1 codes (RN or SR, SPEC §2-3) of scaled values v (BLOCK_M, BLOCKS_K, BLOCK_SIZE): clamped to ±6 first
    (NaN stays NaN and gets code 0); SR bytes keyed by the element index row * K + col of the logical tensor."""
    v = tl.where(v < -6.0, -6.0, clamp_max(v, 6.0))
    a = tl.abs(v)
    if STOCHASTIC:
        # Padding columns alias the next row's indices as in the reference; they hold zeros and round to 0.
        k1, k2 = key1, key2  # uint32 (from stream_keys)
        if INDEX64:
            index = rows.to(tl.int64)[:, None] * K + cols[None, :]
            r = random_bytes(index, k1, k2)
        else:  # the launcher checked that every index (padding included) is below 2^32
            index = rows.to(tl.uint32)[:, None] * K.to(tl.uint32) + cols.to(tl.uint32)[None, :]
            r = random_bytes32(index, k1, k2)
        r = tl.reshape(r, (BLOCK_M, BLOCKS_K, BLOCK_SIZE))
        u = r.to(tl.float32) * 0.00390625  # r/256, exact
        t = a + u * grid_step(a)  # u*step exact, so FMA or not gives the same t
        # q = min(floor(t / step(t)) * step(t), 6) is a grid value; its index follows from n = floor(t / step(t))
        # directly: n on the 0.5-grid (t < 2), n + 2 on the 1-grid (t < 4), n + 4 on the 2-grid (t < 8 always, so
        # n <= 3 there and the clamp to 6 is the index clamp to 7). t / step(t) == t * (1/step(t)) exactly: the
        # reciprocal is a power of two. A NaN t gets index 0, as the reference's comparisons give it.
        inv_step_t = tl.where(t < 2.0, 2.0, tl.where(t < 4.0, 1.0, 0.5))
        offset = tl.where(t < 2.0, 0, tl.where(t < 4.0, 2, 4))
        n = tl.floor(t * inv_step_t)
        mag = tl.where(t != t, 0, tl.minimum(tl.where(t != t, 0.0, n).to(tl.int32) + offset, 7))
    else:
        mag = e2m1_magnitude_rn(a)
    return mag | ((v < 0).to(tl.int32) << 3)


@triton.jit
def store_values(out_ptr, values, rows, cols, M, K, stride_o, OUT_BF16: tl.constexpr):
    """Store exact GEMM values (BLOCK_M, BK) of the logical (M, K) output. BF16 goes out as its bits (the top half
    of the FP32 bits: the values are exact in BF16), NaN as torch's 0x7FC0, so no float conversion is involved."""
    offs = rows.to(tl.int64)[:, None] * stride_o + cols[None, :]
    mask = (rows < M)[:, None] & (cols < K)[None, :]
    if OUT_BF16:
        bits = (values.to(tl.int32, bitcast=True) >> 16) & 0xFFFF
        bits = tl.where(values != values, BF16_NAN_BITS, bits)
        tl.store(out_ptr + offs, bits.to(tl.int16), mask=mask)
    else:
        tl.store(out_ptr + offs, values, mask=mask)
