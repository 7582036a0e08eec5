"""NVFP4 quantization (SPEC §2, §3) against the independent NumPy oracle, plus properties.

Why bit-exact: every backend and every run must produce the same codes and scales (resumable,
device-independent training), so "close" is not good enough; the properties then check that the
bit-exact result is also numerically sensible (error bounds derived from the format).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nvfp4 import kernels, quantize_nvfp4
from nvfp4.formats.e2m1 import pack_codes, unpack_codes
from nvfp4.formats.nvfp4 import global_decode_scale, global_encode_scale
from tests.formats import oracle as O

F32 = np.float32
BACKENDS = kernels.available_backends("cpu")
TILES = [(1, 16), (16, 16)]


# --- helpers -----------------------------------------------------------------------------------


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_matches_oracle(
    x: torch.Tensor,
    tile: tuple[int, int] = (1, 16),
    stochastic: bool = False,
    seed: int = 0,
    offset: int = 0,
    global_amax: float | None = None,
    backend: str = "auto",
) -> None:
    """Codes, scale bytes, tensor amax and dequantized values equal the oracle, bit for bit."""
    q = quantize_nvfp4(
        x, tile=tile, stochastic=stochastic, seed=seed, global_amax=global_amax, offset=offset, backend=backend
    )
    k = x.shape[-1]
    x2d = x.float().reshape(-1, k).numpy()
    o = O.quantize_nvfp4(x2d, tile[0], stochastic, seed, offset, global_amax)
    m, nb = x2d.shape[0], -(-k // 16)
    assert q.packed.dtype == torch.uint8 and q.packed.shape == (m, nb * 8)
    assert q.scales.dtype == torch.float8_e4m3fn and q.scales.shape == (m, nb)
    assert q.global_amax.dtype == torch.float32 and q.global_amax.dim() == 0
    np.testing.assert_array_equal(np.float32(float(q.decode_scale)), o.s_dec)  # S_dec = 1 / S_enc, FP32
    np.testing.assert_array_equal(q.codes().numpy(), o.codes)
    got_scales = q.scales.view(torch.uint8).numpy()
    nan = np.isnan(o.scales)  # a NaN byte may be 0x7F or 0xFF
    np.testing.assert_array_equal(np.isnan(q.scales.float().numpy()), nan)
    np.testing.assert_array_equal(got_scales[~nan], o.scale_bytes[~nan])
    deq = q.dequantize()
    assert deq.shape == x.shape and deq.dtype == torch.float32
    np.testing.assert_array_equal(deq.reshape(-1, k).numpy(), o.dequantize())


def make_data(kind: str, shape: tuple[int, int] = (33, 70), seed: int = 0) -> np.ndarray:
    """Named test distributions, float32."""
    r = _rng(seed)
    m, k = shape
    if kind == "normal":
        x = r.standard_normal(shape)
    elif kind == "student_t":
        x = r.standard_t(2.0, shape)
    elif kind == "lognormal":
        x = r.lognormal(0.0, 3.0, shape) * r.choice([-1.0, 1.0], shape)
    elif kind == "tiny":
        x = r.standard_normal(shape) * 1e-30
    elif kind == "huge":
        x = r.standard_normal(shape) * 1e30
    elif kind == "fp32_subnormal":
        x = r.standard_normal(shape) * 1e-40
    elif kind == "mixed_rows":  # each row at its own magnitude, 1e-20 .. 1e20
        x = r.standard_normal(shape) * 10.0 ** np.linspace(-20, 20, m)[:, None]
    elif kind == "mixed_elements":
        x = r.standard_normal(shape) * 10.0 ** r.uniform(-20, 20, shape)
    elif kind == "sparse_zero_blocks":
        x = r.standard_normal(shape)
        x[:, 16:32] = 0.0
        x[::3] = 0.0
        x[1, 40:] = -0.0
    elif kind == "all_zero":
        x = np.zeros(shape)
    elif kind == "grid_values":  # E2M1 values × 2^k, ±6·2^k in every 1x16 block (exact if S_enc = 1)
        x = r.choice(O.E2M1_VALUES, shape)
        x[:, ::16] = r.choice([-6.0, 6.0], x[:, ::16].shape)
        x = x * 2.0 ** r.integers(-4, 4, (m, 1))
    else:
        raise AssertionError(kind)
    return x.astype(np.float32)


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


# --- bit-exact against the oracle --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stochastic", [False, True], ids=["rn", "sr"])
@pytest.mark.parametrize("tile", TILES, ids=["1x16", "16x16"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_oracle(kind: str, tile: tuple[int, int], stochastic: bool, backend: str) -> None:
    x = torch.from_numpy(make_data(kind))
    assert_matches_oracle(x, tile=tile, stochastic=stochastic, seed=1234, offset=7, backend=backend)


def test_oracle_data_is_not_degenerate() -> None:
    """Guard for the test above: the distributions really exercise all codes and many scales."""
    o = O.quantize_nvfp4(make_data("student_t"), 1)
    assert len(np.unique(o.codes)) == 16
    assert len(np.unique(o.scale_bytes)) > 30
    o = O.quantize_nvfp4(make_data("mixed_rows"), 1)
    assert (o.scale_bytes == 0).any() and (o.scale_bytes > 0x70).any()  # underflowed and large scales


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tile", TILES, ids=["1x16", "16x16"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (33, 15), (17, 100), (16, 16), (1, 16), (2, 31), (40, 1)])
@pytest.mark.parametrize("stochastic", [False, True], ids=["rn", "sr"])
def test_odd_shapes(shape: tuple[int, int], tile: tuple[int, int], stochastic: bool, backend: str) -> None:
    x = torch.from_numpy(make_data("student_t", shape, seed=shape[0] * 1000 + shape[1]))
    assert_matches_oracle(x, tile=tile, stochastic=stochastic, seed=99, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stochastic", [False, True], ids=["rn", "sr"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 20), (4, 3, 32), (48,)])
def test_nd_inputs_use_2d_view_and_restore_shape(shape: tuple[int, ...], stochastic: bool, backend: str) -> None:
    x = torch.from_numpy(_rng(3).standard_normal(shape).astype(np.float32))
    assert_matches_oracle(x, stochastic=stochastic, seed=5, backend=backend)
    q = quantize_nvfp4(x)
    assert q.dequantize().shape == x.shape
    assert q.dequantize(torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stochastic", [False, True], ids=["rn", "sr"])
@pytest.mark.parametrize("tile", TILES, ids=["1x16", "16x16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_input_dtypes(dtype: torch.dtype, tile: tuple[int, int], stochastic: bool, backend: str) -> None:
    x = torch.from_numpy(make_data("student_t", (20, 48), seed=11)).clamp(-6e4, 6e4).to(dtype)
    assert_matches_oracle(x, tile=tile, stochastic=stochastic, seed=3, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tile", TILES, ids=["1x16", "16x16"])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_caller_given_global_amax(tile: tuple[int, int], as_tensor: bool, backend: str) -> None:
    x_np = make_data("normal", (20, 40), seed=4)
    amax = float(np.abs(x_np).max()) * 10.0  # e.g. an amax reduced over ranks: larger than the local one
    given = torch.tensor(amax) if as_tensor else amax
    q = quantize_nvfp4(torch.from_numpy(x_np), tile=tile, global_amax=given, backend=backend)
    assert float(q.global_amax) == float(F32(amax))
    assert_matches_oracle(torch.from_numpy(x_np), tile=tile, global_amax=amax, backend=backend)
    assert_matches_oracle(torch.from_numpy(x_np), tile=tile, global_amax=amax, stochastic=True, backend=backend)
    # a larger global amax must give different (smaller) block scales than the local one
    local = quantize_nvfp4(torch.from_numpy(x_np), tile=tile)
    assert (q.scales.float() < local.scales.float()).all()


def test_all_zero_tensor_is_all_zero() -> None:
    x = torch.zeros(5, 37)
    q = quantize_nvfp4(x)
    assert (q.packed == 0).all() and (q.scales.view(torch.uint8) == 0).all()
    assert float(q.global_amax) == 0.0
    assert float(q.decode_scale) == float(F32(1) / np.finfo(np.float32).max)  # S_enc = FLT_MAX
    assert torch.equal(q.dequantize(), x)
    assert not q.dequantize().isnan().any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_below_fp32_normal_range_follows_the_formula(backend: str) -> None:
    """x = FLT_MIN (2^-126): S_enc = min(2688/x, FLT_MAX) = FLT_MAX, s_b = e4m3(2^-126·FLT_MAX/6) = 0.6875,
    s_b·S_dec ≈ 2.0e-39 so enc_b = min(1/that, FLT_MAX) = FLT_MAX and v = 4 (not 5.8): dequant 0.6875·4·S_dec.
    A 31% error, but the SPEC's arithmetic — all backends must agree on it."""
    tiny = float(np.finfo(np.float32).tiny)
    x = torch.tensor([[tiny, -tiny / 2, 0.0, 3e-39]])
    q = quantize_nvfp4(x, backend=backend)
    assert q.scales.float()[0, 0] == 0.6875
    assert O.e2m1_value(q.codes().numpy())[0, 0] == 4.0
    assert float(q.dequantize()[0, 0]) == float(F32(F32(4 * 0.6875) * F32(float(q.decode_scale))))
    assert_matches_oracle(x, backend=backend)
    assert_matches_oracle(x, stochastic=True, seed=3, backend=backend)


