/*
 * The Four Over Six entry point (declared in call.h): NVFP4 with an adaptive block scale, the arithmetic of
 * nvfp4/formats/fouroversix.py step for step in FP32 (that file is the definition; see its docstring). Each block
 * (1x16, or a 16x16 tile) is encoded with its amax mapped to 6 and to 4; the candidate with the lower squared error
 * (summed as a tree of adjacent pairs) is kept, a tie keeps 6. OpenMP over the tile rows. Where the build has
 * AVX-512: one 1x16 block per register (the pairwise tree is four lane-swapping adds), a 16x16 tile as 16 registers,
 * a transposed operand through 16x16 register transposes. The scalar path serves the portable build and a
 * non-finite tensor amax (every scale NaN). Relies on scalar.h (loads, E4M3 / E2M1 rounding, the E2M1 table,
 * random bytes, value stores) and avx512.h (vector loads, E2M1 lookups, random bytes, RHT16, stores).
 */
#include <float.h>
#include <math.h>

#include "avx512.h"
#include "call.h"
#include "common.h"
#include "scalar.h"

#define FOS_MAX_TILE (16 * BLOCK)

/* One candidate of one block: its codes, rounded scale and error. n: the block's elements (16 or 256). */
static float fos_candidate(const float *v, const uint8_t *rbytes, int n, float sf, int bad, float s_dec, float amax,
                           float c_enc, int stochastic, uint8_t *codes, uint8_t *scale_code, float *sval) {
    float sr = NAN, err[FOS_MAX_TILE];
    if (bad) {
        *scale_code = 0x7F;
    } else {
        if (sf > 448.0f) sf = 448.0f;
        *scale_code = e4m3_rne_satfinite(sf, &sr);
    }
    const float enc = 1.0f / (s_dec * sr); /* from the ROUNDED scale, a true division */
    for (int j = 0; j < n; j++) {
        float q = sr != 0.0f ? v[j] * enc : 0.0f; /* NaN != 0: a NaN scale gives NaN */
        if (q > 6.0f) q = 6.0f;
        if (q < -6.0f) q = -6.0f;
        const uint32_t code = stochastic ? e2m1_sr(q, rbytes[j]) : e2m1_rn(q);
        codes[j] = (uint8_t)code;
        const float d = ((e2m1_table[code] * sr) * amax) / c_enc - v[j];
        err[j] = d * d;
    }
    for (int w = n; w > 1; w /= 2)
        for (int i = 0; i < w / 2; i++) err[i] = err[2 * i] + err[2 * i + 1];
    *sval = sr;
    return err[0];
}

#ifdef NVFP4_AVX512
/* Sum of the 16 lanes as the tree of adjacent pairs (lane i + lane i^1, then pairs of those, ...): each level adds
 * the same two partial sums as the scalar tree, so the result is bit-identical. */
static inline float fos_tree_sum16(__m512 e) {
    e = _mm512_add_ps(e, _mm512_permute_ps(e, 0xB1));
    e = _mm512_add_ps(e, _mm512_permute_ps(e, 0x4E));
    e = _mm512_add_ps(e, _mm512_shuffle_f32x4(e, e, 0xB1));
    e = _mm512_add_ps(e, _mm512_shuffle_f32x4(e, e, 0x4E));
    return _mm512_cvtss_f32(e);
}

