/*
 * NVFP4 of t = x^T for a row-major x, without a transposed copy: one 16x16 tile of x at a time (tile_t), in which
 * a block of t is one lane across 16 registers, staged per work item and copied out in whole cache lines by the
 * driver run_tiles_t. Relies on params.h (qparams, block_scale), scalar.h (the portable path) and avx512.h (the
 * vector path, transposed-layout helpers).
 */
#ifndef NVFP4_CSRC_NVFP4_TILES_H
#define NVFP4_CSRC_NVFP4_TILES_H

#include "avx512.h"
#include "common.h"
#include "params.h"
#include "scalar.h"

/* ------------------------------------------------------------------------------------------------------------ */
/* The transposed path: blocks along the columns of x, i.e. the rows of x^T.                                    */
/* ------------------------------------------------------------------------------------------------------------ */

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
                                                               _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28,
                                                                                 13, 29, 14, 30, 15, 31),
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
        for (int j = 0; j < 16; j++) t[l][j] = (l < nc && j < nr) ? load_f32(x, dtype, (r0 + j) * C + c0 + l) : 0.0f;
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
            const uint32_t q = p->stochastic ? e2m1_sr(v, random_byte(base + (uint64_t)j, p->k1, p->k2)) : e2m1_rn(v);
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
                copy_rows(stage + stage_bytes, sstride, scales + pc0 * nblk + nb0, nblk, pc1 - pc0, (size_t)(nb1 - nb0),
                          0);
        }
        free(stage);
#ifdef NVFP4_AVX512
        if (nt) _mm_sfence(); /* order the streaming stores before the results are used */
#endif
    }
    return failed ? -1 : 0;
}

#endif /* NVFP4_CSRC_NVFP4_TILES_H */
