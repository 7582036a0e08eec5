"""Input checks shared by the quantizers: clear errors instead of garbage."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class NonFiniteError(ValueError):
    """Raised by ``strict=True`` quantization when the input holds NaN or Inf."""


def check_float_input(x: object, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} has dtype {x.dtype}; accepted: float32, bfloat16, float16 (cast with .float() first)")
    if x.dim() == 0:
        raise ValueError(f"{name} is a 0-d tensor; quantization needs at least one dimension (the block dim)")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); nothing to quantize")
    return x


def check_tile(tile: object, accepted: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    if isinstance(tile, str) or not hasattr(tile, "__iter__"):
        raise ValueError(f"tile must be a pair of ints like {accepted[0]}, got {tile!r}")
    parts = tuple(tile)  # type: ignore[arg-type]
    if len(parts) != 2 or not all(isinstance(t, int) and not isinstance(t, bool) for t in parts):
        raise ValueError(f"tile must be a pair of ints like {accepted[0]}, got {tile!r}")
    tile = parts
    if tile not in accepted:
        raise ValueError(f"tile={tile} is not supported; accepted tiles: {', '.join(map(str, accepted))}")
    return tile  # type: ignore[return-value]


def check_finite_strict(x2d: torch.Tensor, name: str = "x") -> None:
    """Raise with the count and first position of NaN/Inf values (``strict=True``)."""
    bad = ~torch.isfinite(x2d)
    count = int(bad.sum())
    if count:
        first = int(bad.flatten().nonzero()[0, 0])
        row, col = divmod(first, x2d.shape[-1])
        raise NonFiniteError(
            f"{name} contains {count} non-finite value(s) (NaN/Inf); first at flattened (row, col)=({row}, {col}), "
            f"value {x2d[row, col].item()}. Fix the producer of this tensor or pass strict=False to let the NaN "
            "propagate into the dequantized output."
        )


def as_2d(x: torch.Tensor) -> torch.Tensor:
    """Flatten leading dims: quantization blocks run along the last dim."""
    return x.reshape(-1, x.shape[-1])


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
