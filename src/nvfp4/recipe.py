"""Recipes: which number format each of a linear layer's six GEMM operands gets (SPEC §5).

A linear layer y = x·Wᵀ runs three GEMMs, each with two operands, every operand quantized
along that GEMM's reduction dimension:

    Fprop  y  = x  · Wᵀ    operands  fprop_x (tokens × in),  fprop_w (out × in)
    Dgrad  dx = dy · W     operands  dgrad_dy (tokens × out), dgrad_w (in × out, i.e. Wᵀ)
    Wgrad  dW = dyᵀ · x    operands  wgrad_dy (out × tokens), wgrad_x (in × tokens)

A ``Recipe`` gives each operand an ``OperandConfig`` and adds the layer policy (which linears
stay BF16) and an optional late precision switch. Named presets live in ``nvfp4.recipes``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

FORMATS = ("nvfp4", "mxfp4", "fp8", "mxfp8", "bf16")
ROUNDINGS = ("nearest", "stochastic")
OPERANDS = ("fprop_x", "fprop_w", "dgrad_dy", "dgrad_w", "wgrad_dy", "wgrad_x")
PASSES = ("forward", "backward")
_TILES = {
    "nvfp4": ((1, 16), (16, 16)),
    "mxfp4": ((1, 32),),
    "fp8": ((1, 128), (128, 128)),
    "mxfp8": ((1, 32),),
    "bf16": ((1, 1),),
}


@dataclass(frozen=True)
class OperandConfig:
    """How one GEMM operand is quantized along its reduction (last) dimension."""

    format: str = "nvfp4"
    tile: tuple[int, int] = (1, 16)
    rounding: str = "nearest"
    hadamard: int | None = None  # RHT size along the reduction dim, None = off
    # The RHT's diagonal of random signs (SPEC §4: TE's fixed vector). False = a plain Hadamard transform, for the
    # paper's small-scale finding that sign randomisation made no measurable difference.
    random_signs: bool = True
    # Four Over Six (nvfp4 only): each block keeps the better of two scales, amax_b/6 and amax_b/4, by squared error;
    # the tensor scale targets an E4M3 block scale of 256 (nvfp4.formats.fouroversix).
    four_over_six: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"operand format {self.format!r} unknown; accepted: {', '.join(FORMATS)}")
        object.__setattr__(self, "tile", tuple(self.tile))
        if self.format != "bf16" and self.tile not in _TILES[self.format]:
            raise ValueError(f"tile {self.tile} not supported for {self.format}; accepted: {_TILES[self.format]}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding {self.rounding!r} unknown; accepted: {', '.join(ROUNDINGS)}")
        if self.format in ("fp8", "mxfp8") and self.rounding != "nearest":
            raise ValueError(f"{self.format} rounds to nearest only; use rounding='nearest'")
        if self.format == "mxfp8" and self.hadamard is not None:
            raise ValueError("mxfp8 operands take no Hadamard transform (as in Transformer Engine); use hadamard=None")
        if self.four_over_six and self.format != "nvfp4":
            raise ValueError(f"four_over_six is an NVFP4 block-scale rule; use four_over_six=False for {self.format}")
        if self.four_over_six and self.hadamard and self.tile != (1, 16):
            raise ValueError("four_over_six with an RHT needs a (1, 16) tile; use hadamard=None on 16x16 weights")
        h = self.hadamard
        if h is not None and (h < 2 or h > 128 or h & (h - 1)):
            raise ValueError(f"hadamard size must be a power of 2 in 2..128 or None, got {self.hadamard}")

    @property
    def quantized(self) -> bool:
        return self.format != "bf16"

    @property
    def stochastic(self) -> bool:
        return self.rounding == "stochastic"


BF16 = OperandConfig("bf16", (1, 1))


@dataclass(frozen=True)
class LayerPolicy:
    """Which linears stay in high precision: the first/last transformer blocks, and name globs.

    Counts are absolute; fractions are of the model's depth, rounded half up, and a non-zero
    fraction keeps at least one block (the paper keeps 2/62 first and 8/62 last blocks).
    ``edge_recipe``: the name of a recipe the first/last blocks run instead of BF16 (the paper keeps them in
    "BF16 or MXFP8": ``"mxfp8"``); name globs (``bf16_names``) always stay BF16.
    """

    first_blocks: int = 0
    last_blocks: int = 0
    first_fraction: float = 0.0
    last_fraction: float = 0.0
    bf16_names: tuple[str, ...] = ()
    edge_recipe: str | None = None

    def __post_init__(self) -> None:
        if min(self.first_blocks, self.last_blocks) < 0:
            raise ValueError("first_blocks/last_blocks must be >= 0")
        if not (0.0 <= self.first_fraction <= 1.0 and 0.0 <= self.last_fraction <= 1.0):
            raise ValueError("first_fraction/last_fraction must be in [0, 1]")
        object.__setattr__(self, "bf16_names", tuple(self.bf16_names))

    @staticmethod
    def _count(fixed: int, fraction: float, depth: int) -> int:
        from_fraction = max(1, math.floor(fraction * depth + 0.5)) if fraction > 0 else 0
        return min(depth, max(fixed, from_fraction))

    def bf16_blocks(self, depth: int) -> set[int]:
        """Indices of the blocks whose linears stay BF16 for a model of ``depth`` blocks."""
        first = self._count(self.first_blocks, self.first_fraction, depth)
        last = self._count(self.last_blocks, self.last_fraction, depth)
        return set(range(first)) | set(range(depth - last, depth))


@dataclass(frozen=True)
class PrecisionSwitch:
    """Switch the named passes to BF16 late in training (paper App. D): at a fraction of the
    planned steps, or at a token count (whichever is given; tokens win if both)."""

    passes: tuple[str, ...] = ("forward",)
    at_fraction: float | None = 0.8
    at_tokens: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "passes", tuple(self.passes))
        bad = [p for p in self.passes if p not in PASSES]
        if bad or not self.passes:
            raise ValueError(f"switch passes {self.passes} invalid; accepted: {', '.join(PASSES)}")
        if self.at_fraction is None and self.at_tokens is None:
            raise ValueError("a PrecisionSwitch needs at_fraction or at_tokens")
        if self.at_fraction is not None and not 0.0 <= self.at_fraction <= 1.0:
            raise ValueError(f"at_fraction must be in [0, 1], got {self.at_fraction}")

    def active(self, progress: float, tokens: int) -> bool:
        if self.at_tokens is not None:
            return tokens >= self.at_tokens
        return progress >= self.at_fraction  # type: ignore[operator]

    def first_active_step(self, total_steps: int, tokens_per_step: int) -> int | None:
        """The first step (0-based, before it runs) that trains switched, or None if none of ``total_steps`` does.
        Every step before it trains exactly as the recipe without a switch: a run can branch there."""
        for step in range(total_steps):  # a scan, not a formula: it must agree with active() to the last float bit
            if self.active(step / total_steps, step * tokens_per_step):
                return step
        return None


@dataclass(frozen=True)
class Recipe:
    """Everything that defines the low-precision treatment of a model's linear layers."""

    name: str
    fprop_x: OperandConfig = BF16
    fprop_w: OperandConfig = BF16
    dgrad_dy: OperandConfig = BF16
    dgrad_w: OperandConfig = BF16
    wgrad_dy: OperandConfig = BF16
    wgrad_x: OperandConfig = BF16
    layers: LayerPolicy = field(default_factory=LayerPolicy)
    switch: PrecisionSwitch | None = None
    description: str = ""
    source: str = ""  # where the recipe comes from (paper, repository), shown by `nvfp4 recipes`
    # GEMM outputs in FP32 before the tensor scales (exact, SPEC §2). None = automatic: exact where
    # the device has a BF16→FP32 GEMM (CUDA); on CPU a BF16-output GEMM is used for speed (one extra
    # BF16 rounding of the accumulator, the same rounding torch's own bf16 autocast applies).
    exact_gemm: bool | None = None

    def __post_init__(self) -> None:
        # The RHT only cancels inside a GEMM when both operands get the same transform.
        for a, b in (("fprop_x", "fprop_w"), ("dgrad_dy", "dgrad_w"), ("wgrad_dy", "wgrad_x")):
            ca, cb = self.operand(a), self.operand(b)
            if ca.hadamard != cb.hadamard:
                raise ValueError(
                    f"recipe {self.name!r}: {a} and {b} are operands of one GEMM and need the same hadamard size "
                    f"(got {ca.hadamard} and {cb.hadamard})"
                )
            if ca.hadamard and ca.random_signs != cb.random_signs:
                raise ValueError(
                    f"recipe {self.name!r}: {a} and {b} are operands of one GEMM and need the same RHT signs "
                    f"(random_signs {ca.random_signs} and {cb.random_signs})"
                )

    def operand(self, name: str) -> OperandConfig:
        return getattr(self, name)

    @property
    def quantized(self) -> bool:
        return any(self.operand(o).quantized for o in OPERANDS)

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **changes)

    def same_until_switch(self, other: Recipe) -> bool:
        """True if the two recipes train identically until a precision switch begins (they may differ only in the
        switch and their names): a run of one can branch from the other's checkpoint taken before the switch."""

        def strip(r: Recipe) -> Recipe:
            return r.replace(name="", description="", source="", switch=None)

        return strip(self) == strip(other)

    def summary(self) -> str:
        """One line per GEMM operand, for tables and logs."""
        lines = []
        for op in OPERANDS:
            cfg = self.operand(op)
            if not cfg.quantized:
                lines.append(f"{op:9s} bf16")
                continue
            extra = f", RHT{cfg.hadamard}{'' if cfg.random_signs else ' (no sign flips)'}" if cfg.hadamard else ""
            lines.append(f"{op:9s} {cfg.format} {cfg.tile[0]}x{cfg.tile[1]} {cfg.rounding}{extra}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        data = dict(data)
        for op in OPERANDS:
            if op in data and isinstance(data[op], dict):
                data[op] = OperandConfig(**data[op])
        if isinstance(data.get("layers"), dict):
            data["layers"] = LayerPolicy(**data["layers"])
        if isinstance(data.get("switch"), dict):
            data["switch"] = PrecisionSwitch(**data["switch"])
        return cls(**data)
