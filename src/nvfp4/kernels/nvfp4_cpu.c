/*
 * NVFP4 quantization kernels for the CPU backend (nvfp4/kernels/cpu.py builds and loads this file).
 *
 * Every result must equal the plain-PyTorch reference (nvfp4/formats/nvfp4.py) bit for bit, so:
 *   - all arithmetic is FP32 in the order of SPEC §2; divisions are true divisions;
 *   - build WITHOUT -ffast-math and WITH -ffp-contract=off (a fused multiply-add rounds once, not twice);
 *   - subnormals must not be flushed (1/S_enc is subnormal for an all-zero tensor).
 * The AVX-512 path is used when the compiler targets it (-march=native on an AVX-512 CPU); the portable scalar
 * path (also used for row tails) computes the same bits. Define NVFP4_PORTABLE to force the scalar path.
 *
 * Block amaxes are computed as an integer max over |x| bit patterns: equal to the float max for finite values,
 * and >= 0x7F800000 (non-finite) as soon as the block holds a NaN or an Inf, which is all the reference needs.
 *
 * Two drivers share the arithmetic: run_rows (blocks along the rows of the input) and run_tiles_t (blocks along its
 * columns, i.e. quantizing x^T without a transposed copy, from 16x16 tiles). Both can write packed codes + scales,
 * or directly the GEMM operand value(q) x s_b in FP32 or BF16 ("fake quantization": no packed intermediate).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
     !defined(NVFP4_PORTABLE))
#define NVFP4_AVX512 1
#include <immintrin.h>
#endif

#define NVFP4_ABI_VERSION 3
#if defined(__GNUC__) && !defined(__clang__)
#define NVFP4_UNROLL _Pragma("GCC unroll 16")
#else
#define NVFP4_UNROLL
#endif
#define BLOCK 16

enum { DT_F32 = 0, DT_BF16 = 1 };
/* What a quantization writes: packed codes + scales, or the values value(q) x s_b (FP32 or BF16). */
enum { OUT_PACKED = 0, OUT_F32 = 1, OUT_BF16 = 2 };

/* Parallelise only when there is enough work to pay for waking the thread team. */
#define PAR_MIN_ELEMS (1 << 15)
/* Outputs at least this large (well beyond L2) are written with streaming stores where the layout allows: they
 * skip the read-for-ownership of every output line, and the data would not stay in cache for the GEMM anyway. */
#define NT_MIN_BYTES (4 << 20)

/* ------------------------------------------------------------------------------------------------------------ */
/* Scalar helpers (the portable path, and the tails of the vector path).                                       */
/* ------------------------------------------------------------------------------------------------------------ */

static inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float load_f32(const void *x, int dtype, int64_t i) {
    if (dtype == DT_BF16) return u2f((uint32_t)((const uint16_t *)x)[i] << 16);
    return ((const float *)x)[i];
}

static inline uint32_t load_absbits(const void *x, int dtype, int64_t i) {
    return f2u(load_f32(x, dtype, i)) & 0x7FFFFFFFu;
}

/* FP32 -> E4M3 (max 448), round to nearest even, saturating; also returns the rounded value as FP32. */
static inline uint8_t e4m3_rne_satfinite(float f, float *rounded) {
    uint32_t b = f2u(f);
    const uint32_t sign = b & 0x80000000u;
    uint32_t code, rb;
    b ^= sign;
    if (b > 0x7F800000u) { /* NaN */
        *rounded = NAN;
        return (uint8_t)(0x7Fu | (sign >> 24));
    }
    if (b >= (121u << 23)) { /* >= 2^-6, E4M3's smallest normal: keep 3 mantissa bits, RNE */
        b += 0x7FFFFu + ((b >> 20) & 1u);
        b &= 0xFFF00000u;
        if (b > 0x43E00000u) b = 0x43E00000u; /* 448 */
        code = (b >> 20) - (120u << 3);       /* rebias the exponent from 127 to 7 */
        rb = b;
    } else { /* subnormal: a multiple of 2^-9; rounding up to 8 * 2^-9 gives code 0x08 = 2^-6, as it must */
        const float m = u2f(b) * 512.0f;                 /* exact */
        const float r = (m + 8388608.0f) - 8388608.0f;   /* RNE to an integer 0..8 */
        code = (uint32_t)r;
        rb = f2u(r * (1.0f / 512.0f));
    }
    *rounded = u2f(rb | sign);
    return (uint8_t)(code | (sign >> 24));
}

static inline float e4m3_to_f32(uint8_t c) {
    const uint32_t e = (c >> 3) & 15u, m = c & 7u;
    float v;
    if (e == 15u && m == 7u) return NAN;
    if (e == 0u)
        v = (float)m * (1.0f / 512.0f);
    else
        v = u2f(((e + 120u) << 23) | (m << 20));
    return (c & 0x80u) ? -v : v;
}

/* FP32 -> BF16 round to nearest even (as torch), returned widened back to FP32 bits. */
static inline float round_bf16(float f) {
    uint32_t b = f2u(f);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) return u2f(0x7FC00000u);
    b += 0x7FFFu + ((b >> 16) & 1u);
    return u2f(b & 0xFFFF0000u);
}

/* E2M1 round-to-nearest-even code; thresholds of SPEC §2. NaN -> 0; the sign bit is set iff v < 0. */
static inline uint32_t e2m1_rn(float v) {
    const float a = fabsf(v);
    const uint32_t m = (uint32_t)(a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) +
                       (a >= 3.5f) + (a > 5.0f);
    return m | ((uint32_t)(v < 0.0f) << 3);
}

/* E2M1 stochastic rounding (SPEC §3): t = a + u*step(a); floor t to the grid; clamp at 6. */
static inline uint32_t e2m1_sr(float v, uint32_t rbyte) {
    float a = fabsf(v);
    if (a > 6.0f) a = 6.0f;
    const float step = a < 2.0f ? 0.5f : (a < 4.0f ? 1.0f : 2.0f);
    const float u = (float)rbyte * (1.0f / 256.0f);
    const float t = a + u * step;
    /* floor(t / step(t)) * step(t) on the grid = the number of grid points <= t (NaN -> 0) */
    const uint32_t m = (uint32_t)(t >= 0.5f) + (t >= 1.0f) + (t >= 1.5f) + (t >= 2.0f) + (t >= 3.0f) +
                       (t >= 4.0f) + (t >= 6.0f);
    return m | ((uint32_t)(v < 0.0f) << 3);
}

/* E2M1 values by code (code 8 is -0). */
static const float e2m1_table[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* Store one value (exact in BF16: truncation is the rounding) as FP32 or BF16. */
static inline void store_value(void *out, int out_kind, int64_t i, float v) {
    if (out_kind == OUT_BF16)
        ((uint16_t *)out)[i] = (uint16_t)(f2u(v) >> 16);
    else
        ((float *)out)[i] = v;
}

/* The counter-based generator of nvfp4/formats/rng.py. */
static inline uint32_t mix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x21F0AAADu;
    h ^= h >> 15;
    h *= 0x735A2D97u;
    h ^= h >> 15;
    return h;
}

static inline uint32_t random_byte(uint64_t i, uint32_t k1, uint32_t k2) {
    return mix32(mix32((uint32_t)i ^ k1) ^ (uint32_t)(i >> 32) ^ k2) >> 24;
}

/*
 * Overflow-safe RHT (hadamard.py): a chunk whose largest |value| is >= 2^120 is scaled by 2^-8 before the
 * butterfly and by (norm x 2^8) after it instead of by norm, so no sum of up to 32 values can overflow where the
 * exact result is finite. Every other chunk is computed exactly as before (bit-identical on ordinary data).
 */
