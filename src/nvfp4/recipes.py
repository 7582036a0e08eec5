"""Named recipes: the paper's recipe, its baselines and every ablation, one name away.

>>> import nvfp4
>>> nvfp4.recipes.names()
>>> recipe = nvfp4.recipes.get("nvfp4")
"""

from __future__ import annotations

import dataclasses

from nvfp4.recipe import OPERANDS, LayerPolicy, OperandConfig, PrecisionSwitch, Recipe

_NV_1D = OperandConfig("nvfp4", (1, 16), "nearest")
_NV_1D_SR = OperandConfig("nvfp4", (1, 16), "stochastic")
_NV_2D = OperandConfig("nvfp4", (16, 16), "nearest")
# The paper keeps the first 2 and last 8 of 62 blocks in BF16; scaled to the model's depth.
_PAPER_LAYERS = LayerPolicy(first_fraction=2 / 62, last_fraction=8 / 62)

_PAPER = "arXiv 2509.25149"  # NVIDIA, Pretraining Large Language Models with NVFP4
_MX8 = OperandConfig("mxfp8", (1, 32), "nearest")

_NVFP4 = Recipe(
    name="nvfp4",
    fprop_x=_NV_1D,
    fprop_w=_NV_2D,
    dgrad_dy=_NV_1D_SR,
    dgrad_w=_NV_2D,
    wgrad_dy=OperandConfig("nvfp4", (1, 16), "stochastic", hadamard=16),
    wgrad_x=OperandConfig("nvfp4", (1, 16), "nearest", hadamard=16),
    layers=_PAPER_LAYERS,
    description="the paper's full recipe: 2D weights, SR on gradients, RHT16 on Wgrad, first/last blocks BF16",
    source=_PAPER,
)


def _four_over_six(recipe: Recipe) -> dict[str, OperandConfig]:
    """Every NVFP4 operand of ``recipe`` with the Four Over Six block-scale rule."""
    return {
        name: dataclasses.replace(cfg, four_over_six=True) if cfg.format == "nvfp4" else cfg
        for name, cfg in ((o, recipe.operand(o)) for o in OPERANDS)
    }


def _switch(passes: tuple[str, ...], name: str, what: str) -> Recipe:
    return _NVFP4.replace(
        name=name,
        switch=PrecisionSwitch(passes=passes, at_fraction=0.8),
        description=f"nvfp4, then {what} in BF16 for the last 20% of training",
    )


def _fp8_operand(tile: tuple[int, int]) -> OperandConfig:
    return OperandConfig("fp8", tile, "nearest")


