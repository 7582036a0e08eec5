"""Four Over Six: NVFP4 with an adaptive block scale (Cook et al., ``mit-han-lab/fouroversix``; TE PR #2972).

E2M1's grid has no value between 4 and 6, so a block whose largest element maps to 6 loses most of its resolution
near the top. Four Over Six encodes each block twice, with its largest element mapped to 6 and to 4, and keeps the
candidate with the lower squared error. The tensor scale targets an E4M3 block scale of 256 instead of 448, leaving
room for the 4-candidate's 1.5x larger scale. Plain PyTorch, the oracle: it imports nothing fast.

The arithmetic follows the ``fouroversix`` package's PyTorch reference (``quantize_to_fp4(scale_rule=mse)``), all
in FP32 and in this order (``adj`` = 1 for round-to-nearest, 16/17 for stochastic rounding: the SR headroom that
keeps a scaled value below 6, so SR never saturates):

    C       = fp32(6 * 256 * adj)
    S_enc   = min(C / amax, FLT_MAX)            amax == 0: every scale is 0
    S_dec   = 1 / S_enc
    per block (1x16, or a 16x16 tile for weights), amax_b = max |x_i|:
      sf6   = (amax_b / fp32(6 * adj)) * S_enc,  sf4 = sf6 * 1.5
      s     = e4m3_rne(sf6) or e4m3_rne(sf4)
      v_i   = x_i * (1 / (S_dec * s))            (0 where s == 0)
      q_i   = e2m1(clamp(v_i, -6, 6))            RNE, or SR (SPEC §3) with the same random bits for both candidates
      err   = sum_i (((value(q_i) * s) * amax) / C - x_i)^2
    keep s4 where err4 < err6 (a tie keeps 6).

Two choices are ours and documented: the error is summed pairwise (adjacent pairs, then pairs of sums, in the
block's row-major order), so every backend can reproduce the same bits (the package uses ``torch.sum``, whose order
is the machine's; they differ only where two candidates' errors tie to the last bit); and scaled values are clamped
to ±6 before rounding (SPEC §2), where the package's rounding would produce 8, which E2M1 cannot encode (only when
an E4M3 scale is subnormal). Non-finite input gives NaN scales, as NVFP4's reference does.

The dequantized operand is value(q) · s · S_dec, exact in BF16 before S_dec as in NVFP4, so the emulated GEMM is
unchanged; only the tensor scale differs (``decode_scale``).
"""

from __future__ import annotations

import torch

from nvfp4.formats import nvfp4
from nvfp4.formats.e2m1 import E2M1_MAX, e2m1_round_nearest, e2m1_round_stochastic, e2m1_values, pack_codes
from nvfp4.formats.nvfp4 import BLOCK, _pad_to_blocks, fp32_reciprocal
from nvfp4.formats.rng import random_bytes

SCALE_TARGET = 256.0  # the E4M3 block scale the tensor scale maps amax to (NVFP4: 448)
SR_HEADROOM = 16.0 / 17.0  # the package's "stochastic_unbiased" adjustment
FOUR_OVER_SIX = 1.5  # the 4-candidate's scale: amax_b / 4 = (amax_b / 6) * 1.5


def _fp32(value: float) -> float:
    """A Python float rounded to FP32 (a tensor times it is then an exact-constant FP32 product)."""
    return torch.tensor(value, dtype=torch.float32).item()


def encode_constant(stochastic: bool) -> float:
    """C = fp32(6 · 256 · adj): S_enc = C / amax."""
    return _fp32(E2M1_MAX * SCALE_TARGET * (SR_HEADROOM if stochastic else 1.0))


def tensor_scale_numerator(four_over_six: bool, stochastic: bool) -> float:
    """C of an NVFP4 tensor scale S_enc = C / amax: Four Over Six's, or NVFP4's 448·6 (SPEC §2)."""
    return encode_constant(stochastic) if four_over_six else nvfp4.ENCODE_NUMERATOR


