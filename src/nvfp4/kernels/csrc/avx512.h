/*
 * AVX-512 helpers (empty unless NVFP4_AVX512): loads, block amaxes and scales, E2M1 rounding by table lookup,
 * the random bytes, the RHT16 butterfly and stores, for the row layout (one 16-element block = one zmm register)
 * and the transposed layout (16 registers = 16 input rows; a block is one lane across them). Each helper computes
 * the bits of its scalar counterpart. Relies on scalar.h (the lookup tables are filled from e2m1_rn / e2m1_sr)
 * and params.h (qparams).
 */
#ifndef NVFP4_CSRC_AVX512_H
#define NVFP4_CSRC_AVX512_H

#include "common.h"
#include "params.h"
#include "scalar.h"

#ifdef NVFP4_AVX512
/* ------------------------------------------------------------------------------------------------------------ */
/* AVX-512 helpers: one 16-element block is one zmm register.                                                   */
/* ------------------------------------------------------------------------------------------------------------ */

static inline __m512i vload_bits(const void *x, int dtype, int64_t i) {
    if (dtype == DT_BF16)
        return _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)x + i))),
                                 16);
    return _mm512_loadu_si512((const float *)x + i);
}

/* Load n <= 16 elements, zero-filling the rest (the logical zero padding). */
static inline __m512i vload_bits_n(const void *x, int dtype, int64_t i, int n) {
    const __mmask16 m = (__mmask16)((1u << n) - 1u);
    if (dtype == DT_BF16)
        return _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)x + i)), 16);
    return _mm512_maskz_loadu_epi32(m, (const float *)x + i);
}

/* out[j] = max over the 16 lanes of v[j]: a transposing reduction tree (15 max instead of 16 full reductions). */
static inline __m512i transpose_max16(const __m512i *v) {
    __m512i c[8], e[4], g, h, r;
    for (int i = 0; i < 8; i++)
        c[i] = _mm512_max_epu32(_mm512_shuffle_i32x4(v[2 * i], v[2 * i + 1], 0x44),
                                _mm512_shuffle_i32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)
        e[i] = _mm512_max_epu32(_mm512_shuffle_i32x4(c[2 * i], c[2 * i + 1], 0x88),
                                _mm512_shuffle_i32x4(c[2 * i], c[2 * i + 1], 0xDD));
    /* within each 128-bit chunk k: g = [e0 pair maxes (2), e1 pair maxes (2)], h likewise for e2, e3 */
    g = _mm512_max_epu32(_mm512_unpacklo_epi64(e[0], e[1]), _mm512_unpackhi_epi64(e[0], e[1]));
    h = _mm512_max_epu32(_mm512_unpacklo_epi64(e[2], e[3]), _mm512_unpackhi_epi64(e[2], e[3]));
    r = _mm512_max_epu32(_mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(g), _mm512_castsi512_ps(h), 0x88)),
                         _mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(g), _mm512_castsi512_ps(h), 0xDD)));
    /* lane 4k+p holds the max of v[4p+k]: put it back in order */
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), r);
}

