"""MXFP4 (E2M1 in 32-blocks, UE8M0 power-of-two scales) against the oracle and its scale rules.

Why both rules: "ceil" (the paper's MXFP4 baseline) must never saturate; "floor" is the OCP MX
definition, which may. Getting the exponent off by one silently costs a bit of range or precision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nvfp4 import quantize_mxfp4
from tests.formats import oracle as O
from tests.formats.test_nvfp4 import float_matrices, make_data

RULES = ["ceil", "floor"]


def scale_bytes(m) -> np.ndarray:
    return m.scales.view(torch.uint8).numpy()


def assert_matches_oracle(x: torch.Tensor, rule: str, stochastic: bool = False, seed: int = 0, offset: int = 0):
    m = quantize_mxfp4(x, stochastic=stochastic, seed=seed, offset=offset, scale_rule=rule)
    k = x.shape[-1]
    x2d = x.float().reshape(-1, k).numpy()
    codes, sbytes = O.quantize_mxfp4(x2d, rule, stochastic, seed, offset)
    nb = -(-k // 32)
    assert m.packed.dtype == torch.uint8 and m.packed.shape == (x2d.shape[0], nb * 16)
    assert m.scales.dtype == torch.float8_e8m0fnu and m.scales.shape == (x2d.shape[0], nb)
    np.testing.assert_array_equal(m.codes().numpy(), codes)
    np.testing.assert_array_equal(scale_bytes(m), sbytes)
    # dequant = value(q) · 2^e, exact in FP32 (NaN for a 0xFF scale)
    scale = np.where(sbytes == 0xFF, np.nan, np.ldexp(1.0, sbytes.astype(np.int64) - 127))
    with np.errstate(over="ignore"):  # 4·2^126 for an amax near FLT_MAX overflows to inf in FP32, in both
        expected = (O.e2m1_value(codes) * np.repeat(scale, 32, axis=1)[:, :k]).astype(np.float32)
    deq = m.dequantize()
    assert deq.shape == x.shape
    np.testing.assert_array_equal(deq.reshape(-1, k).numpy(), expected)


@pytest.mark.parametrize("stochastic", [False, True], ids=["rn", "sr"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(
    "kind", ["normal", "student_t", "lognormal", "tiny", "huge", "mixed_elements", "sparse_zero_blocks", "all_zero"]
)
def test_matches_oracle(kind: str, rule: str, stochastic: bool) -> None:
    x = torch.from_numpy(make_data(kind, (9, 100), seed=31))
    assert_matches_oracle(x, rule, stochastic, seed=77, offset=5)


@pytest.mark.parametrize("shape", [(1, 1), (3, 33), (5, 31), (2, 3, 64)])
@pytest.mark.parametrize("rule", RULES)
def test_odd_shapes_and_nd(shape: tuple[int, ...], rule: str) -> None:
    x = torch.from_numpy(np.random.default_rng(32).standard_t(3, shape).astype(np.float32))
    assert_matches_oracle(x, rule)
    assert_matches_oracle(x, rule, stochastic=True, seed=9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    x = torch.from_numpy(make_data("student_t", (4, 64), seed=33)).clamp(-6e4, 6e4).to(dtype)
    assert_matches_oracle(x, "ceil")


@settings(max_examples=80, deadline=None)
@given(x=float_matrices())
def test_ceil_rule_never_saturates_and_is_tight(x: np.ndarray) -> None:
    """|x| <= 6·2^e for every element, and 2^e is the smallest such power of two (unless clamped)."""
    m = quantize_mxfp4(torch.from_numpy(x), scale_rule="ceil")
    e = np.repeat(scale_bytes(m).astype(np.int64) - 127, 32, axis=1)[:, : x.shape[1]]
    ax = np.abs(x.astype(np.float64))
    assert (ax <= 6.0 * np.ldexp(1.0, e)).all()
    rows, cols = x.shape
    pad = np.zeros((rows, -(-cols // 32) * 32))
    pad[:, :cols] = ax
    amax_b = pad.reshape(rows, -1, 32).max(axis=-1)
    e_b = scale_bytes(m).astype(np.int64) - 127
    tight = (amax_b > 6.0 * np.ldexp(1.0, e_b - 1)) | (e_b == -127)
    assert tight.all()
    # no saturation means the largest value keeps its leading bit: deq_max >= amax_b · 2/3 (grid 4 vs 6)
    deq = np.abs(m.dequantize().numpy().astype(np.float64))
    dpad = np.zeros_like(pad)
    dpad[:, :cols] = deq
    big = amax_b > 1e-30
    assert (dpad.reshape(rows, -1, 32).max(axis=-1)[big] >= amax_b[big] * 0.5).all()


@settings(max_examples=80, deadline=None)
@given(x=float_matrices())
def test_floor_rule_is_ocp(x: np.ndarray) -> None:
    """OCP MX: e = floor(log2 amax_b) − 2, i.e. 2^(e+2) <= amax_b < 2^(e+3), clamped at E8M0's 2^-127;
    values beyond 6·2^e saturate."""
    m = quantize_mxfp4(torch.from_numpy(x), scale_rule="floor")
    rows, cols = x.shape
    pad = np.zeros((rows, -(-cols // 32) * 32))
    pad[:, :cols] = np.abs(x.astype(np.float64))
    amax_b = pad.reshape(rows, -1, 32).max(axis=-1)
    e_b = scale_bytes(m).astype(np.int64) - 127
    free = e_b > -127  # not clamped: the bracket must hold exactly
    assert (np.ldexp(1.0, e_b[free] + 2) <= amax_b[free]).all()
    assert (amax_b[free] < np.ldexp(1.0, e_b[free] + 3)).all()
    assert (amax_b[~free] < 2.0**-124).all()  # clamped only when floor(log2 amax_b) − 2 <= −127
    vals = np.abs(O.e2m1_value(m.codes().numpy()))
    assert (vals <= 6).all()


def test_floor_rule_saturates_where_ceil_does_not() -> None:
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = 7.0, 1.0
    floor = quantize_mxfp4(x, scale_rule="floor")  # e = floor(log2 7) − 2 = 0: 7 saturates to 6
    ceil = quantize_mxfp4(x, scale_rule="ceil")  # e = ceil(log2 7/6) = 1: 7/2 = 3.5 -> 4
    assert scale_bytes(floor).tolist() == [[127]] and scale_bytes(ceil).tolist() == [[128]]
    assert floor.dequantize()[0, :2].tolist() == [6.0, 1.0]
    assert ceil.dequantize()[0, :2].tolist() == [8.0, 1.0]


@pytest.mark.parametrize(
    "amax, ceil_e, floor_e",
    [
        (6.0, 0, 0),  # amax/6 = 1 exactly: ceil(log2 1) = 0, not 1
        (12.0, 1, 1),
        (3.0, -1, -1),
        (6.0 * 2.0**-100, -100, -100),
        (6.0 * 2.0**100, 100, 100),
        (8.0, 1, 1),  # exact power of two: log2(8/6) = 0.415 -> 1; floor(log2 8) − 2 = 1
        (4.0, 0, 0),
        (float(np.nextafter(np.float32(6.0), np.float32(7.0))), 1, 0),  # just above 6 needs the next power
        (float(np.nextafter(np.float32(6.0), np.float32(0.0))), 0, 0),
        (float(np.nextafter(np.float32(8.0), np.float32(0.0))), 1, 0),  # just below 8: floor(log2) = 2
        (2.0**-130, -127, -127),  # clamped to the smallest E8M0 scale
        (float(np.finfo(np.float32).max), 126, 125),
    ],
)
def test_exponent_edge_cases(amax: float, ceil_e: int, floor_e: int) -> None:
    x = torch.zeros(2, 32)
    x[0, 7] = amax
    x[1, 9] = -amax
    for rule, e in (("ceil", ceil_e), ("floor", floor_e)):
        m = quantize_mxfp4(x, scale_rule=rule)
        assert scale_bytes(m).tolist() == [[e + 127], [e + 127]], rule
        assert_matches_oracle(x, rule)
    assert O.mx_exponent(float(np.float32(amax)), "ceil") == ceil_e  # the oracle agrees with the hand values


def test_ceil_rule_exponent_when_amax_over_6_is_subnormal() -> None:
    """amax_b = nextafter(6·2^-127) (a normal FP32): exactly, log2(amax_b/6) is just above −127, so e = −126.

    FP32 amax_b/6 = 2^-127 + 2^-150.6 rounds to the subnormal 2^-127, which makes the library pick −127;
    then amax_b / 2^-127 = 6 + 2^-21 > 6 saturates — the one thing the ceil rule promises never happens.
    """
    amax = np.nextafter(np.float32(6.0 * 2.0**-127), np.float32(1.0))
    x = torch.zeros(1, 32)
    x[0, 0] = float(amax)
    m = quantize_mxfp4(x, scale_rule="ceil")
    assert O.mx_exponent(float(amax), "ceil") == -126
    assert scale_bytes(m).tolist() == [[-126 + 127]]


def test_zero_and_tiny_blocks() -> None:
    x = torch.zeros(1, 96)
    x[0, 40] = 1e-42  # FP32 subnormal: scale clamps at 2^-127
    m = quantize_mxfp4(x)
    assert scale_bytes(m).tolist() == [[0, 0, 0]]
    assert (m.codes() == 0).all()
    assert torch.equal(m.dequantize(), torch.zeros(1, 96))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_block_gets_nan_scale(bad: float, rule: str) -> None:
    x_np = make_data("normal", (3, 96), seed=34)
    x_np[1, 40] = bad
    m = quantize_mxfp4(torch.from_numpy(x_np), scale_rule=rule)
    sb = scale_bytes(m)
    assert sb[1, 1] == 0xFF
    mask = np.ones_like(sb, dtype=bool)
    mask[1, 1] = False
    assert (sb[mask] != 0xFF).all()
    deq = m.dequantize().numpy()
    assert np.isnan(deq[1, 32:64]).all()
    good = np.ones(deq.shape, dtype=bool)
    good[1, 32:64] = False
    assert np.isfinite(deq[good]).all()
    codes, sbytes = O.quantize_mxfp4(x_np, rule)
    np.testing.assert_array_equal(sb, sbytes)
    np.testing.assert_array_equal(m.codes().numpy(), codes)
    assert (m.codes()[1, 32:64] == 0).all()  # the NaN/Inf block's codes are 0, as in NVFP4


def test_sr_deterministic_and_seeded() -> None:
    x = torch.from_numpy(make_data("normal", (16, 64), seed=35))
    a = quantize_mxfp4(x, stochastic=True, seed=1)
    b = quantize_mxfp4(x, stochastic=True, seed=1)
    c = quantize_mxfp4(x, stochastic=True, seed=2)
    d = quantize_mxfp4(x, stochastic=True, seed=1, offset=1)
    assert torch.equal(a.packed, b.packed)
    assert (a.codes() != c.codes()).float().mean() > 0.1
    assert (a.codes() != d.codes()).float().mean() > 0.1
    assert torch.equal(a.scales.view(torch.uint8), c.scales.view(torch.uint8))


@settings(max_examples=40, deadline=None)
@given(x=float_matrices(), seed=st.integers(0, 2**63))
def test_sr_picks_a_neighbour(x: np.ndarray, seed: int) -> None:
    m = quantize_mxfp4(torch.from_numpy(x), stochastic=True, seed=seed)
    scale = np.repeat(np.ldexp(1.0, scale_bytes(m).astype(np.int64) - 127), 32, axis=1)[:, : x.shape[1]]
    v = np.minimum(np.abs(x.astype(np.float64)) / scale, 6.0)
    lo, hi = O.grid_neighbours(v)
    got = np.abs(O.e2m1_value(m.codes().numpy()))
    assert ((got == lo) | (got == hi)).all()


def test_scale_is_a_power_of_two_dequant() -> None:
    x = torch.from_numpy(make_data("lognormal", (4, 64), seed=36))
    m = quantize_mxfp4(x)
    e = m.scale_exponents()
    assert torch.equal(m.scales.float(), torch.tensor(2.0) ** e.float())
    assert len(torch.unique(e)) > 3