/* The codes, values value(q) x s and squared error (pairwise) of a finite 16-element row x under the scale s. */
static inline float fos_candidate16_with_scale(__m512 x, __m512i rbytes, float s, float s_dec, float amax, float c_enc,
                                               int stochastic, __m512i *codes, __m512 *values) {
    __m512 v = _mm512_setzero_ps();
    if (s != 0.0f) v = _mm512_mul_ps(x, _mm512_set1_ps(1.0f / (s_dec * s)));
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, _mm512_set1_ps(6.0f), _CMP_GT_OQ), v, _mm512_set1_ps(6.0f));
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, _mm512_set1_ps(-6.0f), _CMP_LT_OQ), v, _mm512_set1_ps(-6.0f));
    /* 0 x inf (a zero under an infinite encode factor, when S_dec is tiny) is NaN, which rounds to code 0 in the
     * scalar and reference roundings; the lookups below do not handle NaN, so give them the 0 it rounds to. */
    v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_setzero_ps());
    *codes = stochastic ? e2m1_sr16(v, rbytes) : e2m1_rn16(v);
    *values = e2m1_scaled16(*codes, _mm512_set1_ps(s));
    const __m512 deq = _mm512_div_ps(_mm512_mul_ps(*values, _mm512_set1_ps(amax)), _mm512_set1_ps(c_enc));
    const __m512 d = _mm512_sub_ps(deq, x);
    return fos_tree_sum16(_mm512_mul_ps(d, d));
}

/* One candidate of a finite 1x16 block x (its scale from sf): codes, value(q) x s, scale byte, error. */
static inline float fos_candidate16(__m512 x, __m512i rbytes, float sf, float s_dec, float amax, float c_enc,
                                    int stochastic, __m512i *codes, __m512 *values, uint8_t *scale_code) {
    float s;
    if (sf > 448.0f) sf = 448.0f;
    *scale_code = e4m3_rne_satfinite(sf, &s);
    return fos_candidate16_with_scale(x, rbytes, s, s_dec, amax, c_enc, stochastic, codes, values);
}
#endif

#ifdef NVFP4_AVX512
/* What every block of one call shares. rows, cols: the logical (M, K). */
typedef struct {
    float amax, c_enc, c_q, s_enc, s_dec;
    int stochastic, out_kind;
    uint32_t k1, k2;
    const uint32_t *signbits;
    __m512i sb;
    int64_t cols, nblk;
    uint8_t *packed, *scales;
    void *out;
} fos_params;

/* Block b of logical row r, its nb real elements in x16 (zeros beyond): RHT16 if asked, both candidates, the
 * choice, the stores. A block holding NaN/Inf gets the NaN scale and code 0 (NaN values), as the reference. */
static inline void fos_block16(const fos_params *p, __m512 x16, int64_t r, int64_t b, int nb) {
    const int64_t i0 = r * p->cols + b * BLOCK;
    if (p->signbits) x16 = rht16_vec(x16, p->sb);
    const uint32_t abits = (uint32_t)_mm512_reduce_max_epu32(
        _mm512_and_si512(_mm512_castps_si512(x16), _mm512_set1_epi32(0x7FFFFFFF)));
    uint8_t sc;
    __m512i codes;
    __m512 values;
    if (abits >= 0x7F800000u) {
        sc = 0x7F;
        codes = _mm512_setzero_si512();
        values = _mm512_set1_ps(NAN);
    } else {
        const __m512i rb = p->stochastic ? random_bytes16((uint64_t)i0, p->k1, p->k2) : _mm512_setzero_si512();
        float sf6 = (u2f(abits) / p->c_q) * p->s_enc;
        if (p->amax == 0.0f) sf6 = 0.0f;
        uint8_t sc6, sc4;
        __m512i c6, c4;
        __m512 v6, v4;
        const float e6 = fos_candidate16(x16, rb, sf6, p->s_dec, p->amax, p->c_enc, p->stochastic, &c6, &v6, &sc6);
        const float e4 =
            fos_candidate16(x16, rb, sf6 * 1.5f, p->s_dec, p->amax, p->c_enc, p->stochastic, &c4, &v4, &sc4);
        const int four = e4 < e6;
        sc = four ? sc4 : sc6;
        codes = four ? c4 : c6;
        values = four ? v4 : v6;
    }
    if (p->scales) p->scales[r * p->nblk + b] = sc;
    if (p->packed)
        store_packed16(p->packed + r * p->nblk * 8 + b * 8, codes);
    else
        store_values16(p->out, p->out_kind, i0, values, nb, 0);
}

