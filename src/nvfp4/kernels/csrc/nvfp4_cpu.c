/*
 * NVFP4 / MXFP4 / FP8 / MXFP8 quantization kernels for the CPU backend: the one translation unit that
 * nvfp4/kernels/cpu.py compiles (with -I csrc) into a shared library and loads through ctypes. The code lives in
 * the parts included below, one concern each; the build cache key hashes every file of csrc/.
 *
 * Every result must equal the plain-PyTorch reference (nvfp4/formats/) bit for bit, so:
 *   - all arithmetic is FP32 in the order of SPEC §2; divisions are true divisions;
 *   - build WITHOUT -ffast-math and WITH -ffp-contract=off (a fused multiply-add rounds once, not twice);
 *   - subnormals must not be flushed (1/S_enc is subnormal for an all-zero tensor).
 * The AVX-512 path is used when the compiler targets it (-march=native on an AVX-512 CPU); the portable scalar
 * path (also used for row tails) computes the same bits. Define NVFP4_PORTABLE to force the scalar path.
 *
 * Block amaxes are computed as an integer max over |x| bit patterns: equal to the float max for finite values,
 * and >= 0x7F800000 (non-finite) as soon as the block holds a NaN or an Inf, which is all the reference needs.
 *
 * Two NVFP4 drivers share the arithmetic: run_rows (blocks along the rows of the input) and run_tiles_t (blocks
 * along its columns, i.e. quantizing x^T without a transposed copy, from 16x16 tiles). Both can write packed codes
 * + scales, or directly the GEMM operand value(q) x s_b in FP32 or BF16 ("fake quantization": no packed
 * intermediate).
 */

/* Declarations and shared definitions. */
#include "common.h" /* build configuration (NVFP4_AVX512), BLOCK, DT_* / OUT_* codes, thresholds */
#include "call.h"   /* the ABI: struct nvfp4_call and the exported functions */

/* Internal helpers (static), in dependency order. */
#include "scalar.h"      /* scalar numerics: E4M3 / BF16 / E2M1 rounding, random bytes, RHT16 butterfly */
#include "params.h"      /* NVFP4 tensor parameters and the block scale */
#include "avx512.h"      /* AVX-512 helpers, row and transposed layouts (empty without NVFP4_AVX512) */
#include "nvfp4_rows.h"  /* NVFP4 along the rows: run_rows */
#include "nvfp4_tiles.h" /* NVFP4 along the columns (x^T): run_tiles_t */

/* The exported entry points. */
#include "abi.c"   /* ABI version, SIMD width, struct layout probe */
#include "nvfp4.c" /* NVFP4 amax, quantize, scaled values, test probes */
#include "mxfp4.c" /* MXFP4 quantize */
#include "fp8.c"   /* blockwise FP8 quantize */
#include "mxfp8.c" /* MXFP8 quantize */
#include "fouroversix.c" /* NVFP4 with Four Over Six block scales */