#define RHT_BIG_BITS 0x7B800000u /* 2^120 */
#define RHT_PRE 0x1p-8f

/* The 16-point Walsh-Hadamard butterfly of nvfp4/hadamard.py: signs, stages h = 1, 2, 4, 8, x 1/4, BF16. */
static inline void rht16_scalar(const float *in, const uint32_t *signbits, float *out) {
    float x[16];
    uint32_t am = 0;
    for (int i = 0; i < 16; i++) {
        x[i] = u2f(f2u(in[i]) ^ signbits[i]);
        const uint32_t a = f2u(x[i]) & 0x7FFFFFFFu;
        am = a > am ? a : am;
    }
    const int big = am >= RHT_BIG_BITS;
    if (big)
        for (int i = 0; i < 16; i++) x[i] *= RHT_PRE;
    for (int h = 1; h < 16; h *= 2)
        for (int g = 0; g < 16; g += 2 * h)
            for (int i = g; i < g + h; i++) {
                const float a = x[i], b = x[i + h];
                x[i] = a + b;
                x[i + h] = a - b;
            }
    const float post = big ? 64.0f : 0.25f; /* 1/4, or 1/4 x 2^8 after the 2^-8 */
    for (int i = 0; i < 16; i++) out[i] = round_bf16(x[i] * post);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Quantization parameters shared by all blocks of a tensor (SPEC §2).                                          */
/* ------------------------------------------------------------------------------------------------------------ */

typedef struct {
    float s_dec;    /* 1 / S_enc */
    float k;        /* S_enc * (1/6), multiplied by the block amax */
    int global_bad; /* the tensor amax is NaN/Inf: every block gets the NaN scale */
    int stochastic;
    uint32_t k1, k2; /* SR stream keys */
} qparams;

static qparams make_params(float global_amax, int stochastic, uint32_t k1, uint32_t k2) {
    qparams p;
    float s_enc = 2688.0f / global_amax; /* 448 * 6 */
    if (s_enc > FLT_MAX) s_enc = FLT_MAX;
    p.s_dec = 1.0f / s_enc;
    p.k = s_enc * (float)(1.0 / 6.0);
    p.global_bad = !isfinite(global_amax);
    p.stochastic = stochastic;
    p.k1 = k1;
    p.k2 = k2;
    return p;
}

/* Scale byte, encode factor and decoded scale (float(s_b)) of one block from its |x| max bits. */
static inline uint8_t block_scale(uint32_t abits, const qparams *p, float *enc, float *sval) {
    float sr, e, sf;
    uint8_t code;
    if (p->global_bad || abits >= 0x7F800000u) {
        *enc = NAN; /* every code of the block becomes 0 */
        *sval = NAN;
        return 0x7F;
    }
    sf = u2f(abits) * p->k;
    if (sf > 448.0f) sf = 448.0f;
    code = e4m3_rne_satfinite(sf, &sr);
    e = 1.0f / (sr * p->s_dec); /* from the ROUNDED scale, a true division */
    if (e > FLT_MAX) e = FLT_MAX;
    *enc = e;
    *sval = sr;
    return code;
}

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
    r = _mm512_max_epu32(
        _mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(g), _mm512_castsi512_ps(h), 0x88)),
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
        const uint32_t bucket = 250u + ((i - 10u) & 15u); /* 250 = bits(0.25) >> 22, whose low 4 bits are 10 */
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
    const __m512i at = _mm512_permutex2var_epi32(_mm512_loadu_si512(rn_lut_at), idx, _mm512_loadu_si512(rn_lut_at + 16));
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
    const uint32_t am = (uint32_t)_mm512_reduce_max_epu32(_mm512_and_si512(_mm512_castps_si512(x),
                                                                            _mm512_set1_epi32(0x7FFFFFFF)));
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
#define RHT_STAGE(h)                                                                                                \
    NVFP4_UNROLL for (int i = 0; i < 16; i++) if (!(i & (h))) {                                                     \
        const __m512 a = v[i], b = v[i + (h)];                                                                      \
        v[i] = _mm512_add_ps(a, b);                                                                                 \
        v[i + (h)] = _mm512_sub_ps(a, b);                                                                           \
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

/* ------------------------------------------------------------------------------------------------------------ */
/* Row-level building blocks.                                                                                   */
/* ------------------------------------------------------------------------------------------------------------ */

/* bam[b] = |x| max bits of block b of one row (or the max with bam[b] when merge: 16x16 tiles). */
static void row_block_amax(const void *row, int dtype, int64_t cols, int64_t nblk, uint32_t *bam, int merge) {
    int64_t b = 0;
#ifdef NVFP4_AVX512
    const __m512i absm = _mm512_set1_epi32(0x7FFFFFFF);
    for (; (b + 16) * BLOCK <= cols; b += 16) {
        __m512i v[16], m;
        for (int j = 0; j < 16; j++) v[j] = _mm512_and_si512(vload_bits(row, dtype, (b + j) * BLOCK), absm);
        m = transpose_max16(v);
        if (merge) m = _mm512_max_epu32(m, _mm512_loadu_si512(bam + b));
        _mm512_storeu_si512(bam + b, m);
    }
    for (; b < nblk; b++) {
        const int64_t c0 = b * BLOCK;
        const int n = cols - c0 < BLOCK ? (int)(cols - c0) : BLOCK;
        const uint32_t m = _mm512_reduce_max_epu32(_mm512_and_si512(vload_bits_n(row, dtype, c0, n), absm));
        bam[b] = (merge && bam[b] > m) ? bam[b] : m;
    }
#else
    for (; b < nblk; b++) {
        const int64_t c0 = b * BLOCK, c1 = c0 + BLOCK < cols ? c0 + BLOCK : cols;
        uint32_t m = merge ? bam[b] : 0u;
        for (int64_t c = c0; c < c1; c++) {
            const uint32_t a = load_absbits(row, dtype, c);
            m = a > m ? a : m;
        }
        bam[b] = m;
    }
#endif
}

static void block_scales(const uint32_t *bam, int64_t nblk, const qparams *p, uint8_t *scales, float *enc,
                         float *sval) {
    int64_t b = 0;
#ifdef NVFP4_AVX512
    for (; b + 16 <= nblk; b += 16) block_scales16(_mm512_loadu_si512(bam + b), p, scales + b, enc + b, sval + b);
#endif
    for (; b < nblk; b++) scales[b] = block_scale(bam[b], p, enc + b, sval + b);
}

/*
 * Codes of one row with per-block encode factors; idx0 = index of the row's first element in the (M, K) tensor.
 * pf/pf_bytes: the next row, prefetched into L2 one cache line per block so that its DRAM reads overlap the
 * arithmetic here (the block-amax pass over it then streams from L2).
 */
static void quantize_row(const void *row, int dtype, int64_t cols, int64_t nblk, const float *enc, const qparams *p,
                         uint64_t idx0, uint8_t *out, const char *pf, int64_t pf_bytes) {
    int64_t b = 0;
#ifdef NVFP4_AVX512
    for (; b < nblk; b++) {
        const int64_t c0 = b * BLOCK;
        const float e = enc[b];
        __m512i bits, codes;
        __m512 v;
        if (b * 64 < pf_bytes) _mm_prefetch(pf + b * 64, _MM_HINT_T1);
        if (e != e) { /* NaN scale: every code is 0 */
            memset(out + b * 8, 0, 8);
            continue;
        }
        bits = c0 + BLOCK <= cols ? vload_bits(row, dtype, c0) : vload_bits_n(row, dtype, c0, (int)(cols - c0));
        v = _mm512_mul_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(e));
        codes = p->stochastic ? e2m1_sr16(v, random_bytes16(idx0 + (uint64_t)c0, p->k1, p->k2)) : e2m1_rn16(v);
        store_packed16(out + b * 8, codes);
    }
#else
    (void)pf;
    (void)pf_bytes;
    for (; b < nblk; b++) {
        const int64_t c0 = b * BLOCK;
        const float e = enc[b];
        for (int j = 0; j < BLOCK; j += 2) {
            uint32_t q[2];
            for (int h = 0; h < 2; h++) {
                const int64_t c = c0 + j + h;
                if (c >= cols) { /* logical zero padding: 0 * enc rounds to code 0 in RN and SR alike */
                    q[h] = 0;
                    continue;
                }
                const float v = load_f32(row, dtype, c) * e;
                q[h] = p->stochastic ? e2m1_sr(v, random_byte(idx0 + (uint64_t)c, p->k1, p->k2)) : e2m1_rn(v);
            }
            out[b * 8 + j / 2] = (uint8_t)(q[0] | (q[1] << 4));
        }
    }
#endif
}