/* block_scale for 16 blocks at once (same operations, lane by lane): codes (one per lane), enc, float(s_b). */
static inline void block_scales16_v(__m512i abits, const qparams *p, __m512i *code_out, __m512 *enc_out,
                                    __m512 *sval_out) {
    const __mmask16 bad = p->global_bad ? (__mmask16)0xFFFF
                                        : _mm512_cmpge_epu32_mask(abits, _mm512_set1_epi32(0x7F800000));
    __m512 sf = _mm512_mul_ps(_mm512_castsi512_ps(abits), _mm512_set1_ps(p->k));
    sf = _mm512_min_ps(sf, _mm512_set1_ps(448.0f));
    const __m512i b = _mm512_castps_si512(sf);
    const __mmask16 normal = _mm512_cmpge_epu32_mask(b, _mm512_set1_epi32(121 << 23));
    /* normal: RNE to 3 mantissa bits (sf <= 448 already, so no saturation step is needed) */
    __m512i bn = _mm512_and_si512(_mm512_srli_epi32(b, 20), _mm512_set1_epi32(1));
    bn = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFFF)), bn);
    bn = _mm512_and_si512(bn, _mm512_set1_epi32((int)0xFFF00000u));
    const __m512i code_n = _mm512_sub_epi32(_mm512_srli_epi32(bn, 20), _mm512_set1_epi32(120 << 3));
    /* subnormal: RNE to a multiple of 2^-9 */
    const __m512 m = _mm512_mul_ps(sf, _mm512_set1_ps(512.0f));
    const __m512 r = _mm512_sub_ps(_mm512_add_ps(m, _mm512_set1_ps(8388608.0f)), _mm512_set1_ps(8388608.0f));
    const __m512i code_s = _mm512_cvttps_epi32(r);
    const __m512 val_s = _mm512_mul_ps(r, _mm512_set1_ps(1.0f / 512.0f));
    __m512i code = _mm512_mask_blend_epi32(normal, code_s, code_n);
    const __m512 sr = _mm512_mask_blend_ps(normal, val_s, _mm512_castsi512_ps(bn));
    __m512 enc = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_mul_ps(sr, _mm512_set1_ps(p->s_dec)));
    enc = _mm512_min_ps(enc, _mm512_set1_ps(FLT_MAX));
    *code_out = _mm512_mask_mov_epi32(code, bad, _mm512_set1_epi32(0x7F));
    *enc_out = _mm512_mask_mov_ps(enc, bad, _mm512_set1_ps(NAN));
    *sval_out = _mm512_mask_mov_ps(sr, bad, _mm512_set1_ps(NAN));
}

static inline void block_scales16(__m512i abits, const qparams *p, uint8_t *scale_out, float *enc_out,
                                  float *sval_out) {
    __m512i code;
    __m512 enc, sval;
    block_scales16_v(abits, p, &code, &enc, &sval);
    _mm_storeu_si128((__m128i *)scale_out, _mm512_cvtepi32_epi8(code));
    _mm512_storeu_ps(enc_out, enc);
    _mm512_storeu_ps(sval_out, sval);
}

/*
 * E2M1 codes by table lookup instead of 7 comparisons per element.
 * RN: the decision thresholds (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5) have at most 3 significant bits, so the code
 * is constant on each "bucket" [s, next) of floats that share the exponent and the top 2 mantissa bits
 * (bits >> 21), except exactly at s (where ties go to even). |v| clamped to [0.125, 30] spans 32 consecutive
 * buckets, so the low 5 bits of bits >> 21 index two 32-entry tables: the code at s and the code above s.
 * SR: t = |v| + u*step is floored to the grid, whose points (0.5, 1, 1.5, 2, 3, 4, 6) have 2 significant bits, so
 * the code is constant on buckets of bits >> 22; t in [0.25, 8) spans 10 of them: one 16-entry table.
 * The tables are filled from the scalar functions above, so both paths share one definition.
 * Neither lookup handles NaN: blocks with a NaN scale are written as zeros by the caller.
 */
static int32_t rn_lut_at[32], rn_lut_above[32], sr_lut[16];

__attribute__((constructor)) static void nvfp4_init_luts(void) {
    for (uint32_t i = 0; i < 32; i++) {
        const uint32_t bucket = 496u + ((i - 16u) & 31u); /* 496 = bits(0.125) >> 21, whose low 5 bits are 16 */
        rn_lut_at[i] = (int32_t)e2m1_rn(u2f(bucket << 21));
        rn_lut_above[i] = (int32_t)e2m1_rn(u2f((bucket << 21) + 1u));
    }
    for (uint32_t i = 0; i < 16; i++) {
        const uint32_t bucket = 250u + ((i - 10u) & 15u);   /* 250 = bits(0.25) >> 22, whose low 4 bits are 10 */
        sr_lut[i] = (int32_t)e2m1_sr(u2f(bucket << 22), 0); /* u = 0: t = a, floored to the grid */
    }
}

