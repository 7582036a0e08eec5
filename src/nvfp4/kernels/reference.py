"""The oracle as a backend: plain PyTorch, any device. Fast backends copy this interface."""

from __future__ import annotations

import functools

import torch

from nvfp4.formats.e2m1 import e2m1_values, unpack_codes
from nvfp4.formats.fp8 import quantize_fp8_blockwise
from nvfp4.formats.mxfp4 import MXFP4Tensor, reference_quantize_mxfp4_2d
from nvfp4.formats.nvfp4 import BLOCK, reference_quantize_nvfp4_2d, tensor_amax
from nvfp4.hadamard import random_hadamard_transform


class ReferenceBackend:
    name = "reference"

    @classmethod
    def is_available(cls, device: torch.device) -> bool:
        return True

    @classmethod
    @functools.cache
    def instance(cls) -> ReferenceBackend:
        return cls()

    def amax(self, x2d: torch.Tensor) -> torch.Tensor:
        """max|x| as an FP32 0-d tensor (NaN if any NaN)."""
        return tensor_amax(x2d)

    def quantize_nvfp4(
        self,
        x2d: torch.Tensor,
        global_amax: torch.Tensor,
        tile_rows: int,
        stochastic: bool,
        seed: int,
        offset: int,
        *,
        transpose: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(packed uint8 (M, ceil(K/16)*8), scales e4m3 (M, ceil(K/16))) of t = x2d, or of t = x2d.t() if transpose.

        (M, K) is t's shape; the SR element index is row*K + col of t, as if ``t.contiguous()`` were quantized.
        """
        if transpose:
            x2d = x2d.t().contiguous()
        return reference_quantize_nvfp4_2d(x2d, global_amax, tile_rows, stochastic, seed, offset)

    def rht_quantize_nvfp4(
        self,
        x2d: torch.Tensor,
        signs: torch.Tensor,
        global_amax: torch.Tensor | None,
        stochastic: bool,
        seed: int,
        offset: int,
        *,
        transpose: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RHT (size len(signs)) along the last dim of t = x2d (or x2d.t() if transpose), BF16-rounded, then 1x16 NVFP4.

        K must be a multiple of the Hadamard size. The amax is of the TRANSFORMED tensor unless
        given. Returns (packed, scales, amax used).
        """
        if transpose:
            x2d = x2d.t().contiguous()
        h = random_hadamard_transform(x2d, dim=-1, size=signs.numel(), signs=signs)
        amax = tensor_amax(h) if global_amax is None else global_amax
        packed, scales = reference_quantize_nvfp4_2d(h, amax, 1, stochastic, seed, offset)
        return packed, scales, amax

    def fake_quantize_nvfp4(
        self,
        x2d: torch.Tensor,
        global_amax: torch.Tensor | None,
        tile_rows: int,
        stochastic: bool,
        seed: int,
        offset: int,
        *,
        transpose: bool = False,
        rht_signs: torch.Tensor | None = None,
        out_dtype: torch.dtype = torch.bfloat16,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize and return the GEMM operand directly: (values (M, K) in out_dtype, amax FP32 0-d).

        t = x2d.t() if transpose else x2d, of shape (M, K); with rht_signs (16 × ±1), t ← RHT16(t) along K (BF16),
        which needs K % 16 == 0. amax = global_amax, or max|t| (after the RHT) if None. values = value(q)·s_b of
        quantizing t (tile_rows 1 or 16, RN or SR with element index row*K + col of t): exactly
        ``scaled_values(*quantize_nvfp4(t.contiguous(), amax, ...), out_dtype)[:, :K]``. This composition is the
        oracle; fast backends do it in one pass after the amax pass, without the transposed copy.
        """
        t = x2d.t() if transpose else x2d
        cols = t.shape[1]
        if rht_signs is not None:
            if cols % BLOCK:
                raise ValueError(f"the RHT needs K % 16 == 0 (K = {cols}); zero-pad the tensor first")
            t = random_hadamard_transform(t, dim=-1, size=16, signs=rht_signs)
        t = t.contiguous()
        if global_amax is None:
            amax = tensor_amax(t)
        else:
            amax = torch.as_tensor(global_amax).to(device=t.device, dtype=torch.float32).reshape(())
        packed, scales = reference_quantize_nvfp4_2d(t, amax, tile_rows, stochastic, seed, offset)
        return self.scaled_values(packed, scales, out_dtype)[:, :cols], amax

    def scaled_values(
        self, packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
    ) -> torch.Tensor:
        """value(q) × block scale for every (padded) element: (M, ceil(K/16)*16), exact in BF16."""
        values = e2m1_values(unpack_codes(packed), torch.float32)
        return (values * scales.to(torch.float32).repeat_interleave(BLOCK, dim=1)).to(dtype)

    def quantize_mxfp4(
        self, x2d: torch.Tensor, stochastic: bool, seed: int, offset: int, *, scale_rule: str = "ceil",
        transpose: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(packed uint8 (M, ceil(K/32)*16), scales float8_e8m0fnu (M, ceil(K/32))) of t = x2d (or x2d.t())."""
        if transpose:
            x2d = x2d.t().contiguous()
        return reference_quantize_mxfp4_2d(x2d, stochastic, seed, offset, scale_rule)

    def fake_quantize_mxfp4(
        self,
        x2d: torch.Tensor,
        stochastic: bool,
        seed: int,
        offset: int,
        *,
        scale_rule: str = "ceil",
        transpose: bool = False,
        rht_signs: torch.Tensor | None = None,
        out_dtype: torch.dtype = torch.bfloat16,
    ) -> torch.Tensor:
        """The MXFP4 GEMM operand value(q)·2^e (M, K) of t = x2d (or x2d.t()), RHT'd along K first if rht_signs.

        Exactly ``MXFP4Tensor(*quantize_mxfp4(RHT(t)), ...).scaled_values(out_dtype)`` with the RHT of size
        len(rht_signs) (K must be a multiple of it); the SR element index is row*K + col of t.
        """
        t = x2d.t() if transpose else x2d
        if rht_signs is not None:
            size = int(rht_signs.numel())
            if t.shape[1] % size:
                raise ValueError(f"the RHT needs K % {size} == 0 (K = {t.shape[1]}); zero-pad the tensor first")
            t = random_hadamard_transform(t, dim=-1, size=size, signs=rht_signs)
        packed, scales = reference_quantize_mxfp4_2d(t.contiguous(), stochastic, seed, offset, scale_rule)
        return MXFP4Tensor(packed, scales, t.shape).scaled_values(out_dtype)

    def quantize_fp8(
        self, x2d: torch.Tensor, tile: tuple[int, int], *, transpose: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(E4M3 data (M, K), FP32 scales (M, ceil(K/128))) of t = x2d (or x2d.t())."""
        q = quantize_fp8_blockwise(x2d.t().contiguous() if transpose else x2d, tile)
        return q.data, q.scales

    def fake_quantize_fp8(self, x2d: torch.Tensor, tile: tuple[int, int], *, transpose: bool = False) -> torch.Tensor:
        """The FP8 GEMM operand e4m3(t / s_b) · s_b (FP32, (M, K)) of t = x2d (or x2d.t())."""
        return quantize_fp8_blockwise(x2d.t().contiguous() if transpose else x2d, tile).dequantize(torch.float32)
