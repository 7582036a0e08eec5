"""nvfp4: exact NVFP4 / MXFP4 / FP8 training numerics and a pretraining harness, on any device."""

from nvfp4 import recipes  # noqa: E402  (registry module, after the formats it uses)
from nvfp4.convert import (
    apply_precision_schedule,
    conversion_report,
    convert,
    invalidate_weight_caches,
    load_sr_state_dict,
    set_amax_reducer,
    set_precision,
    set_sr_rank,
    sr_state_dict,
)
from nvfp4.formats import FP8Tensor, MXFP4Tensor, MXFP8Tensor, NonFiniteError, NVFP4Tensor
from nvfp4.formats.hadamard import random_hadamard_transform
from nvfp4.linear import Linear, checkpoint_context
from nvfp4.quantize import quantize_fp8_blockwise, quantize_mxfp4, quantize_mxfp8, quantize_nvfp4
from nvfp4.recipe import LayerPolicy, OperandConfig, PrecisionSwitch, Recipe

__version__ = "0.1.0"

__all__ = [
    "LayerPolicy",
    "Linear",
    "OperandConfig",
    "PrecisionSwitch",
    "Recipe",
    "apply_precision_schedule",
    "checkpoint_context",
    "conversion_report",
    "convert",
    "invalidate_weight_caches",
    "load_sr_state_dict",
    "recipes",
    "set_amax_reducer",
    "set_precision",
    "set_sr_rank",
    "sr_state_dict",
    "FP8Tensor",
    "MXFP4Tensor",
    "MXFP8Tensor",
    "NVFP4Tensor",
    "NonFiniteError",
    "quantize_fp8_blockwise",
    "quantize_mxfp4",
    "quantize_mxfp8",
    "quantize_nvfp4",
    "random_hadamard_transform",
]
