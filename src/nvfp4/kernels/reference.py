"""The oracle as a backend: plain PyTorch, any device."""

from __future__ import annotations

import torch

from nvfp4.formats.nvfp4 import reference_quantize_nvfp4_2d, tensor_amax


class ReferenceBackend:
    name = "reference"

    def amax(self, x2d: torch.Tensor) -> torch.Tensor:
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
        return reference_quantize_nvfp4_2d(x2d, global_amax, tile_rows, stochastic, seed, offset)
