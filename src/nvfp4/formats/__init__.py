"""Number formats: the tensor types and the plain-PyTorch reference arithmetic (SPEC §1–§4), the oracle.

Nothing here imports ``nvfp4.kernels`` (a test enforces it); the public quantizers that dispatch to the fast
backends are in ``nvfp4.quantize`` (re-exported as ``nvfp4.quantize_nvfp4`` and friends).
"""

from nvfp4.formats._validate import NonFiniteError
from nvfp4.formats.fp8 import FP8Tensor
from nvfp4.formats.mxfp4 import MXFP4Tensor
from nvfp4.formats.mxfp8 import MXFP8Tensor
from nvfp4.formats.nvfp4 import NVFP4Tensor

__all__ = ["FP8Tensor", "MXFP4Tensor", "MXFP8Tensor", "NVFP4Tensor", "NonFiniteError"]