/* As quantize_row, but writes the values value(q) x s_b (sval: float(s_b) per block) of the row's cols elements
 * as FP32 or BF16 (out_kind) to out, instead of packed codes: no packed intermediate. */
static void quantize_row_values(const void *row, int dtype, int64_t cols, int64_t nblk, const float *enc,
                                const float *sval, const qparams *p, uint64_t idx0, void *out, int out_kind, int nt,
                                const char *pf, int64_t pf_bytes) {
    int64_t b = 0;
#ifdef NVFP4_AVX512
    for (; b < nblk; b++) {
        const int64_t c0 = b * BLOCK;
        const int n = cols - c0 < BLOCK ? (int)(cols - c0) : BLOCK;
        const float e = enc[b];
        __m512i bits, codes;
        __m512 v;
        if (b * 64 < pf_bytes) _mm_prefetch(pf + b * 64, _MM_HINT_T1);
        if (e != e) { /* NaN scale: every value is NaN */
            store_values16(out, out_kind, c0, _mm512_set1_ps(NAN), n, nt);
            continue;
        }
        bits = n == BLOCK ? vload_bits(row, dtype, c0) : vload_bits_n(row, dtype, c0, n);
        v = _mm512_mul_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(e));
        codes = p->stochastic ? e2m1_sr16(v, random_bytes16(idx0 + (uint64_t)c0, p->k1, p->k2)) : e2m1_rn16(v);
        store_values16(out, out_kind, c0, e2m1_scaled16(codes, _mm512_set1_ps(sval[b])), n, nt);
    }
#else
    (void)pf;
    (void)pf_bytes;
    (void)nt;
    for (; b < nblk; b++) {
        const int64_t c0 = b * BLOCK, c1 = c0 + BLOCK < cols ? c0 + BLOCK : cols;
        const float e = enc[b], s = sval[b];
        for (int64_t c = c0; c < c1; c++) {
            const float v = load_f32(row, dtype, c) * e;
            const uint32_t q =
                p->stochastic ? e2m1_sr(v, random_byte(idx0 + (uint64_t)c, p->k1, p->k2)) : e2m1_rn(v);
            store_value(out, out_kind, c, e2m1_table[q] * s);
        }
    }
#endif
}

/* RHT of one row (cols % 16 == 0) into buf, as BF16-rounded FP32 values. */
static void rht_row(const void *row, int dtype, int64_t cols, const uint32_t *signbits, float *buf) {
#ifdef NVFP4_AVX512
    const __m512i sb = _mm512_loadu_si512(signbits);
    for (int64_t c = 0; c < cols; c += 16)
        _mm512_storeu_ps(buf + c, rht16_vec(_mm512_castsi512_ps(vload_bits(row, dtype, c)), sb));
#else
    float in[16];
    for (int64_t c = 0; c < cols; c += 16) {
        for (int i = 0; i < 16; i++) in[i] = load_f32(row, dtype, c + i);
        rht16_scalar(in, signbits, buf + c);
    }
#endif
}

static size_t elem_size(int dtype) { return dtype == DT_BF16 ? 2 : 4; }

/* ------------------------------------------------------------------------------------------------------------ */
/* Drivers: the row path (blocks along the rows of x) and the transposed path (blocks along the columns of x).  */
/* ------------------------------------------------------------------------------------------------------------ */

/*
 * Quantize the rows of a row-major (rows, cols) x in groups of tile_rows rows (the block amax is taken over the
 * group: 16x16 tiles for tile_rows = 16), optionally after an RHT16 of every row (signbits != NULL, cols % 16 == 0;
 * the transformed group is kept in a per-thread buffer). Writes packed codes (out: (rows, nblk*8)) or values
 * (out: (rows, cols), FP32 or BF16); scales (rows, nblk) when not NULL. Returns 0, or -1 if out of memory.
 */
static int run_rows(const void *x, int dtype, int64_t rows, int64_t cols, const uint32_t *signbits, const qparams *p,
                    int64_t tile_rows, int out_kind, void *out, uint8_t *scales, int nt, int nthreads) {
    const int64_t nblk = (cols + BLOCK - 1) / BLOCK;
    const int64_t ngroups = (rows + tile_rows - 1) / tile_rows;
    const size_t esz = elem_size(dtype), oesz = out_kind == OUT_BF16 ? 2 : 4;
    const size_t buf_elems = signbits ? (size_t)(tile_rows * cols) : 0;
    int failed = 0;
    /* streaming stores need every block of 16 values at an aligned address */
    nt = nt && out_kind != OUT_PACKED && ((uintptr_t)out & 63) == 0 && cols % BLOCK == 0;
#pragma omp parallel num_threads(nthreads) if (rows * cols >= PAR_MIN_ELEMS)
    {
        /* block amax bits, enc, float(s_b) (nblk each), the RHT buffer, the scale bytes when scales is NULL */
        uint32_t *bam = (uint32_t *)malloc((size_t)nblk * 13 + buf_elems * sizeof(float) + 64);
        float *enc = (float *)(bam + nblk), *sval = enc + nblk, *buf = sval + nblk;
        uint8_t *own_scales = (uint8_t *)(buf + buf_elems);
        if (!bam) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t g = 0; g < ngroups; g++) {
            if (!bam) continue;
            const int64_t r0 = g * tile_rows, r1 = r0 + tile_rows < rows ? r0 + tile_rows : rows;
            uint8_t *srow = scales ? scales + r0 * nblk : own_scales;
            for (int64_t r = r0; r < r1; r++) {
                const char *xr = (const char *)x + (size_t)(r * cols) * esz;
                if (signbits) {
                    rht_row(xr, dtype, cols, signbits, buf + (r - r0) * cols);
                    row_block_amax(buf + (r - r0) * cols, DT_F32, cols, nblk, bam, r > r0);
                } else {
                    row_block_amax(xr, dtype, cols, nblk, bam, r > r0);
                }
            }
            block_scales(bam, nblk, p, srow, enc, sval);
            for (int64_t r = r0; r < r1; r++) {
                const char *xr = (const char *)x + (size_t)(r * cols) * esz;
                const void *src = signbits ? (const void *)(buf + (r - r0) * cols) : (const void *)xr;
                const int sdt = signbits ? DT_F32 : dtype;
                /* prefetch the same row of the next group (for tile_rows = 1: the next row) */
                const int64_t pf_row = r + tile_rows;
                const char *pf = (const char *)x + (size_t)(pf_row * cols) * esz;
                const int64_t pf_bytes = pf_row < rows ? (int64_t)(cols * esz) : 0;
                if (scales && r > r0) memcpy(scales + r * nblk, srow, (size_t)nblk);
                if (out_kind == OUT_PACKED)
                    quantize_row(src, sdt, cols, nblk, enc, p, (uint64_t)(r * cols), (uint8_t *)out + r * nblk * 8,
                                 pf, pf_bytes);
                else
                    quantize_row_values(src, sdt, cols, nblk, enc, sval, p, (uint64_t)(r * cols),
                                        (char *)out + (size_t)(r * cols) * oesz, out_kind, nt, pf, pf_bytes);
            }
        }
        free(bam);
#ifdef NVFP4_AVX512
        if (nt) _mm_sfence(); /* order the streaming stores before the results are used */
#endif
    }
    return failed ? -1 : 0;
}

