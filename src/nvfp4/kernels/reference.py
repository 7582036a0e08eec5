"""The oracle as a backend: plain PyTorch, any device. Fast backends implement the same kernels (``contract.py``)."""

from __future__ import annotations

import functools

import torch

from nvfp4.formats.fouroversix import reference_quantize_4over6_2d
from nvfp4.formats.fp8 import FP8Tensor, reference_quantize_fp8_2d
from nvfp4.formats.hadamard import random_hadamard_transform
from nvfp4.formats.mxfp4 import MXFP4Tensor, reference_quantize_mxfp4_2d
from nvfp4.formats.mxfp8 import reference_mxfp8_values, reference_quantize_mxfp8_2d
from nvfp4.formats.nvfp4 import reference_quantize_nvfp4_2d, reference_scaled_values, tensor_amax
from nvfp4.kernels.contract import BackendBase, Quantized, QuantSpec, offset_value


class ReferenceBackend(BackendBase):
    """Every op on every device, in plain PyTorch: the definition of each op's result."""

    name = "reference"

    @classmethod
    def is_available(cls, device: torch.device) -> bool:
        return True

    @classmethod
    @functools.cache
    def instance(cls) -> ReferenceBackend:
        return cls()

    def amax_kernel(self, x2d: torch.Tensor) -> torch.Tensor:
        """max|x| as an FP32 0-d tensor (NaN if any NaN)."""
        return tensor_amax(x2d)

    def quantize_kernel(
        self,
        x2d: torch.Tensor,
        spec: QuantSpec,
        *,
        amax: torch.Tensor | None = None,
        signs: torch.Tensor | None = None,
        seed: int = 0,
        offset: int | torch.Tensor = 0,
    ) -> Quantized:
        """t = x2d.t() if spec.transpose else x2d, (M, K); with spec.rht, t <- RHT(t) along K (BF16-rounded; K must
        be a multiple of the size). The SR element index is row*K + col of t, as if ``t.contiguous()`` were quantized.

        NVFP4: amax = the given one, or max|t| after the RHT; packed -> (codes uint8 (M, ceil(K/16)*8), scales e4m3
        (M, ceil(K/16)), amax); values -> (value(q)·s_b (M, K) in out_dtype, None, amax), which is exactly
        ``scaled_values(packed, scales)[:, :K]``. MXFP4: (codes, scales e8m0, None) or (value(q)·2^e, None, None).
        FP8: (E4M3 data (M, K), FP32 scales (M, ceil(K/128)), None) or (e4m3(t/s_b)·s_b, None, None). MXFP8: (E4M3
        data (M, K), E8M0 scales (M, ceil(K/32)), None) or (e4m3(t·2^-e)·2^e, None, None).
        """
        t = x2d.t() if spec.transpose else x2d
        cols = t.shape[1]
        if spec.rht is not None:  # K % rht and the signs' count were checked by BackendBase.quantize
            t = random_hadamard_transform(t, dim=-1, size=spec.rht, signs=signs)
        t = t.contiguous()
        off = offset_value(offset)
        if spec.format == "nvfp4":
            if amax is None:
                used = tensor_amax(t)
            else:
                used = torch.as_tensor(amax).to(device=t.device, dtype=torch.float32).reshape(())
            quantize_2d = reference_quantize_4over6_2d if spec.four_over_six else reference_quantize_nvfp4_2d
            packed, scales = quantize_2d(t, used, spec.tile[0], spec.stochastic, seed, off)
            if spec.packed:
                return Quantized(packed, scales, used)
            return Quantized(self.scaled_values_kernel(packed, scales, spec.out_dtype)[:, :cols], None, used)
        if spec.format == "mxfp4":
            packed, scales = reference_quantize_mxfp4_2d(t, spec.stochastic, seed, off, spec.scale_rule)
            if spec.packed:
                return Quantized(packed, scales, None)
            return Quantized(MXFP4Tensor(packed, scales, t.shape).scaled_values(spec.out_dtype), None, None)
        if spec.format == "mxfp8":
            data, scales = reference_quantize_mxfp8_2d(t)
            if spec.packed:
                return Quantized(data, scales, None)
            return Quantized(reference_mxfp8_values(data, scales, spec.out_dtype), None, None)
        data, scales = reference_quantize_fp8_2d(t, spec.tile)
        if spec.packed:
            return Quantized(data, scales, None)
        values = FP8Tensor(data, scales, t.shape, spec.tile).dequantize(torch.float32)
        return Quantized(values.to(spec.out_dtype), None, None)

    def scaled_values_kernel(
        self, packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
    ) -> torch.Tensor:
        """value(q) × block scale for every (padded) element: (M, ceil(K/16)*16), exact in BF16."""
        return reference_scaled_values(packed, scales, dtype)
