"""The oracle as a backend: plain PyTorch, any device. Fast backends copy this interface."""

from __future__ import annotations

import functools

import torch

from nvfp4.formats.e2m1 import e2m1_values, unpack_codes
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(packed uint8 (M, ceil(K/16)*8), scales e4m3 (M, ceil(K/16))) for a 2-D input."""
        return reference_quantize_nvfp4_2d(x2d, global_amax, tile_rows, stochastic, seed, offset)

    def rht_quantize_nvfp4(
        self,
        x2d: torch.Tensor,
        signs: torch.Tensor,
        global_amax: torch.Tensor | None,
        stochastic: bool,
        seed: int,
        offset: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RHT (size len(signs)) along the last dim, BF16-rounded, then 1x16 NVFP4.

        K must be a multiple of the Hadamard size. The amax is of the TRANSFORMED tensor unless
        given. Returns (packed, scales, amax used).
        """
        h = random_hadamard_transform(x2d, dim=-1, size=signs.numel(), signs=signs)
        amax = tensor_amax(h) if global_amax is None else global_amax
        packed, scales = reference_quantize_nvfp4_2d(h, amax, 1, stochastic, seed, offset)
        return packed, scales, amax

    def scaled_values(
        self, packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
    ) -> torch.Tensor:
        """value(q) × block scale for every (padded) element: (M, ceil(K/16)*16), exact in BF16."""
        values = e2m1_values(unpack_codes(packed), torch.float32)
        return (values * scales.to(torch.float32).repeat_interleave(BLOCK, dim=1)).to(dtype)
