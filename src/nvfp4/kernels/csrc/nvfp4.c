/*
 * The exported NVFP4 entry points (declared in call.h; cpu.py is the Python side): the tensor amax with and
 * without the RHT16, the quantization (row or transposed path, packed codes or values), the decoded values of
 * packed codes, and probes of the random bytes and the E4M3 rounding for the tests. Relies on nvfp4_rows.h
 * (run_rows), nvfp4_tiles.h (run_tiles_t) and the helpers below them.
 */
#include "avx512.h"
#include "call.h"
#include "common.h"
#include "nvfp4_rows.h"
#include "nvfp4_tiles.h"
#include "params.h"
#include "scalar.h"

/* max |x| over the rows * cols elements of x (dtype); NaN if any element is NaN (as torch's amax). */
float nvfp4_amax(const struct nvfp4_call *c) {
    const void *x = c->x;
    const int dtype = c->dtype, nthreads = c->nthreads;
    const int64_t n = c->rows * c->cols;
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
 * max |RHT(x)| (BF16-rounded) over a row-major (rows, cols) x (dtype), RHT16 along the rows (signbits,
 * cols % 16 == 0); NaN if any NaN.
 * x 1/4 and the BF16 rounding are monotone and symmetric, so they are applied once, to the max of the raw
 * butterfly outputs: max_i bf16(|y_i|) == bf16(max_i |y_i|) (the x 1/4 is in rht16_butterfly).
 */
float nvfp4_rht_amax(const struct nvfp4_call *c) {
    const void *x = c->x;
    const int dtype = c->dtype, nthreads = c->nthreads;
    const int64_t rows = c->rows, cols = c->cols;
    const uint32_t *signbits = c->signbits;
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

/*
 * max |RHT(t)| (BF16-rounded) of t = x^T, the RHT16 (signbits) running along the ROWS of a row-major (rows, cols)
 * x (dtype, rows % 16 == 0); NaN if any NaN. The BF16 rounding is applied once at the end (see nvfp4_rht_amax).
 */
float nvfp4_rht_amax_t(const struct nvfp4_call *c) {
    const void *x = c->x;
    const int dtype = c->dtype, nthreads = c->nthreads;
    const int64_t rows = c->rows, cols = c->cols;
    const uint32_t *signbits = c->signbits;
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
 * NVFP4 quantization (the one entry point). x: a row-major (rows, cols) tensor (dtype). transpose = 0: quantize x
 * along its rows (blocks of 16 consecutive elements of a row), transpose = 1: quantize t = x^T (shape (cols, rows))
 * along ITS rows, reading x in place. signbits (16 words, 0 or 0x80000000) = an RHT16 along the blocks' dimension
 * first (that dimension must be a multiple of 16), NULL = none. tile_rows: 1 or 16 (transpose = 0: any positive
 * value). out_kind: OUT_PACKED (out (M, nblk*8) codes) or OUT_F32 / OUT_BF16 (out (M, K) values value(q) x s_b),
 * with (M, K) the logical shape; scales (M, nblk) E4M3 bytes, or NULL to skip them. global_amax: the tensor amax;
 * stochastic: SR with keys k1, k2, at the indices of the logical (M, K) tensor.
 * Returns 0, or -1 if scratch memory could not be allocated.
 */
int nvfp4_quantize(const struct nvfp4_call *c) {
    const void *x = c->x;
    const int dtype = c->dtype, transpose = c->transpose, out_kind = c->out_kind, nthreads = c->nthreads;
    const int64_t rows = c->rows, cols = c->cols, tile_rows = c->tile_rows;
    const uint32_t *signbits = c->signbits;
    void *out = c->out;
    uint8_t *scales = (uint8_t *)c->scales;
    const qparams p = make_params(c->global_amax, c->stochastic, c->k1, c->k2);
    const int64_t out_bytes = rows * cols * (out_kind == OUT_PACKED ? 1 : out_kind == OUT_BF16 ? 4 : 8) / 2;
    const int nt = out_bytes >= NT_MIN_BYTES;
    if (transpose)
        return run_tiles_t(x, dtype, rows, cols, signbits, &p, tile_rows == 16, out_kind, out, scales, nt, nthreads);
    return run_rows(x, dtype, rows, cols, signbits, &p, tile_rows, out_kind, out, scales, nt, nthreads);
}

/* value(code) x block scale for every (padded) element of x = packed codes (rows, nblk*8) with scales (rows, nblk)
 * E4M3 bytes, cols = nblk*16: out (rows, cols) as FP32 or BF16 (out_kind; exact either way). */
void nvfp4_scaled_values(const struct nvfp4_call *c) {
    const uint8_t *packed = (const uint8_t *)c->x, *scales = (const uint8_t *)c->scales;
    const int64_t rows = c->rows, nblk = c->cols / BLOCK;
    const int out_dtype = c->out_kind == OUT_BF16 ? DT_BF16 : DT_F32, nthreads = c->nthreads;
    void *out = c->out;
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

/* ------------------------------------------------------------------------------------------------------------ */
/* Probes for the tests.                                                                                        */
/* ------------------------------------------------------------------------------------------------------------ */

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
    _mm_storeu_si128((__m128i *)out, _mm512_cvtepi32_epi8(
                                         random_bytes16_at(_mm512_loadu_si512(lo), _mm512_loadu_si512(hi), j, k1, k2)));
#else
    for (int l = 0; l < 16; l++) out[l] = (uint8_t)random_byte(base[l] + j, k1, k2);
#endif
}

/* E4M3 RNE-satfinite of n floats (exported for the exhaustive conversion test). */
void nvfp4_e4m3_encode(const float *x, int64_t n, uint8_t *out) {
    float r;
    for (int64_t i = 0; i < n; i++) out[i] = e4m3_rne_satfinite(x[i], &r);
}
