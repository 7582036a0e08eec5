"""The GPT model that the NVFP4 recipe trains; it holds no quantization code itself."""

from nvfp4.model.gpt import GPT, PRESETS, GPTConfig, config_from_preset, count_parameters

__all__ = ["GPT", "GPTConfig", "PRESETS", "config_from_preset", "count_parameters"]
