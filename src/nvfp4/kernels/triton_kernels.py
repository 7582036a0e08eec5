"""Triton kernels: NVFP4 amax, quantize (1x16 / 16x16, RN / SR, fused RHT16, packed or GEMM-operand values), MXFP4
(fused RHT32), FP8 blockwise and the NVFP4 decode, each one pass over its input; launched by ``triton_backend``.

Layout for speed: each program loads a (BLOCK_M, 16*BLOCKS_K) tile with 16-byte vector loads,
views it as (BLOCK_M, BLOCKS_K, 16) so block maxima are in-thread/in-warp reductions, packs two
codes per byte in registers, and writes packed bytes and scale bytes with vector stores. The
tensor amax is a per-tile max followed by one relaxed ``atomic_max`` per program.
"""

from __future__ import annotations

import triton
import triton.language as tl

from nvfp4.kernels.triton_numerics import (
    E4M3_MAX,
    E4M3_TIMES_E2M1,
    FLT_MAX,
    INF_BITS,
    ONE_SIXTH_F32,
    RCP_E4M3_MAX_F32,
    abs_bits,
    clamp_max,
    e2m1_codes,
    e2m1_value,
    e4m3_decode,
    e4m3_encode,
    load_tile,
    max_along,
    nan_where,
    rht,
    round_to_bf16,
    store_values,
    stream_keys,
    sum_along,
)

# Launch shapes: one program per (rows x 16-element blocks) tile. 32 x 128 elements with 4 warps
# gives each thread 32 elements (two 16-byte loads per 8 bf16 / 4 fp32), and ~16K programs for an
# 8192x8192 tensor, enough to fill 132 SMs many times over. Untuned: measure with benchmarks/gpu.py.
Q_BLOCK_M = 32
Q_BLOCKS_K = 8
Q_WARPS = 4
MX_BLOCKS_K = 4  # MXFP4: 4 blocks of 32, the same 128 columns per program
FP8_BLOCK_M = 16  # FP8: 16 rows x one 128-column block per program (a 128x128 tile loops over 8 of them)
# amax reads more per program (fewer atomics on the single output word).
A_BLOCK_M = 32
A_BLOCK_K = 256
A_WARPS = 8


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def tile_of_program(col_programs):
    """(row tile, column tile) of this program in a 1-D grid of row tiles x ``col_programs``, column tiles varying
    fastest. One axis of up to 2^31 - 1 programs: a 2-D grid's second axis stops at 65,535, which a transposed
    operand (column tiles = tokens / 128) reached above ~8.4M tokens."""
    pid = tl.program_id(0)
    pid_m = pid // col_programs
    return pid_m, pid - pid_m * col_programs