static inline __m512i e2m1_rn16(__m512 v) {
    const __m512i vb = _mm512_castps_si512(v);
    __m512i a = _mm512_and_si512(vb, _mm512_set1_epi32(0x7FFFFFFF));
    a = _mm512_min_epu32(_mm512_max_epu32(a, _mm512_set1_epi32(0x3E000000)), _mm512_set1_epi32(0x41F00000));
    const __m512i idx = _mm512_srli_epi32(a, 21);
    const __m512i above = _mm512_permutex2var_epi32(_mm512_loadu_si512(rn_lut_above), idx,
                                                    _mm512_loadu_si512(rn_lut_above + 16));
    const __m512i at = _mm512_permutex2var_epi32(_mm512_loadu_si512(rn_lut_at), idx,
                                                 _mm512_loadu_si512(rn_lut_at + 16));
    const __m512i m = _mm512_mask_blend_epi32(_mm512_testn_epi32_mask(a, _mm512_set1_epi32(0x1FFFFF)), above, at);
    /* sign bit iff v < 0: -0 (bits 0x80000000) stays code 0 */
    return _mm512_mask_or_epi32(m, _mm512_cmpgt_epu32_mask(vb, _mm512_set1_epi32((int)0x80000000u)), m,
                                _mm512_set1_epi32(8));
}

static inline __m512i mix32_16(__m512i h) {
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32(0x21F0AAAD));
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 15));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32(0x735A2D97));
    return _mm512_xor_si512(h, _mm512_srli_epi32(h, 15));
}

/* Random bytes of elements i0 .. i0+15. */
static inline __m512i random_bytes16(uint64_t i0, uint32_t k1, uint32_t k2) {
    const __m512i base = _mm512_set1_epi32((int)(uint32_t)i0);
    const __m512i lo = _mm512_add_epi32(base, _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const __mmask16 carry = _mm512_cmplt_epu32_mask(lo, base);
    const __m512i hi0 = _mm512_set1_epi32((int)(uint32_t)(i0 >> 32));
    const __m512i hi = _mm512_mask_add_epi32(hi0, carry, hi0, _mm512_set1_epi32(1));
    __m512i h = mix32_16(_mm512_xor_si512(lo, _mm512_set1_epi32((int)k1)));
    h = mix32_16(_mm512_xor_si512(_mm512_xor_si512(h, hi), _mm512_set1_epi32((int)k2)));
    return _mm512_srli_epi32(h, 24);
}

static inline __m512i e2m1_sr16(__m512 v, __m512i rbytes) {
    const __m512 a = _mm512_min_ps(_mm512_abs_ps(v), _mm512_set1_ps(6.0f));
    /* u * step(a) = r * (step(a) / 256), both exact */
    __m512 step = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, _mm512_set1_ps(2.0f), _CMP_LT_OQ),
                                       _mm512_set1_ps(1.0f / 256.0f), _mm512_set1_ps(0.5f / 256.0f));
    step = _mm512_mask_mov_ps(step, _mm512_cmp_ps_mask(a, _mm512_set1_ps(4.0f), _CMP_GE_OQ),
                              _mm512_set1_ps(2.0f / 256.0f));
    const __m512 t = _mm512_add_ps(a, _mm512_mul_ps(_mm512_cvtepi32_ps(rbytes), step));
    const __m512i idx = _mm512_srli_epi32(_mm512_max_epu32(_mm512_castps_si512(t), _mm512_set1_epi32(0x3E800000)), 22);
    const __m512i m = _mm512_permutexvar_epi32(idx, _mm512_loadu_si512(sr_lut));
    return _mm512_mask_or_epi32(m, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), m, _mm512_set1_epi32(8));
}

/* 16 codes (one per 32-bit lane) -> 8 bytes, even element in the low nibble. */
static inline void store_packed16(uint8_t *out, __m512i codes) {
    const __m512i q = _mm512_or_si512(codes, _mm512_srli_epi64(codes, 28));
    _mm_storel_epi64((__m128i *)out, _mm512_cvtepi64_epi8(q));
}

/* Signs, the four butterfly stages and the x 1/4 of rht16_scalar (overflow-safe), without the BF16 rounding. */
static inline __m512 rht16_butterfly(__m512 x, __m512i signbits) {
    __m512 s;
    x = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), signbits));
    const uint32_t am = (uint32_t)_mm512_reduce_max_epu32(
        _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7FFFFFFF)));
    const int big = am >= RHT_BIG_BITS;
    if (big) x = _mm512_mul_ps(x, _mm512_set1_ps(RHT_PRE));
    /* stage h: lanes with bit h clear get a + b, lanes with it set get a - b (a = lane i - h, b = lane i) */
    s = _mm512_permute_ps(x, 0xB1);
    x = _mm512_mask_sub_ps(_mm512_add_ps(x, s), 0xAAAA, s, x);
    s = _mm512_permute_ps(x, 0x4E);
    x = _mm512_mask_sub_ps(_mm512_add_ps(x, s), 0xCCCC, s, x);
    s = _mm512_shuffle_f32x4(x, x, 0xB1);
    x = _mm512_mask_sub_ps(_mm512_add_ps(x, s), 0xF0F0, s, x);
    s = _mm512_shuffle_f32x4(x, x, 0x4E);
    x = _mm512_mask_sub_ps(_mm512_add_ps(x, s), 0xFF00, s, x);
    return _mm512_mul_ps(x, _mm512_set1_ps(big ? 64.0f : 0.25f));
}

