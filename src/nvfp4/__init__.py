"""nvfp4: exact NVFP4 / MXFP4 / FP8 training numerics and a pretraining harness, on any device."""

from nvfp4.formats import (
    FP8Tensor,
    MXFP4Tensor,
    NonFiniteError,
    NVFP4Tensor,
    quantize_fp8_blockwise,
    quantize_mxfp4,
    quantize_nvfp4,
)
from nvfp4.hadamard import random_hadamard_transform

__version__ = "0.1.0"

__all__ = [
    "FP8Tensor",
    "MXFP4Tensor",
    "NVFP4Tensor",
    "NonFiniteError",
    "quantize_fp8_blockwise",
    "quantize_mxfp4",
    "quantize_nvfp4",
    "random_hadamard_transform",
]