/* Where the transposed path writes: logical row c goes to row (c - c_base) of these arrays, logical column (element)
 * r to position r - r_base of that row. */
typedef struct {
    void *out;       /* values (FP32/BF16) or packed codes */
    int64_t ostride; /* per row: elements (values) or bytes (packed) */
    uint8_t *scales; /* E4M3 bytes, or NULL */
    int64_t sstride; /* bytes per row of scales */
    int64_t c_base, r_base;
} tdst;

/*
 * One 16x16 tile of the transposed path: rows r0 .. r0+nr-1 and columns c0 .. c0+nc-1 of a row-major (R, C) x,
 * i.e. logical block r0/16 of the logical rows c0 .. c0+nc-1 of t = x^T (M = C, K = R). Missing rows/columns are
 * the zero padding. tile2d: one scale for the whole tile (a 16x16 tile of t is a 16x16 tile of x). The SR index of
 * t[c, r] is c*R + r. Writes packed codes or values, and scales if d->scales, as d says.
 */
static void tile_t(const void *x, int dtype, int64_t R, int64_t C, int64_t r0, int nr, int64_t c0, int nc,
                   const uint32_t *signbits, const qparams *p, int tile2d, int out_kind, const tdst *d) {
    const int64_t lc = c0 - d->c_base, lr = r0 - d->r_base, lb = lr / BLOCK;
#ifdef NVFP4_AVX512
    const __m512i absm = _mm512_set1_epi32(0x7FFFFFFF);
    __m512 v[16];
    __m512i am, code, lo = _mm512_setzero_si512(), hi = lo;
    __m512 enc, sval;
    load_tile16(x, dtype, C, r0, nr, c0, nc, v);
    if (signbits) {
        rht16_butterfly_v(v, signbits);
        NVFP4_UNROLL for (int j = 0; j < 16; j++) v[j] = bf16_16(v[j]);
    }
    am = _mm512_and_si512(_mm512_castps_si512(v[0]), absm);
    NVFP4_UNROLL for (int j = 1; j < 16; j++)
        am = _mm512_max_epu32(am, _mm512_and_si512(_mm512_castps_si512(v[j]), absm));
    if (tile2d) /* lanes >= nc are zeros: they do not change the max */
        am = _mm512_set1_epi32((int)_mm512_reduce_max_epu32(am));
    block_scales16_v(am, p, &code, &enc, &sval);
    if (d->scales) {
        uint8_t sb[16];
        _mm_storeu_si128((__m128i *)sb, _mm512_cvtepi32_epi8(code));
        for (int l = 0; l < nc; l++) d->scales[(lc + l) * d->sstride + lb] = sb[l];
    }
    if (p->stochastic) {
        uint32_t blo[16], bhi[16];
        for (int l = 0; l < 16; l++) {
            const uint64_t base = (uint64_t)(c0 + l) * (uint64_t)R + (uint64_t)r0;
            blo[l] = (uint32_t)base;
            bhi[l] = (uint32_t)(base >> 32);
        }
        lo = _mm512_loadu_si512(blo);
        hi = _mm512_loadu_si512(bhi);
    }
    if (out_kind == OUT_PACKED) {
        /* NaN-scale blocks get code 0 (the lookups below do not map NaN to 0) */
        const __mmask16 good = _mm512_cmp_ps_mask(enc, enc, _CMP_ORD_Q);
        __m512i dw[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
        uint64_t q64[16];
        NVFP4_UNROLL for (int j = 0; j < 16; j++) {
            const __m512 s = _mm512_mul_ps(v[j], enc);
            __m512i q = p->stochastic ? e2m1_sr16(s, random_bytes16_at(lo, hi, (uint32_t)j, p->k1, p->k2))
                                      : e2m1_rn16(s);
            q = _mm512_maskz_mov_epi32(good, q);
            dw[j >> 3] = _mm512_or_si512(dw[j >> 3], _mm512_slli_epi32(q, 4 * (j & 7))); /* element j: nibble j */
        }
        /* lane l's 8 bytes = dw[0] lane l (bytes 0-3), dw[1] lane l (bytes 4-7) */
        _mm512_storeu_si512(q64, _mm512_permutex2var_epi32(
                                     dw[0], _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
                                     dw[1]));
        _mm512_storeu_si512(q64 + 8, _mm512_permutex2var_epi32(dw[0],
                                                                _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12,
                                                                                  28, 13, 29, 14, 30, 15, 31),
                                                                dw[1]));
        for (int l = 0; l < nc; l++) memcpy((uint8_t *)d->out + (lc + l) * d->ostride + lb * 8, q64 + l, 8);
    } else {
        NVFP4_UNROLL for (int j = 0; j < 16; j++) {
            const __m512 s = _mm512_mul_ps(v[j], enc);
            const __m512i q = p->stochastic ? e2m1_sr16(s, random_bytes16_at(lo, hi, (uint32_t)j, p->k1, p->k2))
                                            : e2m1_rn16(s);
            v[j] = e2m1_scaled16(q, sval); /* a NaN scale gives NaN */
        }
        transpose16(v);
        for (int l = 0; l < nc; l++) store_values16(d->out, out_kind, (lc + l) * d->ostride + lr, v[l], nr, 0);
    }
#else
    float t[16][16], enc[16], sval[16];
    uint32_t bam[16], tile_max = 0;
    for (int l = 0; l < 16; l++)
        for (int j = 0; j < 16; j++)
            t[l][j] = (l < nc && j < nr) ? load_f32(x, dtype, (r0 + j) * C + c0 + l) : 0.0f;
    for (int l = 0; l < 16; l++) {
        if (signbits) rht16_scalar(t[l], signbits, t[l]);
        bam[l] = 0;
        for (int j = 0; j < 16; j++) {
            const uint32_t a = f2u(t[l][j]) & 0x7FFFFFFFu;
            bam[l] = a > bam[l] ? a : bam[l];
        }
        tile_max = bam[l] > tile_max ? bam[l] : tile_max;
    }
    for (int l = 0; l < nc; l++) {
        const uint8_t sc = block_scale(tile2d ? tile_max : bam[l], p, enc + l, sval + l);
        if (d->scales) d->scales[(lc + l) * d->sstride + lb] = sc;
    }
    for (int l = 0; l < nc; l++) {
        const uint64_t base = (uint64_t)(c0 + l) * (uint64_t)R + (uint64_t)r0;
        uint8_t *prow = (uint8_t *)d->out + (lc + l) * d->ostride + lb * 8;
        for (int j = 0; j < 16; j++) {
            const float v = t[l][j] * enc[l];
            const uint32_t q =
                p->stochastic ? e2m1_sr(v, random_byte(base + (uint64_t)j, p->k1, p->k2)) : e2m1_rn(v);
            if (out_kind == OUT_PACKED) {
                if (j & 1)
                    prow[j / 2] |= (uint8_t)(q << 4);
                else
                    prow[j / 2] = (uint8_t)q;
            } else if (j < nr) {
                store_value(d->out, out_kind, (lc + l) * d->ostride + lr + j, e2m1_table[q] * sval[l]);
            }
        }
    }
#endif
}