@triton.jit
def amax_kernel(
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
    pid_m, pid_k = tile_of_program((K + BLOCK_K - 1) // BLOCK_K)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    x = load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS)
    if RHT:
        x = rht(x, signs_ptr, BLOCK_M, BLOCK_K)
    tile_max = max_along(max_along(abs_bits(x), 1), 0)
    tl.atomic_max(out_ptr, tile_max, sem="relaxed")


@triton.jit(do_not_specialize=["key1", "key2"])
def nvfp4_quantize_kernel(
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
    FOUR_OVER_SIX: tl.constexpr = False,
):
    """One program quantizes BLOCK_M rows x BLOCKS_K 16-element blocks (SPEC §2, §3).

    FOUR_OVER_SIX: adaptive 4/6 block scales (nvfp4.formats.fouroversix): both candidates, the lower error kept.

    OUT_VALUES: write the GEMM operand value(q) * s_b (FP32 or BF16, (M, K), row stride stride_p) to packed_ptr
    instead of packed codes + scale bytes ("fake quantization": no packed intermediate)."""
    BK: tl.constexpr = BLOCKS_K * 16
    pid_m, pid_k = tile_of_program((NB + BLOCKS_K - 1) // BLOCKS_K)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BK + tl.arange(0, BK)
    x = load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS)
    if RHT:
        x = rht(x, signs_ptr, BLOCK_M, BK)
    x3 = tl.reshape(x, (BLOCK_M, BLOCKS_K, 16))

    # Block amax (bits; NaN sorts highest), 1x16 or 16x16 (repeated over the tile's rows).
    amax_bits = max_along(abs_bits(x3), 2)
    if TILE_ROWS == 16:
        tile_bits = max_along(tl.reshape(amax_bits, (BLOCK_M // 16, 16, BLOCKS_K)), 1)
        amax_bits = tl.reshape(
            tl.broadcast_to(tile_bits[:, None, :], (BLOCK_M // 16, 16, BLOCKS_K)), (BLOCK_M, BLOCKS_K)
        )
    block_amax = amax_bits.to(tl.float32, bitcast=True)

    amax = tl.load(amax_ptr)
    bad = (amax_bits >= INF_BITS) | (abs_bits(amax) >= INF_BITS)
    k1, k2 = stream_keys(key1, key2, offset_ptr, DEVICE_OFFSET)
    if FOUR_OVER_SIX:
        # Four Over Six, in the reference's order: S_enc = min(C/amax, FLT_MAX), sf6 = (amax_b / fp32(6 adj)) S_enc,
        # sf4 = 1.5 sf6; both candidates rounded with the same random bits; the lower pairwise error wins.
        c_enc = FOS_C_ENC_SR if STOCHASTIC else FOS_C_ENC
        c_q = FOS_C_Q_SR if STOCHASTIC else FOS_C_Q
        s_enc = clamp_max(tl.div_rn(c_enc, amax), FLT_MAX)
        s_dec = tl.div_rn(1.0, s_enc)
        sf6 = tl.div_rn(block_amax, tl.full(block_amax.shape, c_q, tl.float32)) * s_enc
        sf6 = tl.where(amax == 0.0, 0.0, sf6)
        byte6 = tl.where(bad, 0x7F, e4m3_encode(clamp_max(sf6, E4M3_MAX)))
        byte4 = tl.where(bad, 0x7F, e4m3_encode(clamp_max(sf6 * 1.5, E4M3_MAX)))
        codes6, err6 = fos_candidate(
            x3, byte6, s_dec, amax, c_enc, rows, cols, K, k1, k2, STOCHASTIC, BLOCK_M, BLOCKS_K, INDEX64, TILE_ROWS
        )
        codes4, err4 = fos_candidate(
            x3, byte4, s_dec, amax, c_enc, rows, cols, K, k1, k2, STOCHASTIC, BLOCK_M, BLOCKS_K, INDEX64, TILE_ROWS
        )
        four = err4 < err6  # a tie (or NaN) keeps 6
        codes = tl.where(four[:, :, None], codes4, codes6)
        scale_byte = tl.where(four, byte4, byte6)
    else:
        # Tensor scale, in the reference's order: S_enc = min(2688/amax, FLT_MAX), S_dec = 1/S_enc.
        s_enc = clamp_max(tl.div_rn(E4M3_TIMES_E2M1, amax), FLT_MAX)
        s_dec = tl.div_rn(1.0, s_enc)
        scale = block_amax * (s_enc * ONE_SIXTH_F32)  # S_enc*(1/6) first, then * amax_b
        scale = clamp_max(scale, E4M3_MAX)  # = clamp(FLT_MAX) then clamp(448)
        scale_byte = tl.where(bad, 0x7F, e4m3_encode(scale))

        # Encode with the ROUNDED scale, by a true division; zero scale -> 1/0 = inf -> FLT_MAX.
        enc = clamp_max(tl.div_rn(1.0, e4m3_decode(scale_byte) * s_dec), FLT_MAX)
        v = x3 * enc[:, :, None]
        codes = e2m1_codes(v, rows, cols, K, k1, k2, STOCHASTIC, BLOCK_M, BLOCKS_K, 16, INDEX64)
    if OUT_VALUES:
        values = e2m1_value(codes) * e4m3_decode(scale_byte)[:, :, None]
        store_values(packed_ptr, tl.reshape(values, (BLOCK_M, BK)), rows, cols, M, K, stride_p, OUT_BF16)
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


# Four Over Six constants: C = fp32(6 * 256 * adj) and fp32(6 * adj), adj = 1 (RN) or 16/17 (SR headroom).
FOS_C_ENC: tl.constexpr = tl.constexpr(1536.0)
FOS_C_ENC_SR: tl.constexpr = tl.constexpr(1445.6470947265625)  # float32(1536 * (16/17))
FOS_C_Q: tl.constexpr = tl.constexpr(6.0)
FOS_C_Q_SR: tl.constexpr = tl.constexpr(5.6470589637756348)  # float32(6 * (16/17))


@triton.jit
def pair_sum(t, SHAPE0: tl.constexpr, SHAPE1: tl.constexpr, N: tl.constexpr):
    """(SHAPE0, SHAPE1, N) -> (SHAPE0, SHAPE1, N/2): sums of adjacent pairs (a two-term sum: no order to agree on)."""
    return sum_along(tl.reshape(t, (SHAPE0, SHAPE1, N // 2, 2)), 3)  # not tl.sum: see sum_along


@triton.jit
def fos_candidate(
    x3,
    byte,
    s_dec,
    amax,
    c_enc: tl.constexpr,
    rows,
    cols,
    K,
    k1,
    k2,
    STOCHASTIC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCKS_K: tl.constexpr,
    INDEX64: tl.constexpr,
    TILE_ROWS: tl.constexpr,
):
    """One Four Over Six candidate: (codes, error per block) with the error summed as nvfp4.formats.fouroversix
    does: adjacent pairs along each row's 16 elements, then (16x16 tiles) adjacent pairs of the tile's 16 rows."""
    s = e4m3_decode(byte)
    enc = tl.div_rn(1.0, s_dec * s)
    v = tl.where((s != 0.0)[:, :, None], x3 * enc[:, :, None], 0.0)  # NaN != 0: a NaN scale gives NaN
    v = tl.where(v > 6.0, 6.0, tl.where(v < -6.0, -6.0, v))
    codes = e2m1_codes(v, rows, cols, K, k1, k2, STOCHASTIC, BLOCK_M, BLOCKS_K, 16, INDEX64)
    deq = (e2m1_value(codes) * s[:, :, None]) * amax
    d = tl.div_rn(deq, tl.full(deq.shape, c_enc, tl.float32)) - x3
    e = d * d
    e = pair_sum(e, BLOCK_M, BLOCKS_K, 16)
    e = pair_sum(e, BLOCK_M, BLOCKS_K, 8)
    e = pair_sum(e, BLOCK_M, BLOCKS_K, 4)
    err = tl.reshape(pair_sum(e, BLOCK_M, BLOCKS_K, 2), (BLOCK_M, BLOCKS_K))
    if TILE_ROWS == 16:
        t = tl.permute(tl.reshape(err, (BLOCK_M // 16, 16, BLOCKS_K)), (0, 2, 1))  # (tiles, blocks, 16 rows)
        t = pair_sum(t, BLOCK_M // 16, BLOCKS_K, 16)
        t = pair_sum(t, BLOCK_M // 16, BLOCKS_K, 8)
        t = pair_sum(t, BLOCK_M // 16, BLOCKS_K, 4)
        t = tl.reshape(pair_sum(t, BLOCK_M // 16, BLOCKS_K, 2), (BLOCK_M // 16, BLOCKS_K))
        err = tl.reshape(tl.broadcast_to(t[:, None, :], (BLOCK_M // 16, 16, BLOCKS_K)), (BLOCK_M, BLOCKS_K))
    return codes, err


@triton.jit
def pow2(n):
    """2^n as FP32 for integer n in [-127, 127] (2^-127 is the subnormal 0x00400000)."""
    return tl.where(n >= -126, (n + 127) << 23, 0x00400000).to(tl.float32, bitcast=True)


@triton.jit(do_not_specialize=["key1", "key2"])
def mxfp4_quantize_kernel(
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
    pid_m, pid_k = tile_of_program((NB + BLOCKS_K - 1) // BLOCKS_K)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BK + tl.arange(0, BK)
    x = load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS)
    if RHT:
        x = rht(x, signs_ptr, BLOCK_M, BK, 32)
    x3 = tl.reshape(x, (BLOCK_M, BLOCKS_K, 32))
    amax_bits = max_along(abs_bits(x3), 2)
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
    bad = amax_bits >= INF_BITS  # a NaN or Inf in the block: NaN scale (0xFF), codes 0, values NaN
    inv = nan_where(bad, pow2(-e))
    k1, k2 = stream_keys(key1, key2, offset_ptr, DEVICE_OFFSET)
    codes = e2m1_codes(x3 * inv[:, :, None], rows, cols, K, k1, k2, STOCHASTIC, BLOCK_M, BLOCKS_K, 32, INDEX64)
    if OUT_VALUES:
        values = e2m1_value(codes) * nan_where(bad, pow2(e))[:, :, None]
        store_values(out_ptr, tl.reshape(values, (BLOCK_M, BK)), rows, cols, M, K, stride_o, OUT_BF16)
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
def fp8_scale(amax_bits):
    """The FP8 block scale from the block amax bits (nvfp4.formats.fp8): amax/448 by a true division; an all-zero
    block gets 1, an amax whose quotient underflows gets the smallest subnormal, a non-finite amax NaN."""
    amax = amax_bits.to(tl.float32, bitcast=True)
    scale = tl.div_rn(amax, E4M3_MAX)  # div.rn: never a multiply by 1/448 (which rounds twice)
    tiny = (amax_bits * 0 + 1).to(tl.float32, bitcast=True)  # 2^-149, the smallest subnormal
    scale = tl.where(scale > 0, scale, tl.where(amax > 0, tiny, 1.0))
    return nan_where(amax_bits >= INF_BITS, scale)


@triton.jit
def fp8_store(x, scale, rows, cols, M, K, out_ptr, stride_o, OUT_VALUES: tl.constexpr):
    """E4M3 of x / scale (RNE, saturating at ±448; NaN stays NaN) as bytes, or (OUT_VALUES) e4m3 · scale in FP32."""
    byte = e4m3_encode(tl.div_rn(x, scale))
    offs = rows.to(tl.int64)[:, None] * stride_o + cols.to(tl.int64)[None, :]
    mask = (rows < M)[:, None] & (cols < K)[None, :]
    if OUT_VALUES:
        tl.store(out_ptr + offs, e4m3_decode(byte) * scale, mask=mask)
    else:
        tl.store(out_ptr + offs, byte.to(tl.uint8), mask=mask)


@triton.jit
def fp8_quantize_kernel(
    x_ptr,
    out_ptr,
    scales_ptr,
    M,
    K,
    NB,
    stride_r,
    stride_k,
    stride_o,
    stride_s,
    BF16_BITS: tl.constexpr,
    TILE_ROWS: tl.constexpr,
    OUT_VALUES: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Blockwise FP8 (E4M3 values, FP32 scales amax_b / 448) of 1x128 blocks or 128x128 tiles of the logical (M, K)
    tensor. One program per block column and BLOCK_M rows (1x128) or per 128x128 tile (looping over its rows twice:
    amax, then encode). The grid is 1-D (pid = row program * NB + block column): no 65,535 limit on either axis."""
    pid = tl.program_id(0)
    pid_m = pid // NB
    pid_k = pid % NB
    cols = pid_k * 128 + tl.arange(0, 128)
    if TILE_ROWS == 1:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        x = load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS)
        scale = fp8_scale(max_along(abs_bits(x), 1))
        fp8_store(x, scale[:, None], rows, cols, M, K, out_ptr, stride_o, OUT_VALUES)
        tl.store(scales_ptr + rows.to(tl.int64) * stride_s + pid_k, scale, mask=rows < M)
    else:
        first = pid_m * 128
        amax_bits = tl.full((BLOCK_M,), 0, tl.int32)  # tl.full, a builtin: tl.zeros is a jit function (see max_along)
        for r in range(0, 128, BLOCK_M):
            rows = first + r + tl.arange(0, BLOCK_M)
            x = load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS)
            amax_bits = tl.maximum(amax_bits, max_along(abs_bits(x), 1))
        scale = fp8_scale(max_along(amax_bits, 0))
        for r in range(0, 128, BLOCK_M):
            rows = first + r + tl.arange(0, BLOCK_M)
            x = load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS)
            fp8_store(x, scale, rows, cols, M, K, out_ptr, stride_o, OUT_VALUES)
            tl.store(
                scales_ptr + rows.to(tl.int64) * stride_s + pid_k,
                tl.full((BLOCK_M,), 0.0, tl.float32) + scale,
                mask=rows < M,
            )


@triton.jit
def mxfp8_quantize_kernel(
    x_ptr,
    out_ptr,
    scales_ptr,
    M,
    K,
    NB,
    stride_r,
    stride_k,
    stride_o,
    stride_s,
    BF16_BITS: tl.constexpr,
    OUT_VALUES: tl.constexpr,
    OUT_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCKS_K: tl.constexpr,
):
    """MXFP8 (nvfp4.formats.mxfp8: Transformer Engine's arithmetic) of BLOCK_M rows x BLOCKS_K 32-element blocks:
    E4M3 bytes + E8M0 scale bytes, or (OUT_VALUES) the GEMM operand e4m3 * 2^e. No tensor scale: one pass."""
    BK: tl.constexpr = BLOCKS_K * 32
    pid_m, pid_k = tile_of_program((NB + BLOCKS_K - 1) // BLOCKS_K)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BK + tl.arange(0, BK)
    x3 = tl.reshape(load_tile(x_ptr, rows, cols, M, K, stride_r, stride_k, BF16_BITS), (BLOCK_M, BLOCKS_K, 32))
    amax_bits = max_along(abs_bits(x3), 2)
    bad = amax_bits >= INF_BITS  # a NaN or Inf in the block: NaN scale (0xFF), NaN data
    s = tl.where(bad, 0, amax_bits).to(tl.float32, bitcast=True) * RCP_E4M3_MAX_F32  # TE's FP32 product
    s_bits = s.to(tl.int32, bitcast=True)
    exponent = s_bits >> 23  # s >= 0: no sign bit
    mantissa = s_bits & 0x7FFFFF
    round_up = (mantissa > 0) & (exponent != 0xFE) & ~((exponent == 0) & (mantissa <= 0x400000))
    biased = exponent + round_up.to(tl.int32)
    factor = tl.where(biased == 0, 1.0, ((254 - biased) << 23).to(tl.float32, bitcast=True))  # TE's exp2f_rcp
    byte = e4m3_encode(x3 * factor[:, :, None])
    byte = tl.where(bad[:, :, None], 0x7F, byte)
    if OUT_VALUES:
        scale = tl.where(biased == 0, 0x400000, biased << 23).to(tl.float32, bitcast=True)  # 2^(e - 127), exact
        values = nan_where(bad, scale)[:, :, None] * e4m3_decode(byte)
        values = tl.reshape(values, (BLOCK_M, BK))
        if OUT_BF16:  # e4m3 * 2^e leaves BF16's precision only below its normal range: round as torch does
            values = round_to_bf16(values)
        store_values(out_ptr, values, rows, cols, M, K, stride_o, OUT_BF16)
    else:
        row_ok = (rows < M)[:, None]
        tl.store(
            out_ptr + rows.to(tl.int64)[:, None] * stride_o + cols[None, :],
            tl.reshape(byte, (BLOCK_M, BK)).to(tl.uint8),
            mask=row_ok & (cols < K)[None, :],
        )
        bcols = pid_k * BLOCKS_K + tl.arange(0, BLOCKS_K)
        tl.store(
            scales_ptr + rows.to(tl.int64)[:, None] * stride_s + bcols[None, :],
            tl.where(bad, 0xFF, biased).to(tl.uint8),
            mask=row_ok & (bcols < NB)[None, :],
        )


@triton.jit
def scaled_values_kernel(
    packed_ptr, scales_ptr, out_ptr, M, NB, stride_p, stride_s, stride_o, BLOCK_M: tl.constexpr, BLOCKS_K: tl.constexpr
):
    """value(code) * float(scale) for every (padded) element; exact in bf16/fp16/fp32."""
    pid_m, pid_k = tile_of_program((NB + BLOCKS_K - 1) // BLOCKS_K)
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
    values = e2m1_value(codes) * e4m3_decode(scale_bytes)[:, :, None]
    ocols = pid_k * (BLOCKS_K * 16) + tl.arange(0, BLOCKS_K * 16)
    tl.store(
        out_ptr + roff * stride_o + ocols[None, :],
        tl.reshape(values, (BLOCK_M, BLOCKS_K * 16)).to(out_ptr.dtype.element_ty),
        mask=row_ok & (ocols < NB * 16)[None, :],
    )