/* One candidate of a finite 16x16 tile (rows v[0..15], nr of them real): the codes and values of every row and the
 * tile's error, summed pairwise along each row, then pairwise over the 16 rows (the reference's row-major tree). */
static inline float fos_tile_candidate(const fos_params *p, const __m512 *v, const __m512i *rb, float sf,
                                       __m512i *codes, __m512 *values, uint8_t *scale_code) {
    float s;
    if (sf > 448.0f) sf = 448.0f;
    *scale_code = e4m3_rne_satfinite(sf, &s);
    float err[16];
    for (int j = 0; j < 16; j++)
        err[j] = fos_candidate16_with_scale(v[j], rb[j], s, p->s_dec, p->amax, p->c_enc, p->stochastic, &codes[j],
                                            &values[j]);
    for (int w = 16; w > 1; w /= 2)
        for (int i = 0; i < w / 2; i++) err[i] = err[2 * i] + err[2 * i + 1];
    return err[0];
}

/* Tile (row group g, block b) of a row-major x: 16 rows (nr real) x 16 columns (nc real). */
static inline void fos_tile16(const fos_params *p, const void *x, int dtype, int64_t rows, int64_t g, int64_t b) {
    const int64_t r0 = g * BLOCK, c0 = b * BLOCK;
    const int nr = rows - r0 < BLOCK ? (int)(rows - r0) : BLOCK;
    const int nc = p->cols - c0 < BLOCK ? (int)(p->cols - c0) : BLOCK;
    __m512 v[16];
    load_tile16(x, dtype, p->cols, r0, nr, c0, nc, v);
    __m512i m = _mm512_setzero_si512();
    for (int j = 0; j < 16; j++) m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_castps_si512(v[j]), _mm512_set1_epi32(0x7FFFFFFF)));
    const uint32_t abits = (uint32_t)_mm512_reduce_max_epu32(m);
    uint8_t sc;
    __m512i codes6[16], codes4[16], rb[16];
    __m512 values6[16], values4[16];
    const __m512i *codes = codes6;
    const __m512 *values = values6;
    if (abits >= 0x7F800000u) { /* NaN/Inf in the tile: the scale is NaN, every code 0 */
        sc = 0x7F;
        for (int j = 0; j < 16; j++) {
            codes6[j] = _mm512_setzero_si512();
            values6[j] = _mm512_set1_ps(NAN);
        }
    } else {
        for (int j = 0; j < 16; j++)
            rb[j] = p->stochastic ? random_bytes16((uint64_t)((r0 + j) * p->cols + c0), p->k1, p->k2)
                                  : _mm512_setzero_si512();
        float sf6 = (u2f(abits) / p->c_q) * p->s_enc;
        if (p->amax == 0.0f) sf6 = 0.0f;
        uint8_t sc6, sc4;
        const float e6 = fos_tile_candidate(p, v, rb, sf6, codes6, values6, &sc6);
        const float e4 = fos_tile_candidate(p, v, rb, sf6 * 1.5f, codes4, values4, &sc4);
        const int four = e4 < e6;
        sc = four ? sc4 : sc6;
        codes = four ? codes4 : codes6;
        values = four ? values4 : values6;
    }
    for (int j = 0; j < nr; j++) {
        const int64_t r = r0 + j;
        if (p->scales) p->scales[r * p->nblk + b] = sc;
        if (p->packed)
            store_packed16(p->packed + r * p->nblk * 8 + b * 8, codes[j]);
        else
            store_values16(p->out, p->out_kind, r * p->cols + c0, values[j], nc, 0);
    }
}
#endif

