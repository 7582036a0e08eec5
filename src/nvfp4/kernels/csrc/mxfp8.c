/*
 * The MXFP8 entry point (declared in call.h): E4M3 codes with E8M0 scales over 32-element blocks, Transformer
 * Engine's arithmetic (nvfp4/formats/mxfp8.py), in plain C. Relies on scalar.h (loads, E4M3 and BF16 rounding).
 */
#include "call.h"
#include "common.h"
#include "scalar.h"

#define MX8_BLOCK 32

/* The biased E8M0 exponent of a block from its |x| max bits: s = amax * FP32(1/448) rounded up to a power of two
 * (the FP32 exponent field, +1 for a non-zero mantissa; saturating at 254; a subnormal s <= 2^-127 gives 0). */
static inline uint32_t mxfp8_biased_exponent(uint32_t abits) {
    const uint32_t s = f2u(u2f(abits) * u2f(0x3B124925u)); /* FP32(1/448) */
    const uint32_t exponent = s >> 23, mantissa = s & 0x7FFFFFu;
    const int up = mantissa > 0 && exponent != 0xFEu && !(exponent == 0 && mantissa <= 0x400000u);
    return exponent + (uint32_t)up;
}

/*
 * t: the logical (M, K) = (rows, cols) tensor at x[r * sr + k * sk] (sk == 1: row-major; otherwise a transposed
 * view read in place). out_kind OUT_PACKED: out (M, K) E4M3 bytes and scales (M, nblk) E8M0 bytes; OUT_F32 /
 * OUT_BF16: out (M, K) the GEMM operand e4m3 * 2^(e - 127) (BF16 rounded to nearest even, as torch), scales NULL.
 * A block holding a NaN or an Inf gets the scale 0xFF and NaN data.
 */
void mxfp8_quantize(const struct nvfp4_call *c) {
    const void *x = c->x;
    const int dtype = c->dtype, out_kind = c->out_kind, nthreads = c->nthreads;
    const int64_t M = c->rows, K = c->cols, sr = c->stride_r, sk = c->stride_k;
    void *out = c->out;
    uint8_t *scales = (uint8_t *)c->scales;
    const int64_t nblk = (K + MX8_BLOCK - 1) / MX8_BLOCK, nitems = M * nblk;
    const int row_major = sk == 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (M * K >= PAR_MIN_ELEMS)
    for (int64_t it = 0; it < nitems; it++) {
        /* row-major: consecutive items walk a row; transposed view: they walk a column (contiguous in x) */
        const int64_t r = row_major ? it / nblk : it % M, b = row_major ? it % nblk : it / M;
        const int64_t k0 = b * MX8_BLOCK, n = K - k0 < MX8_BLOCK ? K - k0 : MX8_BLOCK;
        float buf[MX8_BLOCK];
        load_strided(x, dtype, r * sr + k0 * sk, sk, n, buf, n);
        uint32_t am = 0;
        for (int64_t j = 0; j < n; j++) {
            const uint32_t a = f2u(buf[j]) & 0x7FFFFFFFu;
            am = a > am ? a : am;
        }
        const int bad = am >= 0x7F800000u;
        const uint32_t e = bad ? 0 : mxfp8_biased_exponent(am);
        const float factor = e == 0 ? 1.0f : u2f((254u - e) << 23);       /* TE's exp2f_rcp */
        const float scale = bad ? NAN : u2f(e == 0 ? 0x400000u : e << 23); /* 2^(e - 127), exact */
        if (scales) scales[r * nblk + b] = bad ? 0xFFu : (uint8_t)e;
        const int64_t o = r * K + k0;
        for (int64_t j = 0; j < n; j++) {
            float v = buf[j] * factor, q;
            v = v > 448.0f ? 448.0f : (v < -448.0f ? -448.0f : v);
            uint8_t code = e4m3_rne_satfinite(v, &q);
            if (bad) code = 0x7Fu, q = NAN;
            if (out_kind == OUT_PACKED)
                ((uint8_t *)out)[o + j] = code;
            else if (out_kind == OUT_BF16)
                ((uint16_t *)out)[o + j] = (uint16_t)(f2u(round_bf16(q * scale)) >> 16);
            else
                ((float *)out)[o + j] = q * scale;
        }
    }
}