/* FP32 -> BF16 RNE (widened back to FP32); NaN -> canonical NaN. As round_bf16(x). */
static inline __m512 bf16_16(__m512 x) {
    __m512i b = _mm512_castps_si512(x);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, _mm512_set1_epi32(0x7FFFFFFF)),
                                                  _mm512_set1_epi32(0x7F800000));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    b = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), lsb);
    b = _mm512_and_si512(b, _mm512_set1_epi32((int)0xFFFF0000u));
    b = _mm512_mask_mov_epi32(b, nan, _mm512_set1_epi32(0x7FC00000));
    return _mm512_castsi512_ps(b);
}

static inline __m512 rht16_vec(__m512 x, __m512i signbits) { return bf16_16(rht16_butterfly(x, signbits)); }

/* ---- the transposed layout: 16 registers v[j] = input row r0 + j, lane l = input column c0 + l ----------------- */
/* A logical 16-element block (a block of a row of x^T) is lane l across the 16 registers, so block amaxes, encode
 * factors and the RHT are lane-wise (vertical) operations; only the values written out need a 16x16 transpose. */

/* The signs, butterfly stages and x 1/4 of rht16_scalar across the 16 registers, each lane one chunk
 * (overflow-safe per lane), without the BF16 rounding. */
/* (Fully unrolled, so that v[] lives in registers: GCC does not unroll the nested stage loops by itself.) */
#define RHT_STAGE(h)                                            \
    NVFP4_UNROLL for (int i = 0; i < 16; i++) if (!(i & (h))) { \
        const __m512 a = v[i], b = v[i + (h)];                  \
        v[i] = _mm512_add_ps(a, b);                             \
        v[i + (h)] = _mm512_sub_ps(a, b);                       \
    }
static inline void rht16_butterfly_v(__m512 *v, const uint32_t *signbits) {
    const __m512i absm = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i am = _mm512_setzero_si512();
    NVFP4_UNROLL for (int j = 0; j < 16; j++) {
        v[j] = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v[j]), _mm512_set1_epi32((int)signbits[j])));
        am = _mm512_max_epu32(am, _mm512_and_si512(_mm512_castps_si512(v[j]), absm));
    }
    const __mmask16 big = _mm512_cmpge_epu32_mask(am, _mm512_set1_epi32((int)RHT_BIG_BITS));
    if (big)
        NVFP4_UNROLL for (int j = 0; j < 16; j++) v[j] = _mm512_mask_mul_ps(v[j], big, v[j], _mm512_set1_ps(RHT_PRE));
    RHT_STAGE(1)
    RHT_STAGE(2)
    RHT_STAGE(4)
    RHT_STAGE(8)
    const __m512 post = _mm512_mask_blend_ps(big, _mm512_set1_ps(0.25f), _mm512_set1_ps(64.0f));
    NVFP4_UNROLL for (int j = 0; j < 16; j++) v[j] = _mm512_mul_ps(v[j], post);
}
#undef RHT_STAGE

/* Load rows r0 .. r0+nr-1, columns c0 .. c0+nc-1 of a row-major (.., cols) tensor; missing rows/columns are 0. */
static inline void load_tile16(const void *x, int dtype, int64_t cols, int64_t r0, int nr, int64_t c0, int nc,
                               __m512 *v) {
    if (nr == 16 && nc == 16) { /* the common case: one branch per tile */
        if (dtype == DT_BF16) {
            NVFP4_UNROLL for (int j = 0; j < 16; j++)
                v[j] = _mm512_castsi512_ps(vload_bits(x, DT_BF16, (r0 + j) * cols + c0));
        } else {
            NVFP4_UNROLL for (int j = 0; j < 16; j++)
                v[j] = _mm512_castsi512_ps(vload_bits(x, DT_F32, (r0 + j) * cols + c0));
        }
        return;
    }
    NVFP4_UNROLL for (int j = 0; j < 16; j++) {
        const int64_t i = (r0 + j) * cols + c0;
        if (j >= nr)
            v[j] = _mm512_setzero_ps();
        else
            v[j] = _mm512_castsi512_ps(nc == 16 ? vload_bits(x, dtype, i) : vload_bits_n(x, dtype, i, nc));
    }
}