/*
 * Work items of the transposed path: TP_ROWS input rows x TP_COLS input columns, swept 16 input rows at a time.
 * Their output (TP_COLS logical rows x TP_ROWS elements) is built in a per-thread staging buffer and then copied
 * out row by row in whole cache lines (streaming stores for large outputs): writing 16x16 tiles straight into the
 * output touches 16 rows (16 pages, often one cache set) per tile with partial-line stores, which made the pass
 * ~2x slower.
 */
#define TP_ROWS 128
#define TP_COLS 256

/* Copy rows of `bytes` bytes; with nt, whole aligned cache lines go out as non-temporal (streaming) stores. */
static void copy_rows(const uint8_t *src, int64_t src_stride, uint8_t *dst, int64_t dst_stride, int64_t rows,
                      size_t bytes, int nt) {
#ifdef NVFP4_AVX512
    if (nt && ((uintptr_t)dst & 63) == 0 && (dst_stride & 63) == 0 && (bytes & 63) == 0) {
        for (int64_t i = 0; i < rows; i++)
            for (size_t b = 0; b < bytes; b += 64)
                _mm512_stream_si512((__m512i *)(dst + i * dst_stride + b),
                                    _mm512_loadu_si512(src + i * src_stride + b));
        return;
    }
#else
    (void)nt;
#endif
    for (int64_t i = 0; i < rows; i++) memcpy(dst + i * dst_stride, src + i * src_stride, bytes);
}

/* The transposed path: quantize t = x^T of a row-major (R, C) x along t's rows, without a transposed copy. */
static int run_tiles_t(const void *x, int dtype, int64_t R, int64_t C, const uint32_t *signbits, const qparams *p,
                       int tile2d, int out_kind, void *out, uint8_t *scales, int nt, int nthreads) {
    const int64_t nblk = (R + BLOCK - 1) / BLOCK;
    const int64_t npan = (R + TP_ROWS - 1) / TP_ROWS, nch = (C + TP_COLS - 1) / TP_COLS;
    const size_t oesz = out_kind == OUT_BF16 ? 2 : 4;
    /* staging row strides: values TP_ROWS elements, packed TP_ROWS/2 bytes, scales TP_ROWS/16 bytes */
    const int64_t vstride = out_kind == OUT_PACKED ? TP_ROWS / 2 : TP_ROWS, sstride = TP_ROWS / BLOCK;
    const size_t stage_bytes = (size_t)TP_COLS * (size_t)(out_kind == OUT_PACKED ? TP_ROWS / 2 : TP_ROWS * 4);
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (R * C >= PAR_MIN_ELEMS)
    {
        uint8_t *stage = (uint8_t *)malloc(stage_bytes + (size_t)TP_COLS * sstride);
        if (!stage) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t it = 0; it < npan * nch; it++) {
            if (!stage) continue;
            const int64_t pr0 = (it / nch) * TP_ROWS, pc0 = (it % nch) * TP_COLS;
            const int64_t pr1 = pr0 + TP_ROWS < R ? pr0 + TP_ROWS : R, pc1 = pc0 + TP_COLS < C ? pc0 + TP_COLS : C;
            const tdst d = {stage, vstride, scales ? stage + stage_bytes : NULL, sstride, pc0, pr0};
            for (int64_t r0 = pr0; r0 < pr1; r0 += 16)
                for (int64_t c0 = pc0; c0 < pc1; c0 += 16)
                    tile_t(x, dtype, R, C, r0, pr1 - r0 < 16 ? (int)(pr1 - r0) : 16, c0,
                           pc1 - c0 < 16 ? (int)(pc1 - c0) : 16, signbits, p, tile2d, out_kind, &d);
            /* copy out: logical rows pc0 .. pc1-1, logical columns pr0 .. pr1-1 */
            const int64_t nb0 = pr0 / BLOCK, nb1 = (pr1 + BLOCK - 1) / BLOCK;
            if (out_kind == OUT_PACKED)
                copy_rows(stage, vstride, (uint8_t *)out + pc0 * nblk * 8 + nb0 * 8, nblk * 8, pc1 - pc0,
                          (size_t)(nb1 - nb0) * 8, nt);
            else
                copy_rows(stage, vstride * (int64_t)oesz, (uint8_t *)out + (size_t)(pc0 * R + pr0) * oesz,
                          R * (int64_t)oesz, pc1 - pc0, (size_t)(pr1 - pr0) * oesz, nt);
            if (scales)
                copy_rows(stage + stage_bytes, sstride, scales + pc0 * nblk + nb0, nblk, pc1 - pc0,
                          (size_t)(nb1 - nb0), 0);
        }
        free(stage);
#ifdef NVFP4_AVX512
        if (nt) _mm_sfence(); /* order the streaming stores before the results are used */
#endif
    }
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Exported entry points (see cpu.py for the Python side).                                                      */
/* ------------------------------------------------------------------------------------------------------------ */

int nvfp4_abi_version(void) { return NVFP4_ABI_VERSION; }

int nvfp4_simd_width(void) {
#ifdef NVFP4_AVX512
    return 16;
#else
    return 1;
#endif
}

/* max |x| over n elements; NaN if any element is NaN (as torch's amax). */
float nvfp4_amax(const void *x, int dtype, int64_t n, int nthreads) {
    uint32_t best = 0;
    const int64_t chunk = 1 << 14;
    const int64_t nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(max : best) if (n >= PAR_MIN_ELEMS)
    for (int64_t ch = 0; ch < nchunks; ch++) {
        const int64_t i0 = ch * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
        int64_t i = i0;
        uint32_t m = 0;
#ifdef NVFP4_AVX512
        const __m512i absm = _mm512_set1_epi32(0x7FFFFFFF);
        __m512i m0 = _mm512_setzero_si512(), m1 = m0, m2 = m0, m3 = m0;
        for (; i + 64 <= i1; i += 64) {
            m0 = _mm512_max_epu32(m0, _mm512_and_si512(vload_bits(x, dtype, i), absm));
            m1 = _mm512_max_epu32(m1, _mm512_and_si512(vload_bits(x, dtype, i + 16), absm));
            m2 = _mm512_max_epu32(m2, _mm512_and_si512(vload_bits(x, dtype, i + 32), absm));
            m3 = _mm512_max_epu32(m3, _mm512_and_si512(vload_bits(x, dtype, i + 48), absm));
        }
        for (; i + 16 <= i1; i += 16) m0 = _mm512_max_epu32(m0, _mm512_and_si512(vload_bits(x, dtype, i), absm));
        if (i < i1) m1 = _mm512_max_epu32(m1, _mm512_and_si512(vload_bits_n(x, dtype, i, (int)(i1 - i)), absm));
        m = _mm512_reduce_max_epu32(_mm512_max_epu32(_mm512_max_epu32(m0, m1), _mm512_max_epu32(m2, m3)));
#else
        for (; i < i1; i++) {
            const uint32_t a = load_absbits(x, dtype, i);
            m = a > m ? a : m;
        }
#endif
        best = m > best ? m : best;
    }
    return best > 0x7F800000u ? NAN : u2f(best);
}

/*
 * NVFP4 quantization of a row-major (rows, cols) tensor. tile_rows = 1 (1x16 blocks) or 16 (16x16 tiles; any
 * positive value works: the block amax is taken over tile_rows rows). packed: (rows, nblk*8), scales: (rows, nblk)
 * E4M3 bytes, nblk = ceil(cols/16). Returns 0, or -1 if scratch memory could not be allocated.
 */
