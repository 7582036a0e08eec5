/*
 * NVFP4's per-tensor quantization parameters (qparams: the tensor scale and the SR keys) and the scale of one
 * 16-element block from its |x| max (block_scale). Relies on scalar.h (E4M3 rounding, bit casts).
 */
#ifndef NVFP4_CSRC_PARAMS_H
#define NVFP4_CSRC_PARAMS_H

#include "common.h"
#include "scalar.h"

/* ------------------------------------------------------------------------------------------------------------ */
/* Quantization parameters shared by all blocks of a tensor (SPEC §2).                                          */
/* ------------------------------------------------------------------------------------------------------------ */

typedef struct {
    float s_dec;    /* 1 / S_enc */
    float k;        /* S_enc * (1/6), multiplied by the block amax */
    int global_bad; /* the tensor amax is NaN/Inf: every block gets the NaN scale */
    int stochastic;
    uint32_t k1, k2; /* SR stream keys */
} qparams;

static qparams make_params(float global_amax, int stochastic, uint32_t k1, uint32_t k2) {
    qparams p;
    float s_enc = 2688.0f / global_amax; /* 448 * 6 */
    if (s_enc > FLT_MAX) s_enc = FLT_MAX;
    p.s_dec = 1.0f / s_enc;
    p.k = s_enc * (float)(1.0 / 6.0);
    p.global_bad = !isfinite(global_amax);
    p.stochastic = stochastic;
    p.k1 = k1;
    p.k2 = k2;
    return p;
}

/* Scale byte, encode factor and decoded scale (float(s_b)) of one block from its |x| max bits. */
static inline uint8_t block_scale(uint32_t abits, const qparams *p, float *enc, float *sval) {
    float sr, e, sf;
    uint8_t code;
    if (p->global_bad || abits >= 0x7F800000u) {
        *enc = NAN; /* every code of the block becomes 0 */
        *sval = NAN;
        return 0x7F;
    }
    sf = u2f(abits) * p->k;
    if (sf > 448.0f) sf = 448.0f;
    code = e4m3_rne_satfinite(sf, &sr);
    e = 1.0f / (sr * p->s_dec); /* from the ROUNDED scale, a true division */
    if (e > FLT_MAX) e = FLT_MAX;
    *enc = e;
    *sval = sr;
    return code;
}

#endif /* NVFP4_CSRC_PARAMS_H */