def test_exact_ties_round_to_even() -> None:
    """x·enc lands exactly on every E2M1 midpoint (both signs); SPEC §2 threshold table decides."""
    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=np.float32)
    expected_mag = np.array([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0], dtype=np.float32)
    rows = []
    for k in range(-3, 4):  # global amax 2688 -> S_enc = 1 and s_b = 2^k exactly, so v = x / 2^k
        rows.append(np.concatenate([[6.0], mids, -mids, [-6.0]]) * 2.0**k)
    x = np.array(rows, dtype=np.float32)
    q = quantize_nvfp4(torch.from_numpy(x), global_amax=2688.0 * 2.0**3)
    o = O.quantize_nvfp4(x, 1, global_amax=2688.0 * 2.0**3)
    np.testing.assert_array_equal(q.codes().numpy(), o.codes)
    np.testing.assert_array_equal(q.scales.view(torch.uint8).numpy(), o.scale_bytes)
    scales = q.scales.float().numpy()[:, 0]
    np.testing.assert_array_equal(scales, 2.0 ** np.arange(-3, 4) / 8)
    values = O.e2m1_value(q.codes().numpy())
    np.testing.assert_array_equal(values[:, 1:8], np.tile(expected_mag, (7, 1)))
    np.testing.assert_array_equal(values[:, 8:15], np.tile(-expected_mag, (7, 1)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tile", TILES, ids=["1x16", "16x16"])
def test_exact_ties_in_tiles_match_oracle(tile: tuple[int, int], backend: str) -> None:
    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=np.float32)
    row = np.concatenate([[6.0], mids, -mids, [-6.0]])
    r = _rng(8)
    x = np.stack([r.permutation(row) * 2.0 ** r.integers(-2, 3) for _ in range(32)]).astype(np.float32)
    assert_matches_oracle(torch.from_numpy(x), tile=tile, backend=backend)
    assert_matches_oracle(torch.from_numpy(x), tile=tile, stochastic=True, seed=17, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_ties_and_saturation(backend: str) -> None:
    """Block scales are E4M3 RNE (ties to even) and saturate at 448 (SPEC §2 e4m3_rne_satfinite).

    global amax 448 makes S_enc·(1/6) exactly 1, so the FP32 scale equals the block amax.
    """
    block_amax = np.array(
        [1.0625, 1.1875, 3.0 * 2.0**-10, 2.0**-10, 2.0**-11, 9.0 * 2.0**-10, 440.0, 470.0, 448.0, 0.0],
        dtype=np.float32,
    )
    expected = np.array([1.0, 1.25, 2.0**-8, 0.0, 0.0, 2.0**-7, 448.0, 448.0, 448.0, 0.0], dtype=np.float32)
    # 9·2^-10 = 4.5·2^-9: tie between subnormals 4·2^-9 (even) and 5·2^-9 -> 4·2^-9 = 2^-7
    x = np.zeros((len(block_amax), 16), dtype=np.float32)
    x[:, 3] = block_amax
    q = quantize_nvfp4(torch.from_numpy(x), global_amax=448.0, backend=backend)
    np.testing.assert_array_equal(q.scales.float().numpy()[:, 0], expected)
    assert_matches_oracle(torch.from_numpy(x), global_amax=448.0, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_multiplication_order(backend: str) -> None:
    """SPEC §2: amax_b · (S_enc · (1/6)), not (amax_b · S_enc) / 6 — the order changes some scale bytes.

    Blocks are built whose amax sits where the orders disagree, so a wrong order is detected.
    """
    r = _rng(21)
    third = F32(1.0 / 6.0)
    normal_e4m3 = O.E4M3_TABLE[8:]  # 2^-6 .. 448
    mids = (normal_e4m3[:-1] + normal_e4m3[1:]) / 2
    found: list[tuple[float, float]] = []
    for g in r.uniform(10.0, 1e4, 40).astype(np.float32):
        s_enc, _ = O.nvfp4_tensor_scales(g)
        c = F32(s_enc * third)
        for m in mids:
            base = F32(m / float(c))
            for step in range(-4, 5):
                a = F32(base + F32(step) * np.spacing(base))
                if not 0 < a <= g:
                    continue
                good = O.e4m3_rne_satfinite(np.minimum(F32(a * c), F32(448)))
                alt1 = O.e4m3_rne_satfinite(np.minimum(F32(F32(a * s_enc) * third), F32(448)))
                alt2 = O.e4m3_rne_satfinite(np.minimum(F32(F32(a * s_enc) / F32(6)), F32(448)))
                if good != alt1 or good != alt2:
                    found.append((float(g), float(a)))
        if len(found) >= 24:
            break
    assert len(found) >= 8, "could not construct order-sensitive blocks"
    for g, a in found[:24]:
        x = np.zeros((1, 32), dtype=np.float32)
        x[0, 5], x[0, 20] = g, a  # block 0 holds the tensor amax, block 1 the sensitive amax
        assert_matches_oracle(torch.from_numpy(x), backend=backend)


@functools.cache
def _encode_sensitive_cases(per_alternative: int = 8) -> tuple[tuple[float, float, float], ...]:
    """(G, amax_b, x) where SPEC §2's enc_b = 1/(s_b·S_dec) followed by x·enc_b gives a different code
    than the tempting shortcuts (1/s_b)·S_enc, S_enc/s_b or x/(s_b·S_dec)."""
    c6 = F32(1.0 / 6.0)
    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=np.float32)
    s = O.E4M3_TABLE[8:].astype(np.float32)[:, None, None]  # every normal E4M3 scale
    k = np.arange(-2, 3, dtype=np.float32)[None, None, :]
    found: list[list[tuple[float, float, float]]] = [[], [], []]
    with np.errstate(all="ignore"):
        for g in _rng(22).uniform(1.0, 1e4, 200).astype(np.float32):
            s_enc, s_dec = O.nvfp4_tensor_scales(g)
            enc = (F32(1) / (s * s_dec)).astype(np.float32)
            a_b = (s / (s_enc * c6)).astype(np.float32)  # a block amax whose scale rounds to s
            ok = (O.e4m3_decode(O.e4m3_rne_satfinite(a_b * (s_enc * c6))) == s) & (a_b <= g)
            x0 = (mids[None, :, None] / enc).astype(np.float32)
            x = (x0 + k * np.spacing(x0)).astype(np.float32)
            good = O.e2m1_rne(x * enc)
            alts = [
                O.e2m1_rne(x * ((F32(1) / s).astype(np.float32) * s_enc).astype(np.float32)),
                O.e2m1_rne(x * (s_enc / s).astype(np.float32)),
                O.e2m1_rne(x / (s * s_dec).astype(np.float32)),
            ]
            for i, alt in enumerate(alts):
                for j, m, n in zip(*np.nonzero((alt != good) & ok), strict=True):
                    if len(found[i]) < per_alternative:
                        found[i].append((float(g), float(a_b[j, 0, 0]), float(x[j, m, n])))
            if min(len(f) for f in found) >= per_alternative:
                break
    assert min(len(f) for f in found) >= 2, "could not construct encode-sensitive cases"
    return tuple(c for f in found for c in f)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_encode_order(backend: str) -> None:
    """SPEC §2: enc_b = min(1/(float(s_b)·S_dec), FLT_MAX) from the ROUNDED scale, then v = x·enc_b."""
    cases = _encode_sensitive_cases()
    x = np.zeros((len(cases), 32), dtype=np.float32)
    for i, (g, a_b, xi) in enumerate(cases):
        x[i, 0], x[i, 16], x[i, 17] = g, a_b, xi
    for i in range(len(cases)):  # one row per tensor: each needs its own global amax
        assert_matches_oracle(torch.from_numpy(x[i : i + 1]), backend=backend)


def test_tensor_scale_uses_true_division() -> None:
    """S_enc = 2688 / amax as ONE correctly rounded division (not 2688 · (1/amax)), S_dec = 1 / S_enc."""
    amax = (np.abs(_rng(5).standard_normal(4000)) * 10.0 ** _rng(6).uniform(-20, 20, 4000)).astype(np.float32)
    s_enc = np.minimum(F32(2688) / amax, np.finfo(np.float32).max).astype(np.float32)
    wrong = (F32(2688) * (F32(1) / amax)).astype(np.float32)
    assert (wrong != s_enc).sum() > 100  # the check below can tell the two apart
    got_enc = global_encode_scale(torch.from_numpy(amax)).numpy()
    np.testing.assert_array_equal(got_enc, s_enc)
    np.testing.assert_array_equal(global_decode_scale(torch.from_numpy(amax)).numpy(), F32(1) / s_enc)


def test_oracle_e2m1_rounding_cross_checks_ml_dtypes() -> None:
    """The oracle's SPEC threshold table agrees with ml_dtypes' float4_e2m1fn cast (RNE) on ties and random values."""
    import ml_dtypes  # a dev dependency: a missing one must fail, not skip

    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=np.float32)
    near = [np.nextafter(mids, F32(0)), np.nextafter(mids, F32(7))]  # one FP32 ulp either side of each tie
    v = np.concatenate([mids, O.E2M1_MAGNITUDES, *near, _rng(10).uniform(0, 6, 3000).astype(np.float32)])
    v = np.concatenate([v, -v]).astype(np.float32)
    ours = O.e2m1_value(O.e2m1_rne(v))
    theirs = v.astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
    np.testing.assert_array_equal(ours, theirs)  # (-0 == 0 here: the SPEC lets −0 encode either way)


# --- packing -----------------------------------------------------------------------------------


def test_packing_low_nibble_is_even_element() -> None:
    # global amax 2688, block amax 6: S_enc = 1, s_b = 1, v = x
    x = torch.tensor([[6.0, -6.0, 0.5, 1.0, -0.5, 3.0, 4.0, -1.5, 0, 0, 0, 0, 0, 0, 2.0, -4.0, 1.5]])
    q = quantize_nvfp4(x, global_amax=2688.0)
    # element 16 is alone in block 1: amax 1.5 -> s_b = 0.25 -> v = 6 (code 7)
    expected_codes = [7, 15, 1, 2, 9, 5, 6, 11, 0, 0, 0, 0, 0, 0, 4, 14, 7]
    assert q.codes().tolist() == [expected_codes]
    assert q.scales.float().tolist() == [[1.0, 0.25]]
    assert q.packed.tolist() == [[0xF7, 0x21, 0x59, 0xB6, 0x00, 0x00, 0x00, 0xE4, 0x07, 0, 0, 0, 0, 0, 0, 0]]


@pytest.mark.parametrize("shape", [(3, 17), (8, 64), (1, 1)])
def test_packed_layout_matches_oracle_codes(shape: tuple[int, int]) -> None:
    x = make_data("student_t", shape, seed=2)
    q = quantize_nvfp4(torch.from_numpy(x), stochastic=True, seed=4)
    codes = O.quantize_nvfp4(x, 1, True, 4).codes
    padded = np.zeros((shape[0], -(-shape[1] // 16) * 16), dtype=np.uint8)
    padded[:, : shape[1]] = codes
    np.testing.assert_array_equal(q.packed.numpy(), padded[:, 0::2] | (padded[:, 1::2] << 4))


def test_pack_unpack_round_trip() -> None:
    every_byte = torch.arange(256, dtype=torch.uint8).view(2, 128)
    assert torch.equal(pack_codes(unpack_codes(every_byte)), every_byte)
    codes = torch.from_numpy(_rng(1).integers(0, 16, (5, 64)).astype(np.uint8))
    assert torch.equal(unpack_codes(pack_codes(codes)), codes)


def test_scaled_values_are_value_times_block_scale() -> None:
    x = make_data("lognormal", (6, 40), seed=9)
    q = quantize_nvfp4(torch.from_numpy(x))
    o = O.quantize_nvfp4(x, 1)
    expected = O.e2m1_value(o.codes) * np.repeat(o.scales, 16, axis=1)[:, :40]
    sv = q.scaled_values()  # bf16 by default, and exact in bf16 (SPEC §2 note)
    assert sv.dtype == torch.bfloat16
    np.testing.assert_array_equal(sv.float().numpy(), expected)
    np.testing.assert_array_equal(q.scaled_values(torch.float32).numpy(), expected)


# --- properties ----------------------------------------------------------------------------------


@st.composite
def float_matrices(draw: st.DrawFn, max_rows: int = 20, max_cols: int = 40) -> np.ndarray:
    """Finite float32 matrices: hypothesis-chosen elements or log-uniform magnitudes, with zeros.

    Nonzero magnitudes stay in [1e-30, 1e38): below ~6/FLT_MAX ≈ 1.8e-38 SPEC §2's own FP32 formula
    leaves its accurate regime (S_enc clamps at FLT_MAX, s_b·S_dec is subnormal and enc_b clamps too),
    which ``test_below_fp32_normal_range_follows_the_formula`` covers separately.
    """
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    if draw(st.booleans()):
        elements = st.floats(-1e4, 1e4, width=32, allow_subnormal=False).filter(lambda v: v == 0 or abs(v) >= 1e-30)
        return draw(hnp.arrays(np.float32, (rows, cols), elements=elements))
    lo = draw(st.integers(-30, 28))
    span = draw(st.integers(0, 9))
    zero_frac = draw(st.sampled_from([0.0, 0.1, 0.5]))
    r = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = r.uniform(1.0, 10.0, (rows, cols)) * 10.0 ** r.integers(lo, lo + span + 1, (rows, cols))
    x = x * r.choice([-1.0, 1.0], (rows, cols)) * (r.random((rows, cols)) >= zero_frac)
    return np.minimum(x, 3e38).astype(np.float32)


def _step(a: np.ndarray) -> np.ndarray:
    return np.where(a < 2, 0.5, np.where(a < 4, 1.0, 2.0))


@settings(max_examples=80, deadline=None)
@given(x=float_matrices(), tile=st.sampled_from(TILES))
def test_rn_error_bound(x: np.ndarray, tile: tuple[int, int]) -> None:
    """Per element: |x − deq| <= ½·step·s_b·S_dec (RN picks a neighbour on the scaled grid).

    With D = s_b·S_dec (exact, float64) and a = |x|/D:
    - a <= 6: error <= ½·step(a)·D, plus FP32 rounding of x·enc and of the dequant (~2^-22 relative);
    - a > 6 (the rounded E4M3 scale came out below amax_b/6): the value saturates to ±6·D;
    - D == 0 (the block scale underflowed): deq == 0 and |x| <= 6·2^-10·S_dec (half the least E4M3).
    """
    q = quantize_nvfp4(torch.from_numpy(x), tile=tile)
    deq = q.dequantize().numpy().astype(np.float64)
    xd = x.astype(np.float64)
    s_dec = float(q.decode_scale)
    d = np.repeat(q.scales.float().numpy().astype(np.float64), 16, axis=1)[:, : x.shape[1]] * s_dec
    zero = d == 0
    assert (deq[zero] == 0).all()
    assert (np.abs(xd[zero]) <= 6 * 2.0**-10 * s_dec * (1 + 2.0**-20)).all()
    a = np.where(zero, 0.0, np.abs(xd) / np.where(zero, 1.0, d))
    sat = ~zero & (a > 6.0 * (1 + 2.0**-20))
    np.testing.assert_allclose(deq[sat], np.sign(xd[sat]) * 6.0 * d[sat], rtol=2.0**-21, atol=0)
    inner = ~zero & ~sat
    bound = 0.5 * _step(a[inner]) * d[inner] + 2.0**-20 * (np.abs(xd[inner]) + d[inner])
    err = np.abs(xd[inner] - deq[inner])
    assert (err <= bound).all(), f"worst excess {np.max(err - bound)}"


@settings(max_examples=80, deadline=None)
@given(x=float_matrices(), tile=st.sampled_from(TILES))
def test_block_amax_round_trips_to_fp8_precision(x: np.ndarray, tile: tuple[int, int]) -> None:
    """A block's largest value comes back within E4M3 precision (relative 2^-4) of amax_b.

    s_b = RNE_e4m3(amax_b·S_enc/6) is within 2^-4 (half an ulp of a 3-bit mantissa) of the exact
    scale when it is a normal E4M3 number (>= 2^-6), so v_max = amax_b/(s_b·S_dec) is in
    [6/(1+2^-4), 6/(1−2^-4)] ⊂ (5, 6.4] and rounds (or saturates) to 6; deq_max = 6·s_b·S_dec.
    The tensor's amax itself uses s_b ≈ 448 and comes back to FP32 precision.
    """
    q = quantize_nvfp4(torch.from_numpy(x), tile=tile)
    deq = np.abs(q.dequantize().numpy().astype(np.float64))
    ax = np.abs(x.astype(np.float64))
    m, k = x.shape
    tr = tile[0]
    prow, pcol = -(-m // tr) * tr, -(-k // 16) * 16
    pad = lambda t: np.pad(t, ((0, prow - m), (0, pcol - k)))  # noqa: E731
    shape4 = (prow // tr, tr, pcol // 16, 16)
    amax_b = pad(ax).reshape(shape4).max(axis=(1, 3))
    deq_b = pad(deq).reshape(shape4).max(axis=(1, 3))
    s_b = q.scales.float().numpy()[::tr].astype(np.float64)
    normal = s_b >= 2.0**-6
    rel = np.abs(deq_b[normal] - amax_b[normal]) / amax_b[normal]
    assert (rel <= 2.0**-4 * (1 + 2.0**-18)).all()
    amax = ax.max()
    if amax > 0:
        assert abs(deq.max() - amax) <= 2.0**-20 * amax


@settings(max_examples=60, deadline=None)
@given(x=float_matrices(max_rows=40, max_cols=40), stochastic=st.booleans())
def test_2d_tiles_transpose_bit_exactly(x: np.ndarray, stochastic: bool) -> None:
    """SPEC §2: quantize(W, 16x16)ᵀ == quantize(Wᵀ, 16x16) — codes, scales and values."""
    w = torch.from_numpy(x)
    q = quantize_nvfp4(w, tile=(16, 16))
    qt = quantize_nvfp4(w.T.contiguous(), tile=(16, 16))
    assert torch.equal(q.codes().T, qt.codes())
    tile_scales = q.scales.view(torch.uint8)[::16]  # (ceil(M/16), ceil(K/16))
    tile_scales_t = qt.scales.view(torch.uint8)[::16]
    assert torch.equal(tile_scales.T, tile_scales_t)
    # the tile scale is repeated over every row of the tile
    rep = tile_scales.repeat_interleave(16, dim=0)[: x.shape[0]]
    assert torch.equal(rep, q.scales.view(torch.uint8))
    assert torch.equal(q.dequantize().T, qt.dequantize())


# --- stochastic rounding (SPEC §3) ---------------------------------------------------------------


def _sr(x: torch.Tensor, seed: int, offset: int = 0, tile: tuple[int, int] = (1, 16)):
    return quantize_nvfp4(x, tile=tile, stochastic=True, seed=seed, offset=offset)


@pytest.mark.parametrize("tile", TILES, ids=["1x16", "16x16"])
def test_sr_deterministic_per_seed_and_offset(tile: tuple[int, int]) -> None:
    x = torch.from_numpy(make_data("normal", (32, 64), seed=12))
    a, b = _sr(x, 42, 3, tile), _sr(x, 42, 3, tile)
    assert torch.equal(a.packed, b.packed) and torch.equal(a.scales.view(torch.uint8), b.scales.view(torch.uint8))
    for other in (_sr(x, 43, 3, tile), _sr(x, 42, 4, tile), _sr(x, 42 + 2**32, 3, tile), _sr(x, 42, 3 + 2**32, tile)):
        differ = (other.codes() != a.codes()).float().mean()
        assert differ > 0.1  # a different stream, not a shifted or identical one
        assert torch.equal(other.scales.view(torch.uint8), a.scales.view(torch.uint8))


@pytest.mark.parametrize("tile", TILES, ids=["1x16", "16x16"])
def test_sr_scales_are_the_rn_scales(tile: tuple[int, int]) -> None:
    x = torch.from_numpy(make_data("lognormal", (32, 48), seed=13))
    rn = quantize_nvfp4(x, tile=tile)
    sr = _sr(x, 7, tile=tile)
    assert torch.equal(rn.scales.view(torch.uint8), sr.scales.view(torch.uint8))
    assert torch.equal(rn.global_amax, sr.global_amax)
    assert not torch.equal(rn.codes(), sr.codes())


def _scaled_values(x: np.ndarray, q) -> np.ndarray:
    """v = clamp(x·enc_b, ±6) from the library's own scales, FP32 as in SPEC §2 (float64 result)."""
    s_dec = F32(float(q.decode_scale))
    s_b = np.repeat(q.scales.float().numpy(), 16, axis=1)[:, : x.shape[1]]
    with np.errstate(all="ignore"):  # 1/0 for an underflowed scale, x·FLT_MAX overflowing: both then clamp
        enc = np.minimum(F32(1) / (s_b * s_dec).astype(np.float32), O.FLT_MAX).astype(np.float32)
        return np.clip(x * enc, F32(-6), F32(6)).astype(np.float64)


@settings(max_examples=60, deadline=None)
@given(x=float_matrices(), seed=st.integers(0, 2**64 - 1), tile=st.sampled_from(TILES))
def test_sr_picks_one_of_the_two_neighbours(x: np.ndarray, seed: int, tile: tuple[int, int]) -> None:
    q = _sr(torch.from_numpy(x), seed, tile=tile)
    v = _scaled_values(x, q)
    lo, hi = O.grid_neighbours(np.abs(v))
    got = O.e2m1_value(q.codes().numpy()).astype(np.float64)
    assert ((np.abs(got) == lo) | (np.abs(got) == hi)).all()
    assert (got * v >= 0).all()  # never the wrong sign


def test_sr_at_grid_points_is_exact() -> None:
    x = torch.from_numpy(make_data("grid_values", (16, 64), seed=14))
    rn = quantize_nvfp4(x, global_amax=2688.0)  # S_enc = S_dec = 1, s_b = 2^k: every step exact
    assert torch.equal(rn.dequantize(), x)  # the data really is on the grid
    for seed in range(20):
        sr = quantize_nvfp4(x, stochastic=True, seed=seed, global_amax=2688.0)
        assert torch.equal(sr.codes(), rn.codes())


def test_sr_rounding_probability() -> None:
    """v = 1.125 sits a quarter of the way from 1 to 1.5: P(up) = #{r >= 192}/256 = 1/4 exactly."""
    x = np.full((64, 64), 1.125, dtype=np.float32)
    x[:, ::16] = 6.0  # block amax 6 with global amax 2688: s_b = 1, v = x
    q = _sr(torch.from_numpy(x), seed=2025)
    vals = O.e2m1_value(q.codes().numpy())
    mask = x == F32(1.125)
    assert set(np.unique(vals[mask])) == {1.0, 1.5}
    p = (vals[mask] == 1.5).mean()
    n = mask.sum()
    assert abs(p - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)


def test_sr_is_unbiased_over_seeds() -> None:
    """Mean over 400 seeds converges to x; RN's deterministic error does not average out."""
    x_np = make_data("normal", (4, 32), seed=15)
    x = torch.from_numpy(x_np)
    n = 400
    total = np.zeros(x_np.shape, dtype=np.float64)
    for seed in range(n):
        total += _sr(x, seed).dequantize().numpy()
    mean = total / n
    rn = quantize_nvfp4(x)
    d = np.repeat(rn.scales.float().numpy(), 16, axis=1).astype(np.float64) * float(rn.decode_scale)
    # SR is unbiased for the CLAMPED value: a block max whose rounded scale came out low saturates at 6·D
    target = np.sign(x_np) * np.minimum(np.abs(x_np), 6 * d)
    assert (target != x_np).sum() < 8
    rn_err = np.abs(rn.dequantize().numpy() - target).mean()
    sr_err = np.abs(mean - target)
    assert sr_err.mean() < 0.2 * rn_err
    # per element: within 5 standard errors of a Bernoulli between the two neighbours, plus the 1/256 bias of u
    v = _scaled_values(x_np, rn)
    lo, hi = O.grid_neighbours(np.abs(v))
    gap = (hi - lo) * d
    p = np.where(hi > lo, (np.abs(v) - lo) / np.where(hi > lo, hi - lo, 1), 0)
    tol = 5 * np.sqrt(p * (1 - p) / n) * gap + gap / 256 + 1e-6 * np.abs(x_np)
    assert (sr_err <= tol).all()


# --- non-finite input (SPEC §2) ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stochastic", [False, True], ids=["rn", "sr"])
@pytest.mark.parametrize("tile", TILES, ids=["1x16", "16x16"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_poisons_the_whole_tensor(bad: float, tile, stochastic: bool, dtype: torch.dtype, backend) -> None:
    """Tensor amax non-finite -> every dequantized value is NaN (never finite garbage)."""
    x = torch.from_numpy(make_data("normal", (20, 40), seed=16)).to(dtype)
    x[3, 17] = bad
    q = quantize_nvfp4(x, tile=tile, stochastic=stochastic, backend=backend)
    assert q.scales.float().isnan().all()
    assert q.dequantize().isnan().all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stochastic", [False, True], ids=["rn", "sr"])
@pytest.mark.parametrize("tile", TILES, ids=["1x16", "16x16"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_with_given_amax_poisons_only_its_block(bad: float, tile, stochastic: bool, backend: str) -> None:
    x_np = make_data("normal", (20, 40), seed=17)
    x_np[18, 33] = bad
    q = quantize_nvfp4(
        torch.from_numpy(x_np), tile=tile, stochastic=stochastic, seed=1, global_amax=100.0, backend=backend
    )
    tr = tile[0]
    bad_rows = slice(16, 20) if tr == 16 else slice(18, 19)
    nan_scales = q.scales.float().isnan().numpy()
    expected = np.zeros_like(nan_scales)
    expected[bad_rows, 2] = True
    np.testing.assert_array_equal(nan_scales, expected)
    deq = q.dequantize().numpy()
    assert np.isnan(deq[bad_rows, 32:40]).all()
    good = np.ones(deq.shape, dtype=bool)
    good[bad_rows, 32:40] = False
    assert np.isfinite(deq[good]).all()
    o = O.quantize_nvfp4(x_np, tr, stochastic, 1, 0, 100.0)
    np.testing.assert_array_equal(deq[good], o.dequantize()[good])
    np.testing.assert_array_equal(q.codes().numpy()[good], o.codes[good])


def test_non_finite_global_amax_poisons_everything() -> None:
    x = torch.from_numpy(make_data("normal", (4, 32), seed=18))
    assert quantize_nvfp4(x, global_amax=float("nan")).dequantize().isnan().all()
    assert quantize_nvfp4(x, global_amax=float("inf")).dequantize().isnan().all()