int nvfp4_quantize(const void *x, int dtype, int64_t rows, int64_t cols, float global_amax, int64_t tile_rows,
                   int stochastic, uint32_t k1, uint32_t k2, uint8_t *packed, uint8_t *scales, int nthreads) {
    const qparams p = make_params(global_amax, stochastic, k1, k2);
    return run_rows(x, dtype, rows, cols, NULL, &p, tile_rows, OUT_PACKED, packed, scales, 0, nthreads);
}

/*
 * max |RHT(x)| (BF16-rounded) over a (rows, cols) tensor, cols % 16 == 0; NaN if any NaN.
 * x 1/4 and the BF16 rounding are monotone and symmetric, so they are applied once, to the max of the raw
 * butterfly outputs: max_i bf16(|y_i|) == bf16(max_i |y_i|) (the x 1/4 is in rht16_butterfly).
 */
float nvfp4_rht_amax(const void *x, int dtype, int64_t rows, int64_t cols, const uint32_t *signbits, int nthreads) {
    uint32_t best = 0;
    const int64_t n = rows * cols;
    const int64_t chunk = 1 << 14;
    const int64_t nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(max : best) if (n >= PAR_MIN_ELEMS)
    for (int64_t ch = 0; ch < nchunks; ch++) {
        const int64_t i0 = ch * chunk, i1 = i0 + chunk < n ? i0 + chunk : n; /* multiples of 16 */
        uint32_t m = 0;
#ifdef NVFP4_AVX512
        const __m512i sb = _mm512_loadu_si512(signbits), absm = _mm512_set1_epi32(0x7FFFFFFF);
        __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0;
        int64_t i = i0;
        for (; i + 32 <= i1; i += 32) {
            const __m512 h0 = rht16_butterfly(_mm512_castsi512_ps(vload_bits(x, dtype, i)), sb);
            const __m512 h1 = rht16_butterfly(_mm512_castsi512_ps(vload_bits(x, dtype, i + 16)), sb);
            acc0 = _mm512_max_epu32(acc0, _mm512_and_si512(_mm512_castps_si512(h0), absm));
            acc1 = _mm512_max_epu32(acc1, _mm512_and_si512(_mm512_castps_si512(h1), absm));
        }
        for (; i < i1; i += 16) {
            const __m512 h = rht16_butterfly(_mm512_castsi512_ps(vload_bits(x, dtype, i)), sb);
            acc0 = _mm512_max_epu32(acc0, _mm512_and_si512(_mm512_castps_si512(h), absm));
        }
        m = _mm512_reduce_max_epu32(_mm512_max_epu32(acc0, acc1));
        if (m <= 0x7F800000u) m = f2u(round_bf16(u2f(m)));
#else
        float in[16], out[16];
        for (int64_t i = i0; i < i1; i += 16) {
            for (int j = 0; j < 16; j++) in[j] = load_f32(x, dtype, i + j);
            rht16_scalar(in, signbits, out);
            for (int j = 0; j < 16; j++) {
                const uint32_t a = f2u(out[j]) & 0x7FFFFFFFu;
                m = a > m ? a : m;
            }
        }
#endif
        best = m > best ? m : best;
    }
    return best > 0x7F800000u ? NAN : u2f(best);
}

/* RHT16 along the rows (cols % 16 == 0), BF16-rounded, then 1x16 NVFP4 with the given tensor amax. */
int nvfp4_rht_quantize(const void *x, int dtype, int64_t rows, int64_t cols, const uint32_t *signbits,
                       float global_amax, int stochastic, uint32_t k1, uint32_t k2, uint8_t *packed, uint8_t *scales,
                       int nthreads) {
    const qparams p = make_params(global_amax, stochastic, k1, k2);
    return run_rows(x, dtype, rows, cols, signbits, &p, 1, OUT_PACKED, packed, scales, 0, nthreads);
}

/*
 * max |RHT(t)| (BF16-rounded) of t = x^T, the RHT16 running along the ROWS of a row-major (rows, cols) x
 * (rows % 16 == 0); NaN if any NaN. The BF16 rounding is applied once at the end (see nvfp4_rht_amax).
 */
float nvfp4_rht_amax_t(const void *x, int dtype, int64_t rows, int64_t cols, const uint32_t *signbits,
                       int nthreads) {
    uint32_t best = 0;
    const int64_t npan = rows / 16;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(max : best) if (rows * cols >= PAR_MIN_ELEMS)
    for (int64_t pan = 0; pan < npan; pan++) {
        uint32_t m = 0;
#ifdef NVFP4_AVX512
        const __m512i absm = _mm512_set1_epi32(0x7FFFFFFF);
        __m512i acc = _mm512_setzero_si512();
        __m512 v[16];
        for (int64_t c0 = 0; c0 < cols; c0 += 16) {
            load_tile16(x, dtype, cols, pan * 16, 16, c0, cols - c0 < 16 ? (int)(cols - c0) : 16, v);
            rht16_butterfly_v(v, signbits);
            NVFP4_UNROLL for (int j = 0; j < 16; j++)
                acc = _mm512_max_epu32(acc, _mm512_and_si512(_mm512_castps_si512(v[j]), absm));
        }
        m = _mm512_reduce_max_epu32(acc);
        if (m <= 0x7F800000u) m = f2u(round_bf16(u2f(m)));
#else
        float in[16], out[16];
        for (int64_t c = 0; c < cols; c++) {
            for (int j = 0; j < 16; j++) in[j] = load_f32(x, dtype, (pan * 16 + j) * cols + c);
            rht16_scalar(in, signbits, out);
            for (int j = 0; j < 16; j++) {
                const uint32_t a = f2u(out[j]) & 0x7FFFFFFFu;
                m = a > m ? a : m;
            }
        }
#endif
        best = m > best ? m : best;
    }
    return best > 0x7F800000u ? NAN : u2f(best);
}

/*
 * The general entry point. x: a row-major (rows, cols) tensor. transpose = 0: quantize x along its rows (blocks of
 * 16 consecutive elements of a row), transpose = 1: quantize t = x^T (shape (cols, rows)) along ITS rows, reading x
 * in place. signbits (16 words, 0 or 0x80000000) = an RHT16 along the blocks' dimension first (that dimension must
 * be a multiple of 16), NULL = none. tile_rows: 1 or 16 (transpose = 0: any positive value). out_kind: OUT_PACKED
 * (out (M, nblk*8) codes) or OUT_F32 / OUT_BF16 (out (M, K) values value(q) x s_b), with (M, K) the logical shape;
 * scales (M, nblk) E4M3 bytes, or NULL to skip them. SR indices are those of the logical (M, K) tensor.
 * Returns 0, or -1 if scratch memory could not be allocated.
 */
int nvfp4_quantize_ex(const void *x, int dtype, int64_t rows, int64_t cols, int transpose, const uint32_t *signbits,
                      float global_amax, int64_t tile_rows, int stochastic, uint32_t k1, uint32_t k2, int out_kind,
                      void *out, uint8_t *scales, int nthreads) {
    const qparams p = make_params(global_amax, stochastic, k1, k2);
    const int64_t out_bytes = rows * cols * (out_kind == OUT_PACKED ? 1 : out_kind == OUT_BF16 ? 4 : 8) / 2;
    const int nt = out_bytes >= NT_MIN_BYTES;
    if (transpose)
        return run_tiles_t(x, dtype, rows, cols, signbits, &p, tile_rows == 16, out_kind, out, scales, nt, nthreads);
    return run_rows(x, dtype, rows, cols, signbits, &p, tile_rows, out_kind, out, scales, nt, nthreads);
}

