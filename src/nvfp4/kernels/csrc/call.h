/*
 * The ABI between the kernel and Python (nvfp4/kernels/cpu.py): the argument struct of the kernel entry points
 * and the declarations of every exported function. Relies on <stdint.h> only.
 *
 * cpu.py's KernelCall (a ctypes.Structure) mirrors struct nvfp4_call field for field, in the same order;
 * tests/kernels/test_cpu_abi.py compares the two layouts through nvfp4_call_layout (abi.c). Any change to the
 * struct or to a signature must bump NVFP4_ABI_VERSION here and _ABI_VERSION in cpu.py.
 */
#ifndef NVFP4_CSRC_CALL_H
#define NVFP4_CSRC_CALL_H

#include <stdint.h>

#define NVFP4_ABI_VERSION 6

/*
 * The arguments of a kernel entry point, passed by pointer. Each kernel reads the fields it documents and ignores
 * the others (Python leaves them 0). Pointers first, then the 64-bit, then the 32-bit fields: no padding but the
 * struct's tail.
 */
struct nvfp4_call {
    const void *x;              /* the input, FP32 or BF16 (dtype); nvfp4_scaled_values: the packed codes */
    void *out;                  /* packed codes (OUT_PACKED), or values value(q) x s_b as FP32 / BF16 */
    void *scales;               /* scales (E4M3 / E8M0 bytes; FP8: FP32), or NULL to skip them */
    const uint32_t *signbits;   /* RHT sign words (0 or 0x80000000) along the blocks' dimension, or NULL: no RHT */
    int64_t rows, cols;         /* NVFP4: x's row-major shape; MXFP4 / FP8: the logical (M, K) shape */
    int64_t stride_r, stride_k; /* MXFP4 / FP8: element (r, k) of the logical tensor is x[r*stride_r + k*stride_k] */
    int64_t tile_rows;          /* NVFP4: rows sharing a block amax (1 or 16); FP8: rows sharing a scale (1, 128) */
    float global_amax;          /* NVFP4: the tensor amax */
    uint32_t k1, k2;            /* stochastic rounding: the stream keys (nvfp4/formats/rng.py) */
    int32_t dtype;              /* DT_F32 / DT_BF16: the element type of x */
    int32_t out_kind;           /* OUT_PACKED / OUT_F32 / OUT_BF16: what out holds */
    int32_t transpose;          /* NVFP4: quantize x^T (blocks along x's columns), reading x in place */
    int32_t stochastic;         /* stochastic rounding (k1, k2) instead of round-to-nearest-even */
    int32_t ceil_rule;          /* MXFP4: the "ceil" scale rule instead of "floor" */
    int32_t nthreads;           /* OpenMP threads */
};

/* abi.c: the build's identity. */
int nvfp4_abi_version(void);
int nvfp4_simd_width(void);
int64_t nvfp4_call_layout(int64_t *out);
const char *nvfp4_call_fields(void);

/* nvfp4.c: NVFP4 (16-element blocks, E4M3 scales, one FP32 tensor scale). */
float nvfp4_amax(const struct nvfp4_call *c);
float nvfp4_rht_amax(const struct nvfp4_call *c);
float nvfp4_rht_amax_t(const struct nvfp4_call *c);
int nvfp4_quantize(const struct nvfp4_call *c);
void nvfp4_scaled_values(const struct nvfp4_call *c);
/* nvfp4.c: probes for the tests (plain arguments: they are not kernels). */
void nvfp4_random_bytes(uint64_t i0, int64_t n, uint32_t k1, uint32_t k2, uint8_t *out);
void nvfp4_random_bytes_lanes(const uint64_t *base, uint32_t j, uint32_t k1, uint32_t k2, uint8_t *out);
void nvfp4_e4m3_encode(const float *x, int64_t n, uint8_t *out);

/* mxfp4.c, fp8.c, mxfp8.c: the other formats. */
void mxfp4_quantize(const struct nvfp4_call *c);
int fp8_quantize(const struct nvfp4_call *c);
void mxfp8_quantize(const struct nvfp4_call *c);
/* fouroversix.c: NVFP4 with adaptive 4/6 block scales (row-major x; tile_rows 1 or 16). */
void fouroversix_quantize(const struct nvfp4_call *c);

#endif /* NVFP4_CSRC_CALL_H */
