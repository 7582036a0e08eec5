/*
 * Build configuration and constants shared by every part of the CPU kernel.
 *
 * NVFP4_AVX512 is defined when the compiler targets AVX-512 F/BW/VL/DQ (-march=native on such a CPU) and
 * NVFP4_PORTABLE is not: the parts then use their vector paths, which compute the same bits as the scalar ones.
 * Relies on the C standard library only (and <immintrin.h> for the AVX-512 path).
 */
#ifndef NVFP4_CSRC_COMMON_H
#define NVFP4_CSRC_COMMON_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
     !defined(NVFP4_PORTABLE))
#define NVFP4_AVX512 1
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
#define NVFP4_UNROLL _Pragma("GCC unroll 16")
#else
#define NVFP4_UNROLL
#endif
#define BLOCK 16

enum { DT_F32 = 0, DT_BF16 = 1 };
/* What a quantization writes: packed codes + scales, or the values value(q) x s_b (FP32 or BF16). */
enum { OUT_PACKED = 0, OUT_F32 = 1, OUT_BF16 = 2 };

/* Parallelise only when there is enough work to pay for waking the thread team. */
#define PAR_MIN_ELEMS (1 << 15)
/* Outputs at least this large (well beyond L2) are written with streaming stores where the layout allows: they
 * skip the read-for-ownership of every output line, and the data would not stay in cache for the GEMM anyway. */
#define NT_MIN_BYTES (4 << 20)

#endif /* NVFP4_CSRC_COMMON_H */
