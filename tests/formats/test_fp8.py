"""Blockwise FP8 E4M3 (the paper's FP8 baseline) against the oracle, plus its error bound.

Why: the FP8 runs are the reference the NVFP4 loss gap is measured against, so the baseline must be
an honest E4M3 (RNE, saturating at 448, FP32 scale amax_b/448) and not silently lossier or better.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nvfp4 import quantize_fp8_blockwise
from tests.formats import oracle as O
from tests.formats.test_nvfp4 import float_matrices, make_data

TILES = [(1, 128), (128, 128)]


def assert_matches_oracle(x: torch.Tensor, tile: tuple[int, int]) -> None:
    f = quantize_fp8_blockwise(x, tile=tile)
    k = x.shape[-1]
    x2d = x.float().reshape(-1, k).numpy()
    data, scales = O.quantize_fp8(x2d, tile)
    assert f.data.dtype == torch.float8_e4m3fn and f.data.shape == x2d.shape
    assert f.scales.dtype == torch.float32 and f.scales.shape == (x2d.shape[0], -(-k // 128))
    nan = np.isnan(O.e4m3_decode(data))
    got = f.data.view(torch.uint8).numpy()
    np.testing.assert_array_equal(np.isnan(f.data.float().numpy()), nan)
    np.testing.assert_array_equal(got[~nan], data[~nan])
    np.testing.assert_array_equal(f.scales.numpy(), scales)
    with np.errstate(invalid="ignore"):
        expected = O.e4m3_decode(data) * np.repeat(scales, 128, axis=1)[:, :k]
    deq = f.dequantize()
    assert deq.shape == x.shape
    np.testing.assert_array_equal(deq.reshape(-1, k).numpy(), expected.astype(np.float32))


@pytest.mark.parametrize("tile", TILES, ids=["1x128", "128x128"])
@pytest.mark.parametrize(
    "kind",
    [
        "normal",
        "student_t",
        "lognormal",
        "tiny",
        "huge",
        "fp32_subnormal",
        "mixed_elements",
        "sparse_zero_blocks",
        "all_zero",
    ],
)
def test_matches_oracle(kind: str, tile: tuple[int, int]) -> None:
    x = torch.from_numpy(make_data(kind, (130, 300), seed=41))
    assert_matches_oracle(x, tile)


@pytest.mark.parametrize("tile", TILES, ids=["1x128", "128x128"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (129, 129), (2, 5, 128)])
def test_odd_shapes(shape: tuple[int, ...], tile: tuple[int, int]) -> None:
    x = torch.from_numpy(np.random.default_rng(42).standard_t(3, shape).astype(np.float32))
    assert_matches_oracle(x, tile)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    x = torch.from_numpy(make_data("student_t", (8, 256), seed=43)).clamp(-6e4, 6e4).to(dtype)
    assert_matches_oracle(x, (1, 128))


def test_128x128_tile_scale_is_shared() -> None:
    r = np.random.default_rng(44)
    x = r.standard_normal((200, 300)).astype(np.float32)
    x[150, 10] = 1000.0  # tile (1, 0) amax
    f = quantize_fp8_blockwise(torch.from_numpy(x), tile=(128, 128))
    s = f.scales.numpy()
    assert s.shape == (200, 3)
    for tr, rows in enumerate((slice(0, 128), slice(128, 200))):
        for tc in range(3):
            block = np.abs(x[rows, tc * 128 : (tc + 1) * 128])
            assert (s[rows, tc] == np.float32(block.max()) / np.float32(448)).all(), (tr, tc)
    assert s[150, 0] == np.float32(1000.0) / np.float32(448.0)


@pytest.mark.parametrize("tile", TILES, ids=["1x128", "128x128"])
def test_block_max_saturates_at_448(tile: tuple[int, int]) -> None:
    x = make_data("lognormal", (130, 260), seed=45)
    f = quantize_fp8_blockwise(torch.from_numpy(x), tile=tile)
    tr, tc = tile
    data = np.abs(f.data.float().numpy())
    prow, pcol = -(-130 // tr) * tr, -(-260 // tc) * tc
    pad = np.zeros((prow, pcol))
    pad[:130, :260] = data
    block_max = pad.reshape(prow // tr, tr, pcol // tc, tc).max(axis=(1, 3))
    assert (block_max == 448.0).all()  # every block uses the full E4M3 range, never beyond it
    assert (np.abs(f.data.view(torch.uint8).numpy()) & 0x7F != 0x7F).all()  # and no NaN


def test_zero_block_scale_one_and_nonfinite_block_nan() -> None:
    x = np.random.default_rng(46).standard_normal((3, 384)).astype(np.float32)
    x[0, 128:256] = 0.0
    x[2, 300] = np.nan
    x[1, 5] = np.inf
    f = quantize_fp8_blockwise(torch.from_numpy(x))
    s = f.scales.numpy()
    assert s[0, 1] == 1.0
    assert np.isnan(s[2, 2]) and np.isnan(s[1, 0])
    assert np.isfinite(np.delete(s.ravel(), [1 * 3 + 0, 2 * 3 + 2])).all()
    deq = f.dequantize().numpy()
    assert np.isnan(deq[2, 256:]).all() and np.isnan(deq[1, :128]).all()
    good = np.ones(deq.shape, dtype=bool)
    good[2, 256:] = False
    good[1, :128] = False
    assert np.isfinite(deq[good]).all()
    assert (deq[0, 128:256] == 0).all()


def test_e4m3_table_and_oracle_cross_check_ml_dtypes() -> None:
    """The oracle's own E4M3 rounding agrees with ml_dtypes' cast (RNE) on midpoints and random values."""
    import ml_dtypes  # a dev dependency: a missing one must fail, not skip

    table = O.E4M3_TABLE
    assert table[-1] == 448.0 and table[1] == 2.0**-9 and len(table) == 127
    mids = (table[:-1] + table[1:]) / 2
    r = np.random.default_rng(47)
    vals = np.concatenate([mids, table, r.standard_normal(5000) * 10.0 ** r.uniform(-4, 2.7, 5000)])
    vals = np.concatenate([vals, -vals]).astype(np.float32)
    vals = vals[np.abs(vals) <= 448]
    ours = O.e4m3_rne_satfinite(vals)
    theirs = vals.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    np.testing.assert_array_equal(ours, theirs)
    # ties really go to the even byte, e.g. 1.0625 (between 1 and 1.125) -> 1.0 and 1.1875 -> 1.25
    assert O.e4m3_decode(O.e4m3_rne_satfinite(np.float32([1.0625, 1.1875, 2.0**-10]))).tolist() == [1.0, 1.25, 0.0]


@settings(max_examples=60, deadline=None)
@given(x=float_matrices(max_rows=8, max_cols=300), tile=st.sampled_from(TILES))
def test_error_bound(x: np.ndarray, tile: tuple[int, int]) -> None:
    """|x − deq| <= max(2^-4·|x|, 2^-10·s_b): half an E4M3 ulp (3-bit mantissa), or half the least subnormal."""
    f = quantize_fp8_blockwise(torch.from_numpy(x), tile=tile)
    s = np.repeat(f.scales.numpy().astype(np.float64), 128, axis=1)[:, : x.shape[1]]
    xd = x.astype(np.float64)
    err = np.abs(xd - f.dequantize().numpy())
    bound = np.maximum(2.0**-4 * np.abs(xd), 2.0**-10 * s) * (1 + 2.0**-18) + 2.0**-20 * np.abs(xd)
    assert (err <= bound).all()