/*
 * x: row-major (R, C) = (rows, cols) of dtype; the logical tensor t is x, or x^T when transpose (then read in place:
 * AVX-512 loads 16x16 tiles and transposes them in registers; 1x16 blocks only). Blocks of 16 along t's rows,
 * tile_rows rows (1 or 16) sharing a scale; zero padding to whole blocks and tiles. signbits (tile_rows 1, K % 16 ==
 * 0) or NULL: each block is first replaced by its RHT16 (rht16_scalar / rht16_vec: the reference transform,
 * BF16-rounded). global_amax: the tensor amax; stochastic with keys (k1, k2): element (r, k) of t (M, K) takes
 * random_byte(r * K + k). out_kind OUT_PACKED: out (M, nblk * 8) codes (even element in the low nibble) and scales
 * (M, nblk) E4M3 bytes (a tile's scale on each of its rows); OUT_F32 / OUT_BF16: out (M, K) the values
 * value(q) x s_b, scales NULL.
 */
void fouroversix_quantize(const struct nvfp4_call *c) {
    const void *x = c->x;
    const int dtype = c->dtype, out_kind = c->out_kind, stochastic = c->stochastic, nthreads = c->nthreads;
    const int transpose = c->transpose;
    const int64_t R = c->rows, C = c->cols, tr = c->tile_rows;
    const int64_t rows = transpose ? C : R, cols = transpose ? R : C; /* the logical (M, K) */
    const int64_t nblk = (cols + BLOCK - 1) / BLOCK, groups = (rows + tr - 1) / tr;
    const uint32_t k1 = c->k1, k2 = c->k2, *signbits = c->signbits;
    const float amax = c->global_amax;
    const float c_enc = stochastic ? (float)(1536.0 * (16.0 / 17.0)) : 1536.0f; /* fp32(6 * 256 * adj) */
    const float c_q = stochastic ? (float)(6.0 * (16.0 / 17.0)) : 6.0f;         /* fp32(6 * adj) */
    float s_enc = c_enc / amax;
    if (s_enc > FLT_MAX) s_enc = FLT_MAX;
    const float s_dec = 1.0f / s_enc;
    const int global_bad = !isfinite(amax);
    uint8_t *packed = out_kind == OUT_PACKED ? (uint8_t *)c->out : NULL;
    uint8_t *scales = (uint8_t *)c->scales;
    const int n = (int)(tr * BLOCK);
#ifdef NVFP4_AVX512
    if ((tr == 1 || (tr == 16 && !transpose)) && !global_bad) {
        const fos_params p = {.amax = amax,
                              .c_enc = c_enc,
                              .c_q = c_q,
                              .s_enc = s_enc,
                              .s_dec = s_dec,
                              .stochastic = stochastic,
                              .out_kind = out_kind,
                              .k1 = k1,
                              .k2 = k2,
                              .signbits = signbits,
                              .sb = signbits ? _mm512_loadu_si512(signbits) : _mm512_setzero_si512(),
                              .cols = cols,
                              .nblk = nblk,
                              .packed = packed,
                              .scales = scales,
                              .out = c->out};
        if (tr == 16) {
#pragma omp parallel for num_threads(nthreads) schedule(static) if (rows * cols >= PAR_MIN_ELEMS)
            for (int64_t g = 0; g < groups; g++)
                for (int64_t b = 0; b < nblk; b++) fos_tile16(&p, x, dtype, rows, g, b);
        } else if (!transpose) {
#pragma omp parallel for num_threads(nthreads) schedule(static) if (rows * cols >= PAR_MIN_ELEMS)
            for (int64_t r = 0; r < rows; r++)
                for (int64_t b = 0; b < nblk; b++) {
                    const int64_t i0 = r * cols + b * BLOCK;
                    const int nb = cols - b * BLOCK < BLOCK ? (int)(cols - b * BLOCK) : BLOCK;
                    fos_block16(&p, _mm512_castsi512_ps(nb == BLOCK ? vload_bits(x, dtype, i0)
                                                                    : vload_bits_n(x, dtype, i0, nb)),
                                r, b, nb);
                }
        } else {
            const int64_t col_tiles = (C + BLOCK - 1) / BLOCK;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (rows * cols >= PAR_MIN_ELEMS)
            for (int64_t ct = 0; ct < col_tiles; ct++) {
                const int64_t c0 = ct * BLOCK;
                const int nc = C - c0 < BLOCK ? (int)(C - c0) : BLOCK;
                for (int64_t b = 0; b < nblk; b++) {
                    const int64_t r0 = b * BLOCK;
                    const int nr = R - r0 < BLOCK ? (int)(R - r0) : BLOCK;
                    __m512 v[16];
                    load_tile16(x, dtype, C, r0, nr, c0, nc, v);
                    transpose16(v); /* v[i]: column c0 + i of x, rows r0 .. r0+15 = block b of t's row c0 + i */
                    for (int i = 0; i < nc; i++) fos_block16(&p, v[i], c0 + i, b, nr);
                }
            }
        }
        return;
    }
#endif
#pragma omp parallel for num_threads(nthreads) schedule(static) if (rows * cols >= PAR_MIN_ELEMS)
    for (int64_t g = 0; g < groups; g++) {
        float v[FOS_MAX_TILE];
        uint8_t rb[FOS_MAX_TILE], codes6[FOS_MAX_TILE], codes4[FOS_MAX_TILE];
        for (int64_t b = 0; b < nblk; b++) {
            float bmax = 0.0f;
            int nan = 0;
            for (int64_t rr = 0; rr < tr; rr++) {
                const int64_t r = g * tr + rr;
                for (int64_t cc = 0; cc < BLOCK; cc++) {
                    const int64_t k = b * BLOCK + cc;
                    v[rr * BLOCK + cc] =
                        r < rows && k < cols ? load_f32(x, dtype, transpose ? k * C + r : r * cols + k) : 0.0f;
                }
                if (signbits) rht16_scalar(v + rr * BLOCK, signbits, v + rr * BLOCK); /* in place: it copies first */
                for (int64_t cc = 0; cc < BLOCK; cc++) {
                    const int j = (int)(rr * BLOCK + cc);
                    const float e = v[j];
                    if (isnan(e)) nan = 1;
                    if (fabsf(e) > bmax) bmax = fabsf(e);
                    if (stochastic) rb[j] = (uint8_t)random_byte((uint64_t)(r * cols + b * BLOCK + cc), k1, k2);
                }
            }
            const int bad = global_bad || nan || isinf(bmax);
            float sf6 = (bmax / c_q) * s_enc;
            if (amax == 0.0f) sf6 = 0.0f;
            uint8_t sc6, sc4;
            float s6, s4;
            const float e6 = fos_candidate(v, rb, n, sf6, bad, s_dec, amax, c_enc, stochastic, codes6, &sc6, &s6);
            const float e4 = fos_candidate(v, rb, n, sf6 * 1.5f, bad, s_dec, amax, c_enc, stochastic, codes4, &sc4, &s4);
            const int four = e4 < e6;
            const uint8_t *codes = four ? codes4 : codes6;
            const uint8_t sc = four ? sc4 : sc6;
            const float s = four ? s4 : s6;
            for (int64_t rr = 0; rr < tr; rr++) {
                const int64_t r = g * tr + rr;
                if (r >= rows) break;
                if (scales) scales[r * nblk + b] = sc;
                const uint8_t *row = codes + rr * BLOCK;
                if (packed) {
                    for (int cc = 0; cc < BLOCK; cc += 2)
                        packed[r * nblk * 8 + b * 8 + cc / 2] = (uint8_t)(row[cc] | (row[cc + 1] << 4));
                } else {
                    for (int64_t cc = 0; cc < BLOCK && b * BLOCK + cc < cols; cc++)
                        store_value(c->out, out_kind, r * cols + b * BLOCK + cc, e2m1_table[row[cc]] * s);
                }
            }
        }
    }
}
