"""Bad input gives a ValueError that names the problem, never garbage or a deep traceback.

Why: these are the mistakes a user makes first (wrong dtype, wrong tile, a NaN from a diverging
run); the message must say which argument is wrong and what is accepted.
"""

from __future__ import annotations

import re

import pytest
import torch

from nvfp4 import (
    NonFiniteError,
    quantize_fp8_blockwise,
    quantize_mxfp4,
    quantize_nvfp4,
    random_hadamard_transform,
)

QUANTIZERS = {
    "nvfp4": quantize_nvfp4,
    "mxfp4": quantize_mxfp4,
    "fp8": quantize_fp8_blockwise,
}


@pytest.mark.parametrize("name", QUANTIZERS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_integer_dtype(name: str, dtype: torch.dtype) -> None:
    with pytest.raises(ValueError, match=r"dtype .*accepted: float32, bfloat16, float16"):
        QUANTIZERS[name](torch.ones(4, 32, dtype=dtype))


@pytest.mark.parametrize("name", QUANTIZERS)
@pytest.mark.parametrize("shape", [(0,), (0, 16), (4, 0)])
def test_empty_tensor(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=re.escape(f"is empty (shape {shape})")):
        QUANTIZERS[name](torch.zeros(shape))


@pytest.mark.parametrize("name", QUANTIZERS)
def test_zero_dim_tensor(name: str) -> None:
    with pytest.raises(ValueError, match="0-d tensor"):
        QUANTIZERS[name](torch.tensor(1.0))


@pytest.mark.parametrize("name", QUANTIZERS)
def test_not_a_tensor(name: str) -> None:
    with pytest.raises(ValueError, match="must be a torch.Tensor, got list"):
        QUANTIZERS[name]([[1.0] * 16])


@pytest.mark.parametrize("tile", [(1, 32), (8, 8), (16, 1), (32, 32), (1, 128)])
def test_nvfp4_bad_tile(tile: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=re.escape(f"tile={tile} is not supported; accepted tiles: (1, 16), (16, 16)")):
        quantize_nvfp4(torch.ones(16, 32), tile=tile)


@pytest.mark.parametrize("tile", [(1, 16), (16, 16), (64, 64)])
def test_fp8_bad_tile(tile: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=re.escape(f"tile={tile} is not supported")):
        quantize_fp8_blockwise(torch.ones(16, 128), tile=tile)


@pytest.mark.parametrize("tile", [16, None, (1, 16, 1)])
def test_tile_not_a_pair(tile: object) -> None:
    with pytest.raises(ValueError, match="tile"):
        quantize_nvfp4(torch.ones(16, 32), tile=tile)  # type: ignore[arg-type]


@pytest.mark.parametrize("tile", ["1x16", (1.5, 16)], ids=["string", "fractional"])
def test_tile_malformed_is_named(tile: object) -> None:
    with pytest.raises(ValueError, match="tile"):
        quantize_nvfp4(torch.ones(16, 32), tile=tile)  # type: ignore[arg-type]


@pytest.mark.parametrize("rule", ["round", "CEIL", "", None])
def test_bad_scale_rule(rule: object) -> None:
    with pytest.raises(ValueError, match=r"scale_rule=.* is not supported; accepted: ceil, floor"):
        quantize_mxfp4(torch.ones(2, 32), scale_rule=rule)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["cuda-magic", "", "Reference"])
def test_unknown_backend(backend: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"backend={backend!r} is not available")):
        quantize_nvfp4(torch.ones(2, 32), backend=backend)


@pytest.mark.parametrize("size", [12, 256, 1, 0, -16, 3])
def test_hadamard_bad_size(size: int) -> None:
    message = f"Hadamard size must be a power of 2 between 2 and 128, got {size}"
    with pytest.raises(ValueError, match=re.escape(message)):
        random_hadamard_transform(torch.ones(4, 256), size=size)


@pytest.mark.parametrize("length, size", [(24, 16), (8, 16), (100, 32), (3, 2)])
def test_hadamard_length_not_a_multiple(length: int, size: int) -> None:
    with pytest.raises(ValueError, match=f"has length {length}, not a multiple of the Hadamard size {size}"):
        random_hadamard_transform(torch.ones(4, length), size=size)


def test_hadamard_length_checked_along_the_given_dim() -> None:
    x = torch.ones(20, 32)
    random_hadamard_transform(x, dim=1)  # fine
    with pytest.raises(ValueError, match="dim 0 has length 20"):
        random_hadamard_transform(x, dim=0)


@pytest.mark.parametrize(
    "signs",
    [torch.ones(8), torch.ones(16) * 2, torch.zeros(16), torch.ones(4, 4)],
    ids=["wrong-length", "not-unit", "zeros", "wrong-shape"],
)
def test_hadamard_bad_signs(signs: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"signs must be a \(16,\) tensor of ±1"):
        random_hadamard_transform(torch.ones(2, 32), signs=signs)


@pytest.mark.parametrize("x", [torch.ones(2, 16, dtype=torch.int32), [[1.0] * 16]], ids=["int", "list"])
def test_hadamard_non_float_input(x: object) -> None:
    with pytest.raises(ValueError, match="needs a floating-point torch.Tensor"):
        random_hadamard_transform(x)  # type: ignore[arg-type]


def test_hadamard_empty_input() -> None:
    with pytest.raises(ValueError, match="is empty"):
        random_hadamard_transform(torch.ones(0, 16))


# --- strict non-finite checking ------------------------------------------------------------------


def test_non_finite_error_is_a_value_error() -> None:
    assert issubclass(NonFiniteError, ValueError)


@pytest.mark.parametrize("name", QUANTIZERS)
def test_strict_raises_with_count_and_first_index(name: str) -> None:
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(0))
    x[1, 70] = float("inf")
    x[2, 3] = float("nan")
    x[3, 100] = float("-inf")
    with pytest.raises(NonFiniteError, match=r"contains 3 non-finite value\(s\).*\(row, col\)=\(1, 70\)") as info:
        QUANTIZERS[name](x, strict=True)
    assert "inf" in str(info.value)  # the first bad value itself is reported


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_strict_reports_the_2d_view_position_for_nd_input(dtype: torch.dtype) -> None:
    x = torch.zeros(2, 3, 32, dtype=dtype)
    x[1, 2, 5] = float("nan")  # row 1*3 + 2 = 5 of the (6, 32) view
    with pytest.raises(NonFiniteError, match=r"contains 1 non-finite value\(s\).*\(row, col\)=\(5, 5\)"):
        quantize_nvfp4(x, strict=True)


@pytest.mark.parametrize("name", QUANTIZERS)
def test_strict_accepts_finite_input_unchanged(name: str) -> None:
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(1))
    loose, strict = QUANTIZERS[name](x), QUANTIZERS[name](x, strict=True)
    assert torch.equal(loose.dequantize(), strict.dequantize())


@pytest.mark.parametrize("name", QUANTIZERS)
def test_not_strict_does_not_raise_but_propagates_nan(name: str) -> None:
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(2))
    x[0, 0] = float("nan")
    deq = QUANTIZERS[name](x).dequantize()
    assert deq[0, :16].isnan().all()


@pytest.mark.parametrize("amax", [-1.0, -0.0])
def test_negative_global_amax_is_rejected(amax: float) -> None:
    with pytest.raises(ValueError, match="global_amax must be >= 0"):
        quantize_nvfp4(torch.ones(2, 16), global_amax=amax)