def global_encode_scale(amax: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """S_enc = min(C / amax, FLT_MAX) in FP32 (a true division, never a reciprocal-multiply): NVFP4's with C."""
    return nvfp4.global_encode_scale(amax.to(torch.float32), encode_constant(stochastic))


def global_decode_scale(amax: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """S_dec = 1 / S_enc: the tensor-level factor applied after the GEMM."""
    return nvfp4.global_decode_scale(amax, encode_constant(stochastic))


def _pairwise_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim (a power of two) as a tree of adjacent pairs: one order every backend can follow."""
    while t.shape[-1] > 1:
        t = t[..., 0::2] + t[..., 1::2]
    return t[..., 0]


def _tiles(t: torch.Tensor, tile_rows: int) -> torch.Tensor:
    """(prow, pcol) -> (prow/tile_rows, nblk, tile_rows*16): each block or tile's elements in row-major order."""
    prow, pcol = t.shape
    return t.view(prow // tile_rows, tile_rows, pcol // BLOCK, BLOCK).permute(0, 2, 1, 3).flatten(2)


def _untiles(t: torch.Tensor, tile_rows: int) -> torch.Tensor:
    r, nblk, _ = t.shape
    return t.view(r, nblk, tile_rows, BLOCK).permute(0, 2, 1, 3).reshape(r * tile_rows, nblk * BLOCK)


def reference_quantize_4over6_2d(
    x2d: torch.Tensor, global_amax: torch.Tensor, tile_rows: int, stochastic: bool, seed: int, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Over Six on a 2-D tensor: (packed uint8 (M, ceil(K/16)*8), scales e4m3 (M, ceil(K/16))), trimmed to M
    rows, in NVFP4's layout (a tile's scale repeated over its rows). SR element index row*K + col, as NVFP4's."""
    rows, cols = x2d.shape
    xp = _pad_to_blocks(x2d.to(torch.float32), tile_rows)
    prow, pcol = xp.shape
    amax = global_amax.to(torch.float32).reshape(())  # on x2d's device: no copy, no sync (a GPU step never waits)
    c_enc = encode_constant(stochastic)
    c_q = _fp32(E2M1_MAX * (SR_HEADROOM if stochastic else 1.0))

    blocks = _tiles(xp, tile_rows)  # (R, nblk, n)
    block_amax = blocks.abs().amax(dim=-1)
    s_enc = global_encode_scale(amax, stochastic)
    s_dec = fp32_reciprocal(s_enc)
    sf6 = (block_amax / torch.full_like(block_amax, c_q)) * s_enc
    sf6 = torch.where(amax == 0, torch.zeros_like(sf6), sf6)
    bad = ~torch.isfinite(block_amax) | ~torch.isfinite(amax)
    if stochastic:
        r = torch.arange(prow, dtype=torch.int64, device=xp.device).unsqueeze(1)
        c = torch.arange(pcol, dtype=torch.int64, device=xp.device).unsqueeze(0)
        rbytes = _tiles(random_bytes(r * cols + c, seed, offset), tile_rows)

    candidates = []
    for sf in (sf6, sf6 * FOUR_OVER_SIX):
        scale = torch.clamp(sf, max=448.0).to(torch.float8_e4m3fn).to(torch.float32)
        scale = torch.where(bad, float("nan"), scale)
        enc = fp32_reciprocal(s_dec * scale).unsqueeze(-1)
        v = torch.where(scale.unsqueeze(-1) != 0, blocks * enc, torch.zeros_like(blocks))
        v = torch.clamp(v, -E2M1_MAX, E2M1_MAX)
        codes = e2m1_round_stochastic(v, rbytes) if stochastic else e2m1_round_nearest(v)
        deq = ((e2m1_values(codes, torch.float32) * scale.unsqueeze(-1)) * amax) / torch.full_like(blocks, c_enc)
        err = _pairwise_sum((deq - blocks) ** 2)
        candidates.append((codes, scale, err))
    (codes6, scale6, err6), (codes4, scale4, err4) = candidates
    four = err4 < err6
    codes = torch.where(four.unsqueeze(-1), codes4, codes6)
    scales = torch.where(four, scale4, scale6).to(torch.float8_e4m3fn)
    packed = pack_codes(_untiles(codes, tile_rows))
    return packed[:rows], scales.repeat_interleave(tile_rows, dim=0)[:rows]