/* In-place 16x16 transpose of 32-bit elements: v[i] lane j <- v[j] lane i. */
static inline void transpose16(__m512 *v) {
    __m512 t[16], u[16];
    NVFP4_UNROLL for (int k = 0; k < 8; k++) {
        t[2 * k] = _mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]);
    }
    /* u[4m + c], 128-bit lane q: column 4q + c of rows 4m .. 4m+3 */
    NVFP4_UNROLL for (int m = 0; m < 4; m++) {
        u[4 * m] = _mm512_shuffle_ps(t[4 * m], t[4 * m + 2], 0x44);
        u[4 * m + 1] = _mm512_shuffle_ps(t[4 * m], t[4 * m + 2], 0xEE);
        u[4 * m + 2] = _mm512_shuffle_ps(t[4 * m + 1], t[4 * m + 3], 0x44);
        u[4 * m + 3] = _mm512_shuffle_ps(t[4 * m + 1], t[4 * m + 3], 0xEE);
    }
    /* a 4x4 transpose of 128-bit lanes for each c */
    NVFP4_UNROLL for (int c = 0; c < 4; c++) {
        const __m512 a = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), b = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
        const __m512 d = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        const __m512 e = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
        v[c] = _mm512_shuffle_f32x4(a, d, 0x88);
        v[8 + c] = _mm512_shuffle_f32x4(a, d, 0xDD);
        v[4 + c] = _mm512_shuffle_f32x4(b, e, 0x88);
        v[12 + c] = _mm512_shuffle_f32x4(b, e, 0xDD);
    }
}

/* Random bytes of the elements with 64-bit indices (hi:lo) + j, lane by lane (the carry into hi as in rng.py). */
static inline __m512i random_bytes16_at(__m512i lo, __m512i hi, uint32_t j, uint32_t k1, uint32_t k2) {
    const __m512i lj = _mm512_add_epi32(lo, _mm512_set1_epi32((int)j));
    const __m512i hj = _mm512_mask_add_epi32(hi, _mm512_cmplt_epu32_mask(lj, lo), hi, _mm512_set1_epi32(1));
    __m512i h = mix32_16(_mm512_xor_si512(lj, _mm512_set1_epi32((int)k1)));
    h = mix32_16(_mm512_xor_si512(_mm512_xor_si512(h, hj), _mm512_set1_epi32((int)k2)));
    return _mm512_srli_epi32(h, 24);
}

/* value(code) x s_b, lane by lane (exact; a NaN scale gives NaN). */
static inline __m512 e2m1_scaled16(__m512i codes, __m512 sval) {
    return _mm512_mul_ps(_mm512_permutexvar_ps(codes, _mm512_loadu_ps(e2m1_table)), sval);
}

/* Store n <= 16 values (FP32 bits in v) as FP32 or BF16 at out + i (elements). BF16: the values are exact in BF16,
 * so truncation is the rounding. nt: a full block at an aligned address goes out as a streaming store. */
static inline void store_values16(void *out, int out_kind, int64_t i, __m512 v, int n, int nt) {
    const __mmask16 m = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
    if (out_kind == OUT_BF16) {
        const __m256i h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16));
        if (n < 16)
            _mm256_mask_storeu_epi16((uint16_t *)out + i, m, h);
        else if (nt)
            _mm256_stream_si256((__m256i *)((uint16_t *)out + i), h);
        else
            _mm256_storeu_si256((__m256i *)((uint16_t *)out + i), h);
    } else if (n < 16) {
        _mm512_mask_storeu_ps((float *)out + i, m, v);
    } else if (nt) {
        _mm512_stream_ps((float *)out + i, v);
    } else {
        _mm512_storeu_ps((float *)out + i, v);
    }
}
#endif /* NVFP4_AVX512 */

#endif /* NVFP4_CSRC_AVX512_H */
