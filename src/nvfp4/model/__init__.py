"""The models the recipes train (they hold no quantization code): a GPT and a Nemotron-H-style hybrid.

One entry point for every preset: ``build(name, **overrides)`` (what ``--model NAME`` uses); ``device="meta"``
builds the shapes without memory (the 8B/12B hybrids, for the layer policy and parameter counts).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from nvfp4.model.gpt import GPT, GPTConfig, config_from_preset, count_parameters
from nvfp4.model.gpt import PRESETS as GPT_PRESETS
from nvfp4.model.hybrid import HYBRID_PRESETS, HybridConfig, HybridLM, hybrid_config

PRESETS: dict[str, GPTConfig | HybridConfig] = {**GPT_PRESETS, **HYBRID_PRESETS}
ModelConfig = GPTConfig | HybridConfig
# the TrainConfig overrides each family takes (the hybrid's depth and block kinds are its pattern)
OVERRIDES = {
    GPTConfig: ("n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "mlp", "seq_len", "vocab_size"),
    HybridConfig: ("n_head", "n_kv_head", "d_model", "d_ff", "seq_len", "vocab_size"),
}


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """A preset's config with some fields replaced (validation runs again on the result)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
    family = type(PRESETS[name])
    bad = sorted(k for k in overrides if k not in OVERRIDES[family])
    if bad:
        raise ValueError(
            f"model {name!r} takes no {', '.join(bad)} override"
            + (" (a hybrid's blocks are its pattern)" if family is HybridConfig else "")
        )
    return hybrid_config(name, **overrides) if family is HybridConfig else config_from_preset(name, **overrides)


def from_config(config: ModelConfig, device: str | torch.device | None = None) -> nn.Module:
    """The model of a config; on the ``meta`` device, shapes only."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return HybridLM(config) if isinstance(config, HybridConfig) else GPT(config)


def build(name: str, device: str | torch.device | None = None, **overrides: Any) -> nn.Module:
    """The model preset ``name`` (GPT or hybrid), freshly initialised from torch's RNG."""
    return from_config(model_config(name, **overrides), device)


def config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """The config a checkpoint saved (``dataclasses.asdict`` of either family: a hybrid's has a pattern)."""
    return HybridConfig(**values) if "pattern" in values else GPTConfig(**values)


__all__ = [
    "GPT",
    "GPTConfig",
    "HybridConfig",
    "HybridLM",
    "ModelConfig",
    "PRESETS",
    "build",
    "config_from_dict",
    "config_from_preset",
    "count_parameters",
    "from_config",
    "model_config",
]
