/*
 * NVFP4 along the rows of a row-major x: the row-level building blocks (block amaxes, scales, codes or values,
 * the RHT of a row) and the driver run_rows, which quantizes groups of tile_rows rows in parallel. Relies on
 * params.h (qparams, block_scale), scalar.h (the portable path) and avx512.h (the vector path).
 */
#ifndef NVFP4_CSRC_NVFP4_ROWS_H
#define NVFP4_CSRC_NVFP4_ROWS_H

#include "avx512.h"
#include "common.h"
#include "params.h"
#include "scalar.h"

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
            const uint32_t q = p->stochastic ? e2m1_sr(v, random_byte(idx0 + (uint64_t)c, p->k1, p->k2)) : e2m1_rn(v);
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
/* The row path: blocks along the rows of x.                                                                    */
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
                    quantize_row(src, sdt, cols, nblk, enc, p, (uint64_t)(r * cols), (uint8_t *)out + r * nblk * 8, pf,
                                 pf_bytes);
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

#endif /* NVFP4_CSRC_NVFP4_ROWS_H */