_PRESETS: dict[str, Recipe] = {
    "bf16": Recipe(name="bf16", description="no quantization: every GEMM in BF16 (torch's own nn.Linear)"),
    "fp8": Recipe(
        name="fp8",
        fprop_x=_fp8_operand((1, 128)),
        fprop_w=_fp8_operand((128, 128)),
        dgrad_dy=_fp8_operand((1, 128)),
        dgrad_w=_fp8_operand((128, 128)),
        wgrad_dy=_fp8_operand((1, 128)),
        wgrad_x=_fp8_operand((1, 128)),
        layers=LayerPolicy(first_blocks=1, last_blocks=2),
        description="paper's FP8 baseline: E4M3, 1x128 acts/grads, 128x128 weights, first 1/last 2 blocks BF16",
        source=_PAPER,
    ),
    "mxfp4": Recipe(
        name="mxfp4",
        fprop_x=OperandConfig("mxfp4", (1, 32)),
        fprop_w=OperandConfig("mxfp4", (1, 32)),
        dgrad_dy=OperandConfig("mxfp4", (1, 32), "stochastic"),
        dgrad_w=OperandConfig("mxfp4", (1, 32)),
        wgrad_dy=OperandConfig("mxfp4", (1, 32), "stochastic", hadamard=32),
        wgrad_x=OperandConfig("mxfp4", (1, 32), "nearest", hadamard=32),
        layers=_PAPER_LAYERS,
        description="paper's MXFP4 comparison: 32-blocks, power-of-2 scales rounded up, SR grads, RHT32 on Wgrad",
        source=_PAPER,
    ),
    "nvfp4": _NVFP4,
    "mxfp8": Recipe(
        name="mxfp8",
        fprop_x=_MX8,
        fprop_w=_MX8,
        dgrad_dy=_MX8,
        dgrad_w=_MX8,
        wgrad_dy=_MX8,
        wgrad_x=_MX8,
        description="MXFP8 everywhere: E4M3 in 32-blocks with E8M0 scales rounded up, both passes (TE's MXFP8)",
        source="OCP MX v1.0; TE MXFP8BlockScaling",
    ),
    "nvfp4-mxfp8-edges": _NVFP4.replace(
        name="nvfp4-mxfp8-edges",
        layers=LayerPolicy(first_fraction=2 / 62, last_fraction=8 / 62, edge_recipe="mxfp8"),
        description="nvfp4 with its first/last blocks in MXFP8 instead of BF16 (the paper's 'BF16 or MXFP8')",
        source=_PAPER,
    ),
    "nvfp4-4over6": _NVFP4.replace(
        name="nvfp4-4over6",
        **_four_over_six(_NVFP4),
        description="nvfp4 with Four Over Six: each block keeps the better of its amax/6 and amax/4 scales (MSE)",
        source="Cook et al., Four Over Six (mit-han-lab/fouroversix); TE PR #2972",
    ),
    "nvfp4-no-rht": _NVFP4.replace(
        name="nvfp4-no-rht",
        wgrad_dy=_NV_1D_SR,
        wgrad_x=_NV_1D,
        description="ablation: nvfp4 without the Random Hadamard Transform on Wgrad",
    ),
    "nvfp4-no-sr": _NVFP4.replace(
        name="nvfp4-no-sr",
        dgrad_dy=_NV_1D,
        wgrad_dy=OperandConfig("nvfp4", (1, 16), "nearest", hadamard=16),
        description="ablation: nvfp4 with round-to-nearest gradients",
    ),
    "nvfp4-no-2d": _NVFP4.replace(
        name="nvfp4-no-2d",
        fprop_w=_NV_1D,
        dgrad_w=_NV_1D,
        description="ablation: nvfp4 with 1x16 weight blocks (Fprop and Dgrad weights quantized differently)",
    ),
    "nvfp4-all-fp4": _NVFP4.replace(
        name="nvfp4-all-fp4", layers=LayerPolicy(), description="ablation: nvfp4 in every linear layer (no BF16 blocks)"
    ),
    "nvfp4-sr-everywhere": _NVFP4.replace(
        name="nvfp4-sr-everywhere",
        fprop_x=_NV_1D_SR,
        fprop_w=OperandConfig("nvfp4", (16, 16), "stochastic"),
        dgrad_w=OperandConfig("nvfp4", (16, 16), "stochastic"),
        wgrad_x=OperandConfig("nvfp4", (1, 16), "stochastic", hadamard=16),
        description="ablation: stochastic rounding on activations and weights too",
    ),
    "nvfp4-rht-everywhere": _NVFP4.replace(
        name="nvfp4-rht-everywhere",
        fprop_x=OperandConfig("nvfp4", (1, 16), "nearest", hadamard=16),
        fprop_w=OperandConfig("nvfp4", (16, 16), "nearest", hadamard=16),
        dgrad_dy=OperandConfig("nvfp4", (1, 16), "stochastic", hadamard=16),
        dgrad_w=OperandConfig("nvfp4", (16, 16), "nearest", hadamard=16),
        description="ablation: RHT16 on the Fprop and Dgrad operands too",
    ),
    "nvfp4-rht4": _NVFP4.replace(
        name="nvfp4-rht4",
        wgrad_dy=OperandConfig("nvfp4", (1, 16), "stochastic", hadamard=4),
        wgrad_x=OperandConfig("nvfp4", (1, 16), "nearest", hadamard=4),
        description="ablation: nvfp4 with a 4x4 instead of a 16x16 RHT on Wgrad",
    ),
    "nvfp4-rht-no-signs": _NVFP4.replace(
        name="nvfp4-rht-no-signs",
        wgrad_dy=OperandConfig("nvfp4", (1, 16), "stochastic", hadamard=16, random_signs=False),
        wgrad_x=OperandConfig("nvfp4", (1, 16), "nearest", hadamard=16, random_signs=False),
        description="ablation: nvfp4 with a plain 16x16 Hadamard transform on Wgrad (no random sign flips)",
    ),
    "nvfp4-base": Recipe(
        name="nvfp4-base",
        fprop_x=_NV_1D,
        fprop_w=_NV_1D,
        dgrad_dy=_NV_1D,
        dgrad_w=_NV_1D,
        wgrad_dy=_NV_1D,
        wgrad_x=_NV_1D,
        description="plain NVFP4: every layer, 1x16 blocks, round-to-nearest everywhere, no RHT",
    ),
    "nvfp4-switch-fwd": _switch(("forward",), "nvfp4-switch-fwd", "the forward pass"),
    "nvfp4-switch-bwd": _switch(("backward",), "nvfp4-switch-bwd", "the backward pass"),
    "nvfp4-switch-both": _switch(("forward", "backward"), "nvfp4-switch-both", "both passes"),
}


def names() -> list[str]:
    """All preset names, in registry order."""
    return list(_PRESETS)


def get(name: str | Recipe) -> Recipe:
    """The preset called ``name`` (a Recipe passes through)."""
    if isinstance(name, Recipe):
        return name
    try:
        return _PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; valid recipes: {', '.join(_PRESETS)}") from None


def describe() -> str:
    """One line per preset: name, description and, in brackets, its source."""
    width = max(map(len, _PRESETS))
    return "\n".join(
        f"{n:{width}s}  {r.description}" + (f"  [{r.source}]" if r.source else "") for n, r in _PRESETS.items()
    )