/* value(code) x block scale for every (padded) element: out (rows, nblk*16) as FP32 or BF16 (exact either way). */
void nvfp4_scaled_values(const uint8_t *packed, const uint8_t *scales, int64_t rows, int64_t nblk, int out_dtype,
                         void *out, int nthreads) {
    const float *e2m1 = e2m1_table;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (rows * nblk * BLOCK >= PAR_MIN_ELEMS)
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *prow = packed + r * nblk * 8;
        const int64_t o0 = r * nblk * BLOCK;
#ifdef NVFP4_AVX512
        const __m512 table = _mm512_loadu_ps(e2m1);
        const __m512i shifts = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
        for (int64_t b = 0; b < nblk; b++) {
            const float s = e4m3_to_f32(scales[r * nblk + b]);
            const __m128i bytes = _mm_loadl_epi64((const __m128i *)(prow + b * 8));
            __m512i c = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(bytes, bytes));
            c = _mm512_and_si512(_mm512_srlv_epi32(c, shifts), _mm512_set1_epi32(15));
            __m512 v = _mm512_mul_ps(_mm512_permutexvar_ps(c, table), _mm512_set1_ps(s));
            if (s != s) v = _mm512_set1_ps(NAN);
            if (out_dtype == DT_BF16) /* exact in BF16: truncation is the rounding */
                _mm256_storeu_si256((__m256i *)((uint16_t *)out + o0 + b * BLOCK),
                                    _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16)));
            else
                _mm512_storeu_ps((float *)out + o0 + b * BLOCK, v);
        }
#else
        for (int64_t b = 0; b < nblk; b++) {
            const float s = e4m3_to_f32(scales[r * nblk + b]);
            for (int j = 0; j < BLOCK; j++) {
                float v = e2m1[(prow[b * 8 + j / 2] >> (4 * (j & 1))) & 15] * s;
                if (s != s) v = NAN;
                if (out_dtype == DT_BF16)
                    ((uint16_t *)out)[o0 + b * BLOCK + j] = (uint16_t)(f2u(v) >> 16);
                else
                    ((float *)out)[o0 + b * BLOCK + j] = v;
            }
        }
#endif
    }
}

/* Random bytes of elements i0 .. i0+n-1, through the vector generator when built (exported for the tests: the
 * 32-bit carry of the element index cannot be reached with test-sized tensors). */
void nvfp4_random_bytes(uint64_t i0, int64_t n, uint32_t k1, uint32_t k2, uint8_t *out) {
    int64_t i = 0;
#ifdef NVFP4_AVX512
    for (; i + 16 <= n; i += 16)
        _mm_storeu_si128((__m128i *)(out + i), _mm512_cvtepi32_epi8(random_bytes16(i0 + (uint64_t)i, k1, k2)));
#endif
    for (; i < n; i++) out[i] = (uint8_t)random_byte(i0 + (uint64_t)i, k1, k2);
}

/* Random bytes of elements base[l] + j for 16 lanes l, through the transposed path's generator (exported for the
 * tests, like nvfp4_random_bytes: lane bases that carry into the high word cannot be reached otherwise). */
void nvfp4_random_bytes_lanes(const uint64_t *base, uint32_t j, uint32_t k1, uint32_t k2, uint8_t *out) {
#ifdef NVFP4_AVX512
    uint32_t lo[16], hi[16];
    for (int l = 0; l < 16; l++) {
        lo[l] = (uint32_t)base[l];
        hi[l] = (uint32_t)(base[l] >> 32);
    }
    _mm_storeu_si128((__m128i *)out, _mm512_cvtepi32_epi8(random_bytes16_at(_mm512_loadu_si512(lo),
                                                                            _mm512_loadu_si512(hi), j, k1, k2)));
#else
    for (int l = 0; l < 16; l++) out[l] = (uint8_t)random_byte(base[l] + j, k1, k2);
#endif
}

