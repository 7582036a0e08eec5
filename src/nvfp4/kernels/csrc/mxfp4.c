/*
 * The MXFP4 entry point (declared in call.h): 32-element blocks with power-of-two (E8M0) scales, optionally after
 * a 32-point RHT, in plain C for the auto-vectoriser. Relies on scalar.h (loads, E2M1 rounding, random bytes,
 * BF16 rounding) only.
 */
#include "call.h"
#include "common.h"
#include "scalar.h"

/* ------------------------------------------------------------------------------------------------------------ */
/* MXFP4 (nvfp4/formats/mxfp4.py): 32-element blocks, power-of-two (UE8M0) scales, no tensor scale, so one pass.   */
/* Plain C written for the auto-vectoriser (fixed 32-wide inner loops over a block buffer); the bits are those of   */
/* reference_quantize_mxfp4_2d, optionally after a 32-point RHT (formats/hadamard.py's, x FP32 1/sqrt(32), BF16).   */
/* ------------------------------------------------------------------------------------------------------------ */
#define MX_BLOCK 32

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
 * Quantize t (logical shape (M, K) = (rows, cols), element (r, k) at x[r * sr + k * sk] with sr, sk = stride_r,
 * stride_k, FP32 or BF16) to MXFP4 along its rows.
 * sk == 1: row-major t; otherwise sr must be 1 (t is the transpose of a row-major x, read in place; the blocks are
 * then walked column-block by column-block so that the 32 strided input streams and the output stay sequential).
 * signbits: 32 sign words (0 or 0x80000000) for an RHT32 along K first (K % 32 == 0), or NULL. SR indices are
 * r * K + k of the logical tensor (keys k1, k2). ceil_rule: the "ceil" scale rule, else "floor". out_kind:
 * OUT_PACKED (out (M, nblk*16) codes, scales (M, nblk) E8M0 bytes) or OUT_F32 / OUT_BF16 (out (M, K) values
 * value(q) 2^e, exact; scales written when not NULL).
 */
void mxfp4_quantize(const struct nvfp4_call *c) {
    const void *x = c->x;
    const int dtype = c->dtype, ceil_rule = c->ceil_rule, stochastic = c->stochastic, out_kind = c->out_kind;
    const int64_t M = c->rows, K = c->cols, sr = c->stride_r, sk = c->stride_k;
    const uint32_t *signbits = c->signbits;
    const uint32_t k1 = c->k1, k2 = c->k2;
    void *out = c->out;
    uint8_t *scales = (uint8_t *)c->scales;
    const int nthreads = c->nthreads;
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
