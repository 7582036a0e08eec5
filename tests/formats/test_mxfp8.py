"""MXFP8 (E4M3 in 32-blocks, E8M0 scales rounded up: Transformer Engine's MXFP8) against the NumPy oracle.

Why the edge cases: the scale is s = amax·FP32(1/448) rounded UP to a power of two, so an amax of exactly 448·2^k
lands on either side of 2^k depending on the FP32 product; TE encodes a block with biased exponent 0 with the
factor 1 (its values vanish); and a NaN/Inf block must dequantize to NaN, never to finite garbage.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from nvfp4 import MXFP8Tensor, quantize_mxfp8
from nvfp4.formats.mxfp8 import reference_quantize_mxfp8_2d
from tests.formats import oracle as O
from tests.formats.test_nvfp4 import float_matrices, make_data

KINDS = [
    "normal",
    "student_t",
    "lognormal",
    "tiny",
    "huge",
    "fp32_subnormal",
    "mixed_rows",
    "mixed_elements",
    "sparse_zero_blocks",
    "all_zero",
    "grid_values",
]


def assert_matches_oracle(x: torch.Tensor, backend: str = "auto") -> MXFP8Tensor:
    q = quantize_mxfp8(x, backend=backend)
    k = x.shape[-1]
    x2d = x.float().reshape(-1, k).numpy()
    data, sbytes = O.quantize_mxfp8(x2d)
    assert q.data.dtype == torch.float8_e4m3fn and q.data.shape == x2d.shape
    assert q.scales.dtype == torch.float8_e8m0fnu and q.scales.shape == (x2d.shape[0], -(-k // 32))
    np.testing.assert_array_equal(q.scales.view(torch.uint8).numpy(), sbytes)
    np.testing.assert_array_equal(q.data.view(torch.uint8).numpy(), data)
    scale = np.where(sbytes == 0xFF, np.nan, np.ldexp(1.0, sbytes.astype(np.int64) - 127))
    with np.errstate(over="ignore", invalid="ignore"):
        expected = (O.e4m3_decode(data).astype(np.float64) * np.repeat(scale, 32, axis=1)[:, :k]).astype(np.float32)
    np.testing.assert_array_equal(q.dequantize().reshape(-1, k).numpy(), expected)
    return q


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_oracle(kind: str, backend: str) -> None:
    assert_matches_oracle(torch.from_numpy(make_data(kind, (9, 100), seed=41)), backend)


@pytest.mark.parametrize("shape", [(1, 1), (3, 33), (5, 31), (2, 3, 64), (4, 95)])
def test_odd_shapes_and_nd(shape: tuple[int, ...]) -> None:
    x = torch.from_numpy(np.random.default_rng(42).standard_t(3, shape).astype(np.float32))
    q = assert_matches_oracle(x)
    assert q.dequantize().shape == x.shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_quantize_their_float32_values(dtype) -> None:
    x = torch.from_numpy(make_data("student_t", (6, 64), seed=43)).to(dtype)
    q, ref = quantize_mxfp8(x), quantize_mxfp8(x.float())
    assert torch.equal(q.data.view(torch.uint8), ref.data.view(torch.uint8))
    assert torch.equal(q.scales.view(torch.uint8), ref.scales.view(torch.uint8))


def test_scale_boundaries_round_up() -> None:
    """amax = 448·2^k, just above and just below: the FP32 product amax·(1/448) decides which side of 2^k."""
    rows = []
    for k in (-20, -3, 0, 1, 7, 40):
        for amax in (
            448.0 * 2.0**k,
            float(np.nextafter(np.float32(448.0 * 2.0**k), np.float32(np.inf))),
            float(np.nextafter(np.float32(448.0 * 2.0**k), np.float32(0))),
        ):
            row = np.full(32, amax / 3, dtype=np.float32)
            row[5] = -amax
            rows.append(row)
    q = assert_matches_oracle(torch.from_numpy(np.stack(rows)))
    # no value saturates by more than the FP32 product's rounding: |x| / 2^e <= 448 * (1 + 2^-23)
    exps = q.scale_exponents().to(torch.float64)[:, 0]
    amax = torch.from_numpy(np.stack(rows)).abs().amax(dim=1).double()
    assert bool((amax <= 448 * (1 + 2**-22) * 2**exps).all())


def test_biased_exponent_zero_uses_factor_one_like_transformer_engine() -> None:
    """A block with amax <= 448·2^-127 gets the scale 2^-127 and TE's encode factor 1: its values become zeros."""
    x = torch.full((1, 32), 1e-37)
    q = assert_matches_oracle(x)
    assert q.scales.view(torch.uint8).item() == 0
    assert bool((q.dequantize() == 0).all())
    bigger = torch.full((1, 32), 1e-35)  # biased exponent 1: encoded properly
    assert (quantize_mxfp8(bigger).dequantize() - bigger).abs().max() <= 1e-35 / 8


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_blocks_become_nan(bad: float) -> None:
    x = torch.randn(2, 64)
    x[1, 40] = bad
    q = assert_matches_oracle(x)
    assert q.scales.view(torch.uint8)[1, 1].item() == 0xFF
    deq = q.dequantize()
    assert bool(deq[1, 32:].isnan().all()) and bool(deq[:, :32].isfinite().all()) and bool(deq[0].isfinite().all())


def test_strict_refuses_non_finite() -> None:
    x = torch.randn(2, 64)
    x[0, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        quantize_mxfp8(x, strict=True)


@settings(max_examples=60, deadline=None)
@given(float_matrices())
def test_property_matches_oracle_and_bounds_the_error(x: np.ndarray) -> None:
    t = torch.from_numpy(x)
    q = assert_matches_oracle(t)
    data, scales = reference_quantize_mxfp8_2d(t)
    assert torch.equal(q.data.view(torch.uint8), data.view(torch.uint8))
    # E4M3 keeps 3 mantissa bits: a normal value's relative error is at most 2^-4; the absolute error of any value
    # is at most half the block's E4M3 subnormal step 2^-9 · 2^e, plus that bound
    e = q.scale_exponents().repeat_interleave(32, dim=1)[:, : x.shape[1]].to(torch.float64)
    err = (q.dequantize().double() - t.double()).abs()
    bound = t.double().abs() * 2.0**-4 + 2.0 ** (e - 10)
    assert bool((err <= bound).all())


def test_reference_scale_function_matches_the_bit_rule_everywhere() -> None:
    """e8m0_round_up on every FP32 exponent with zero, tiny and full mantissas, against the oracle's frexp rule."""
    from nvfp4.formats.mxfp8 import e8m0_round_up

    values = [0.0] + [
        math.ldexp(m, e)
        for e in range(-149, 128)
        for m in (1.0, 1.5, 1.0 + 2**-23)
        if math.ldexp(m, e) < float(np.finfo(np.float32).max)
    ]
    s = torch.tensor(values, dtype=torch.float32)
    want = []
    for v in s.tolist():
        m, k = math.frexp(v)
        want.append(0 if v == 0 else max(0, min(254, (k - 1 if m == 0.5 else k) + 127)))
    assert e8m0_round_up(s).tolist() == want
