/*
 * The build's identity, for cpu.py's checks: the ABI version, the vector width, and the layout of struct
 * nvfp4_call as this compiler lays it out (tests/kernels/test_cpu_abi.py compares it with cpu.py's KernelCall).
 * Relies on call.h and common.h (NVFP4_AVX512, <stddef.h>).
 */
#include "call.h"
#include "common.h"

/* The fields of struct nvfp4_call, in declaration order (keep in step with call.h). */
/* clang-format off */
#define NVFP4_CALL_FIELDS(F)                                                                       \
    F(x) F(out) F(scales) F(signbits)                                        /* pointers */        \
    F(rows) F(cols) F(stride_r) F(stride_k) F(tile_rows)                     /* int64_t */         \
    F(global_amax) F(k1) F(k2)                                               /* float, uint32_t */ \
    F(dtype) F(out_kind) F(transpose) F(stochastic) F(ceil_rule) F(nthreads) /* int32_t */
/* clang-format on */

int nvfp4_abi_version(void) { return NVFP4_ABI_VERSION; }

int nvfp4_simd_width(void) {
#ifdef NVFP4_AVX512
    return 16;
#else
    return 1;
#endif
}

/* out[0] = sizeof(struct nvfp4_call), then offsetof and sizeof of each field in NVFP4_CALL_FIELDS order
 * (out must hold 1 + 2 x the number of fields); returns the number of fields. */
int64_t nvfp4_call_layout(int64_t *out) {
    int64_t n = 0;
    out[0] = (int64_t)sizeof(struct nvfp4_call);
#define NVFP4_LAYOUT_FIELD(f)                                      \
    out[1 + 2 * n] = (int64_t)offsetof(struct nvfp4_call, f);      \
    out[2 + 2 * n] = (int64_t)sizeof(((struct nvfp4_call *)0)->f); \
    n++;
    NVFP4_CALL_FIELDS(NVFP4_LAYOUT_FIELD)
#undef NVFP4_LAYOUT_FIELD
    return n;
}

/* The names of the fields in NVFP4_CALL_FIELDS order, space-separated. */
const char *nvfp4_call_fields(void) {
#define NVFP4_FIELD_NAME(f) #f " "
    return NVFP4_CALL_FIELDS(NVFP4_FIELD_NAME);
#undef NVFP4_FIELD_NAME
}
