/*
 * The blockwise FP8 entry point (declared in call.h): E4M3 codes with FP32 scales over 1x128 or 128x128 tiles,
 * in plain C. Relies on scalar.h (loads, E4M3 rounding) only.
 */
#include "call.h"
#include "common.h"
#include "scalar.h"

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
 * t: the logical (M, K) = (rows, cols) tensor at x[r * sr + k * sk], sr, sk = stride_r, stride_k (sk == 1:
 * row-major; otherwise sr == 1, a transposed view read in place). tile_rows: 1 or 128 (rows sharing a scale).
 * out_kind OUT_F32: out (M, K) FP32 values e4m3(x/s) * s (the GEMM operand); OUT_PACKED: out (M, K) E4M3 bytes.
 * scales (M, nblk) FP32 (a tile's scale repeated over its rows) or NULL. Returns 0, or -1 if out of memory.
 */
int fp8_quantize(const struct nvfp4_call *c) {
    const void *x = c->x;
    const int dtype = c->dtype, out_kind = c->out_kind, nthreads = c->nthreads;
    const int64_t M = c->rows, K = c->cols, sr = c->stride_r, sk = c->stride_k, tile_rows = c->tile_rows;
    void *out = c->out;
    float *scales = (float *)c->scales;
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