/* E4M3 RNE-satfinite of n floats (exported for the exhaustive conversion test). */
void nvfp4_e4m3_encode(const float *x, int64_t n, uint8_t *out) {
    float r;
    for (int64_t i = 0; i < n; i++) out[i] = e4m3_rne_satfinite(x[i], &r);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* MXFP4 (nvfp4/formats/mxfp4.py): 32-element blocks, power-of-two (UE8M0) scales, no tensor scale, so one pass.   */
/* Plain C written for the auto-vectoriser (fixed 32-wide inner loops over a block buffer); the bits are those of   */
/* reference_quantize_mxfp4_2d, optionally after a 32-point RHT (hadamard.py's butterfly, x FP32 1/sqrt(32), BF16).  */
/* ------------------------------------------------------------------------------------------------------------ */
#define MX_BLOCK 32

/* buf[j] = element base + j * stride of x (FP32 or BF16) for j < n, then zeros up to len (the logical padding). */
static inline void load_strided(const void *x, int dtype, int64_t base, int64_t stride, int64_t n, float *buf,
                                int64_t len) {
    if (dtype == DT_BF16) {
        const uint16_t *xs = (const uint16_t *)x + base;
        for (int64_t j = 0; j < n; j++) buf[j] = u2f((uint32_t)xs[j * stride] << 16);
    } else {
        const float *xs = (const float *)x + base;
        for (int64_t j = 0; j < n; j++) buf[j] = xs[j * stride];
    }
    for (int64_t j = n; j < len; j++) buf[j] = 0.0f;
}

/* The unbiased scale exponent e (scale = 2^e) of a block with finite amax >= 0, as _block_exponents: exact from
 * frexp (amax = m 2^k, m in [0.5, 1)); "ceil": the smallest e with 6 2^e >= amax; "floor": floor(log2 amax) - 2. */
static inline int mx_exponent(float amax, int ceil_rule) {
    int k, e;
    if (!(amax > 0.0f)) return -127;
    const float m = frexpf(amax, &k);
    e = ceil_rule ? (m <= 0.75f ? k - 3 : k - 2) : (k - 1) - 2;
    return e < -127 ? -127 : (e > 127 ? 127 : e);
}

/* The 32-point RHT of one block in place: signs, butterfly stages h = 1 .. 16, x FP32(1/sqrt(32)), BF16 RNE. */
static inline void mx_rht32(float *x, const uint32_t *signbits) {
    const float norm = (float)(1.0 / sqrt(32.0));
    uint32_t am = 0;
    for (int i = 0; i < MX_BLOCK; i++) {
        x[i] = u2f(f2u(x[i]) ^ signbits[i]);
        const uint32_t a = f2u(x[i]) & 0x7FFFFFFFu;
        am = a > am ? a : am;
    }
    const int big = am >= RHT_BIG_BITS; /* overflow-safe, as rht16_scalar */
    if (big)
        for (int i = 0; i < MX_BLOCK; i++) x[i] *= RHT_PRE;
    for (int h = 1; h < MX_BLOCK; h *= 2)
        for (int g = 0; g < MX_BLOCK; g += 2 * h)
            for (int i = g; i < g + h; i++) {
                const float a = x[i], b = x[i + h];
                x[i] = a + b;
                x[i + h] = a - b;
            }
    const float post = big ? norm * 256.0f : norm; /* exact: a power of two times norm */
    for (int i = 0; i < MX_BLOCK; i++) x[i] = round_bf16(x[i] * post);
}

/*
 * Quantize t (logical shape (M, K), element (r, k) at x[r * sr + k * sk], FP32 or BF16) to MXFP4 along its rows.
 * sk == 1: row-major t; otherwise sr must be 1 (t is the transpose of a row-major x, read in place; the blocks are
 * then walked column-block by column-block so that the 32 strided input streams and the output stay sequential).
 * signbits: 32 sign words (0 or 0x80000000) for an RHT32 along K first (K % 32 == 0), or NULL. SR indices are
 * r * K + k of the logical tensor. out_kind: OUT_PACKED (out (M, nblk*16) codes, scales (M, nblk) E8M0 bytes) or
 * OUT_F32 / OUT_BF16 (out (M, K) values value(q) 2^e, exact; scales written when not NULL).
 */
void mxfp4_quantize(const void *x, int dtype, int64_t M, int64_t K, int64_t sr, int64_t sk, const uint32_t *signbits,
                    int ceil_rule, int stochastic, uint32_t k1, uint32_t k2, int out_kind, void *out, uint8_t *scales,
                    int nthreads) {
    const int64_t nblk = (K + MX_BLOCK - 1) / MX_BLOCK, nitems = M * nblk;
    const int row_major = sk == 1;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (M * K >= PAR_MIN_ELEMS)
    for (int64_t it = 0; it < nitems; it++) {
        const int64_t r = row_major ? it / nblk : it % M, b = row_major ? it % nblk : it / M;
        const int64_t k0 = b * MX_BLOCK, n = K - k0 < MX_BLOCK ? K - k0 : MX_BLOCK;
        float buf[MX_BLOCK];
        uint32_t codes[MX_BLOCK];
        load_strided(x, dtype, r * sr + k0 * sk, sk, n, buf, MX_BLOCK);
        if (signbits) mx_rht32(buf, signbits);
        uint32_t am = 0;
        for (int j = 0; j < MX_BLOCK; j++) {
            const uint32_t a = f2u(buf[j]) & 0x7FFFFFFFu;
            am = a > am ? a : am;
        }
        float sval;
        uint8_t sbyte;
        if (am >= 0x7F800000u) { /* a NaN or Inf in the block: NaN scale (0xFF), codes 0, values NaN */
            for (int j = 0; j < MX_BLOCK; j++) codes[j] = 0;
            sval = NAN;
            sbyte = 0xFF;
        } else {
            const int e = mx_exponent(u2f(am), ceil_rule);
            const float inv = ldexpf(1.0f, -e); /* x * 2^-e == x / 2^e exactly: 2^-e is representable */
            if (stochastic) {
                const uint64_t i0 = (uint64_t)(r * K + k0);
                for (int j = 0; j < MX_BLOCK; j++) codes[j] = e2m1_sr(buf[j] * inv, random_byte(i0 + j, k1, k2));
            } else {
                for (int j = 0; j < MX_BLOCK; j++) codes[j] = e2m1_rn(buf[j] * inv);
            }
            sval = ldexpf(1.0f, e);
            sbyte = (uint8_t)(e + 127);
        }
        if (scales) scales[r * nblk + b] = sbyte;
        if (out_kind == OUT_PACKED) {
            uint8_t *po = (uint8_t *)out + r * nblk * (MX_BLOCK / 2) + b * (MX_BLOCK / 2);
            for (int j = 0; j < MX_BLOCK / 2; j++) po[j] = (uint8_t)(codes[2 * j] | (codes[2 * j + 1] << 4));
        } else if (out_kind == OUT_BF16) {
            uint16_t *o = (uint16_t *)out + r * K + k0;
            if (sval != sval)
                for (int64_t j = 0; j < n; j++) o[j] = 0x7FC0u;
            else
                for (int64_t j = 0; j < n; j++) o[j] = (uint16_t)(f2u(e2m1_table[codes[j]] * sval) >> 16);
        } else {
            float *o = (float *)out + r * K + k0;
            for (int64_t j = 0; j < n; j++) o[j] = sval != sval ? NAN : e2m1_table[codes[j]] * sval;
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Blockwise FP8 (nvfp4/formats/fp8.py): E4M3 codes of x / s_b with FP32 scales s_b = amax_b / 448 over 1x128 or   */
/* 128x128 tiles. Plain C, like the MXFP4 kernel: the block is staged in a buffer, each tile is read twice (amax,   */
/* then quantize) while it is in cache.                                                                             */
/* ------------------------------------------------------------------------------------------------------------ */
#define FP8_BLOCK 128

/* The FP32 scale of a tile from its |x| max bits, as quantize_fp8_blockwise: amax / 448; an underflow to 0 gives the
 * smallest subnormal (amax > 0) or 1 (amax == 0); a NaN/Inf amax gives NaN. */
static inline float fp8_scale(uint32_t abits) {
    if (abits >= 0x7F800000u) return NAN;
    const float s = u2f(abits) / 448.0f;
    if (s > 0.0f) return s;
    return abits ? u2f(1u) : 1.0f;
}

/*
 * t: the logical (M, K) tensor at x[r * sr + k * sk] (sk == 1: row-major; otherwise sr == 1, a transposed view read
 * in place). tile_rows: 1 or 128 (rows sharing a scale). out_kind OUT_F32: out (M, K) FP32 values e4m3(x/s) * s (the
 * GEMM operand); OUT_PACKED: out (M, K) E4M3 bytes. scales (M, nblk) FP32 (a tile's scale repeated over its rows) or
 * NULL. Returns 0, or -1 if out of memory.
 */
int fp8_quantize(const void *x, int dtype, int64_t M, int64_t K, int64_t sr, int64_t sk, int64_t tile_rows,
                 int out_kind, void *out, float *scales, int nthreads) {
    const int64_t nblk = (K + FP8_BLOCK - 1) / FP8_BLOCK, ngroups = (M + tile_rows - 1) / tile_rows;
    const int64_t nitems = ngroups * nblk;
    const int row_major = sk == 1;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (M * K >= PAR_MIN_ELEMS)
    {
        float *buf = (float *)malloc((size_t)tile_rows * FP8_BLOCK * sizeof(float));
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t it = 0; it < nitems; it++) {
            if (!buf) continue;
            const int64_t g = row_major ? it / nblk : it % ngroups, b = row_major ? it % nblk : it / ngroups;
            const int64_t r0 = g * tile_rows, nr = M - r0 < tile_rows ? M - r0 : tile_rows;
            const int64_t k0 = b * FP8_BLOCK, n = K - k0 < FP8_BLOCK ? K - k0 : FP8_BLOCK;
            uint32_t am = 0;
            for (int64_t i = 0; i < nr; i++) {
                float *row = buf + i * FP8_BLOCK;
                load_strided(x, dtype, (r0 + i) * sr + k0 * sk, sk, n, row, n);
                for (int64_t j = 0; j < n; j++) {
                    const uint32_t a = f2u(row[j]) & 0x7FFFFFFFu;
                    am = a > am ? a : am;
                }
            }
            const float s = fp8_scale(am);
            for (int64_t i = 0; i < nr; i++) {
                const float *row = buf + i * FP8_BLOCK;
                const int64_t o = (r0 + i) * K + k0;
                if (scales) scales[(r0 + i) * nblk + b] = s;
                for (int64_t j = 0; j < n; j++) {
                    float v = row[j] / s, q;
                    v = v > 448.0f ? 448.0f : (v < -448.0f ? -448.0f : v); /* NaN passes through */
                    const uint8_t code = e4m3_rne_satfinite(v, &q);
                    if (out_kind == OUT_PACKED)
                        ((uint8_t *)out)[o + j] = code;
                    else
                        ((float *)out)[o + j] = q * s;
                }
            }
        }
        free(buf);
    }
    return failed ? -1 : 0;
}
