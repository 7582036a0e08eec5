"""Number formats and their reference quantizers (SPEC §1–§3)."""

from nvfp4.formats._validate import NonFiniteError
from nvfp4.formats.fp8 import FP8Tensor, quantize_fp8_blockwise
from nvfp4.formats.mxfp4 import MXFP4Tensor, quantize_mxfp4
from nvfp4.formats.nvfp4 import NVFP4Tensor, quantize_nvfp4

__all__ = [
    "FP8Tensor",
    "MXFP4Tensor",
    "NVFP4Tensor",
    "NonFiniteError",
    "quantize_fp8_blockwise",
    "quantize_mxfp4",
    "quantize_nvfp4",
]
