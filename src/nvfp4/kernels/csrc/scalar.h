/*
 * Scalar numerics: bit casts and element loads, E4M3 and BF16 rounding, E2M1 round-to-nearest and stochastic
 * rounding, the counter-based random bytes and the 16-point Hadamard butterfly. The portable path is built from
 * these; the vector path uses them for row tails and to fill its lookup tables, so both compute the same bits.
 * Relies on common.h (DT_*, OUT_*).
 */
#ifndef NVFP4_CSRC_SCALAR_H
#define NVFP4_CSRC_SCALAR_H

#include "common.h"

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
        const float m = u2f(b) * 512.0f;               /* exact */
        const float r = (m + 8388608.0f) - 8388608.0f; /* RNE to an integer 0..8 */
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
    const uint32_t m = (uint32_t)(a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) +
                       (a > 5.0f);
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
    const uint32_t m = (uint32_t)(t >= 0.5f) + (t >= 1.0f) + (t >= 1.5f) + (t >= 2.0f) + (t >= 3.0f) + (t >= 4.0f) +
                       (t >= 6.0f);
    return m | ((uint32_t)(v < 0.0f) << 3);
}

/* E2M1 values by code (code 8 is -0). */
static const float e2m1_table[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
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
 * Overflow-safe RHT (nvfp4/formats/hadamard.py): a chunk whose largest |value| is >= 2^120 is scaled by 2^-8 before the
 * butterfly and by (norm x 2^8) after it instead of by norm, so no sum of up to 32 values can overflow where the
 * exact result is finite. Every other chunk is computed exactly as before (bit-identical on ordinary data).
 */
#define RHT_BIG_BITS 0x7B800000u /* 2^120 */
#define RHT_PRE 0x1p-8f

/* The 16-point Walsh-Hadamard butterfly of nvfp4/formats/hadamard.py: signs, stages h = 1, 2, 4, 8, x 1/4, BF16. */
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

#endif /* NVFP4_CSRC_SCALAR_H */
