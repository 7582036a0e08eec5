"""The C CPU backend must equal the plain-PyTorch reference bit for bit (codes, scales, amax, values).

Both builds are checked: the vectorized one (AVX-512 where the CPU has it) and the portable scalar one.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nvfp4 import kernels
from nvfp4.formats.hadamard import DEFAULT_SIGNS_16
from nvfp4.formats.rng import derive_keys, random_bytes
from nvfp4.kernels import cpu as cpu_mod
from nvfp4.kernels.contract import Unsupported
from nvfp4.kernels.cpu import CPUBackend, build_library
from nvfp4.kernels.reference import ReferenceBackend
from nvfp4.quantize import quantize_nvfp4
from tests.kernels.inputs import make_input, same_float

KINDS = ["random", "heavy", "tiny", "huge", "mixed", "zeros", "signed_zeros", "ties", "nonfinite"]

if not CPUBackend.is_available("cpu"):
    pytest.skip(
        f"the nvfp4 CPU kernel is unavailable (NVFP4_DISABLE_CPU_KERNEL set, or no C compiler): {cpu_mod._load_error}",
        allow_module_level=True,
    )

REF = ReferenceBackend.instance()
SIGNS = torch.tensor(DEFAULT_SIGNS_16, dtype=torch.float32)
SHAPES = [(1, 1), (3, 17), (33, 15), (17, 100), (16, 16), (31, 48), (20, 300), (18, 533)]


@contextlib.contextmanager
def torch_threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- helpers ---------------------------------------------------------------------------------------------------


def assert_quant_equal(got: tuple, want: tuple) -> None:
    (p1, s1), (p0, s0) = got[:2], want[:2]
    assert p1.dtype == torch.uint8 and s1.dtype == torch.float8_e4m3fn
    assert p1.shape == p0.shape and s1.shape == s0.shape
    bad_scales = (s1.view(torch.uint8) != s0.view(torch.uint8)).nonzero()
    assert bad_scales.numel() == 0, f"{len(bad_scales)} scales differ, first at {bad_scales[0].tolist()}"
    bad_codes = (p1 != p0).nonzero()
    assert bad_codes.numel() == 0, f"{len(bad_codes)} packed bytes differ, first at {bad_codes[0].tolist()}"


# --- quantization vs the reference -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_quantize_matches_reference(cpu, shape, kind):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = make_input(kind, shape).to(dtype)
        amax = cpu.amax(x)
        assert same_float(amax, REF.amax(x))
        for tile_rows in (1, 16):
            for stochastic in (False, True):
                args = (tile_rows, stochastic, 1234, 7)
                assert_quant_equal(cpu.quantize_nvfp4(x, amax, *args), REF.quantize_nvfp4(x, amax, *args))


@pytest.mark.parametrize("shape", [(70, 600), (47, 1037)])
@pytest.mark.parametrize("kind", ["heavy", "nonfinite", "late_nan"])
def test_large_inputs_use_the_threaded_paths(cpu, shape, kind):
    """Above 2^15 elements the kernels run OpenMP teams (here of 2 threads) and the amax runs in 16K chunks."""
    x = make_input("heavy" if kind == "late_nan" else kind, shape, seed=8)
    if kind == "late_nan":  # a single NaN in the last amax chunk, and an Inf in the last tile row
        x[-1, -2] = float("nan")
        x[-3, 5] = float("inf")
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype)
        xr = xd[:, : shape[1] // 16 * 16]
        quant_args = [(tile_rows, sr, 21, 2) for tile_rows in (1, 16, 3) for sr in (False, True)]
        amax = REF.amax(xd)
        packed, scales = REF.quantize_nvfp4(xd, amax, 1, False, 0, 0)
        with torch_threads(2):
            got_amax = cpu.amax(xd)
            got_q = [cpu.quantize_nvfp4(xd, amax, *args) for args in quant_args]
            got_rht = [cpu.rht_quantize_nvfp4(xr, SIGNS, None, sr, 4, 4) for sr in (False, True)]
            got_values = cpu.scaled_values(packed, scales)
        assert same_float(got_amax, amax)
        for got, args in zip(got_q, quant_args, strict=True):
            assert_quant_equal(got, REF.quantize_nvfp4(xd, amax, *args))
        for got, sr in zip(got_rht, (False, True), strict=True):
            want = REF.rht_quantize_nvfp4(xr, SIGNS, None, sr, 4, 4)
            assert_quant_equal(got, want)
            assert same_float(got[2], want[2])
        assert same_float(got_values, REF.scaled_values(packed, scales))


@pytest.mark.parametrize("kind", ["ties", "random", "nonfinite", "zeros"])
@pytest.mark.parametrize("amax_value", [2688.0, 1.0, 1e-3, 0.0, 1e-45, float("inf"), float("nan")])
def test_given_global_amax(cpu, kind, amax_value):
    """A caller-given amax (even one smaller than max|x|, or non-finite) is used exactly as the reference does."""
    x = make_input(kind, (19, 280))
    if kind == "ties":
        x[:, ::16] = 6.0  # block amax 6: scale 1, enc 1 with S_enc = 1
    amax = torch.tensor(amax_value)
    for tile_rows in (1, 16):
        for stochastic in (False, True):
            args = (tile_rows, stochastic, 3, 0)
            assert_quant_equal(cpu.quantize_nvfp4(x, amax, *args), REF.quantize_nvfp4(x, amax, *args))


def test_scale_rounding_ties(cpu):
    """Block amaxes whose scale lands on or next to an E4M3 rounding tie, across the normal and subnormal range."""
    mant = torch.arange(0, 16, dtype=torch.float32) / 16
    amax_b = torch.cat([(1 + mant) * 2.0**e for e in range(-12, 9)]) * 6
    amax_b = torch.cat([amax_b, amax_b.nextafter(torch.tensor(0.0)), amax_b.nextafter(torch.tensor(1e9))])
    x = torch.zeros(amax_b.numel(), 16)
    x[:, 3] = amax_b
    x[:, 5] = -amax_b / 3
    for amax_value in (2688.0, 448.0, 6.0, 1e4):
        for stochastic in (False, True):
            args = (torch.tensor(amax_value), 1, stochastic, 9, 1)
            assert_quant_equal(cpu.quantize_nvfp4(x, *args), REF.quantize_nvfp4(x, *args))


@pytest.mark.parametrize("seed, offset", [(0, 0), (1, 5), (2**40 + 3, 2**33 + 1), (-1, 123456789)])
def test_stochastic_rounding_streams(cpu, seed, offset):
    x = make_input("random", (37, 290), seed=4)
    amax = REF.amax(x)
    for tile_rows in (1, 16):
        got = cpu.quantize_nvfp4(x, amax, tile_rows, True, seed, offset)
        assert_quant_equal(got, REF.quantize_nvfp4(x, amax, tile_rows, True, seed, offset))
    other = cpu.quantize_nvfp4(x, amax, 1, True, seed + 1, offset)[0]
    assert not torch.equal(other, got[0]), "a different seed must give different SR bytes"


def test_random_bytes_across_the_32_bit_index_carry(cpu):
    """Element indices >= 2^32 (and blocks straddling 2^32) use the same bytes as nvfp4.formats.rng."""
    for start in (0, 2**32 - 7, 2**32 - 16, 2**33 + 5, 2**63 - 40):
        for seed, offset in ((0, 0), (77, 2**35)):
            k1, k2 = derive_keys(seed, offset)
            out = torch.empty(37, dtype=torch.uint8)
            cpu.lib.nvfp4_random_bytes(start, 37, k1, k2, out.data_ptr())
            want = random_bytes(torch.arange(start, start + 37, dtype=torch.int64), seed, offset)
            assert torch.equal(out.to(torch.int64), want)


def test_non_contiguous_input(cpu):
    x = make_input("heavy", (48, 40)).t()  # (40, 48) view with strides (1, 40)
    amax = REF.amax(x)
    for tile_rows in (1, 16):
        args = (tile_rows, True, 5, 5)
        assert_quant_equal(cpu.quantize_nvfp4(x, amax, *args), REF.quantize_nvfp4(x, amax, *args))
    assert_quant_equal(
        cpu.rht_quantize_nvfp4(x, SIGNS, None, False, 0, 0), REF.rht_quantize_nvfp4(x, SIGNS, None, False, 0, 0)
    )


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 300),
    log_scale=st.floats(-40, 35),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    tile_rows=st.sampled_from([1, 16]),
    stochastic=st.booleans(),
    seed=st.integers(0, 2**64 - 1),
    offset=st.integers(0, 2**40),
    data_seed=st.integers(0, 2**31 - 1),
)
def test_hypothesis_random_shapes_and_scales(
    rows, cols, log_scale, dtype, tile_rows, stochastic, seed, offset, data_seed
):
    cpu = CPUBackend.instance()
    x = (make_input("heavy", (rows, cols), seed=data_seed) * 10.0**log_scale).to(dtype)
    amax = REF.amax(x)
    assert same_float(cpu.amax(x), amax)
    args = (tile_rows, stochastic, seed, offset)
    assert_quant_equal(cpu.quantize_nvfp4(x, amax, *args), REF.quantize_nvfp4(x, amax, *args))


# --- fused RHT + quantization ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 16), (3, 32), (17, 48), (33, 256), (9, 528)])
@pytest.mark.parametrize("kind", ["random", "heavy", "tiny", "huge", "mixed", "zeros", "nonfinite"])
def test_rht_quantize_matches_reference(cpu, shape, kind):
    signs = SIGNS if kind != "heavy" else -SIGNS.roll(3)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = make_input(kind, shape, seed=2).to(dtype)
        for global_amax in (None, torch.tensor(3.5)):
            for stochastic in (False, True):
                args = (signs, global_amax, stochastic, 11, 3)
                got, want = cpu.rht_quantize_nvfp4(x, *args), REF.rht_quantize_nvfp4(x, *args)
                assert_quant_equal(got, want)
                assert same_float(got[2], want[2])


def test_rht_other_sizes_fall_back_to_the_reference():
    cpu = CPUBackend.instance()
    x = make_input("random", (4, 64))
    signs32 = torch.ones(32)
    with pytest.raises(Unsupported):
        cpu.rht_quantize_nvfp4(x, signs32, None, False, 0, 0)
    got = kernels.select("cpu", "cpu").rht_quantize_nvfp4(x, signs32, None, False, 0, 0)
    assert_quant_equal(got, REF.rht_quantize_nvfp4(x, signs32, None, False, 0, 0))
    with pytest.raises(ValueError, match="K % 16 == 0"):  # invalid for every backend: one clear error
        kernels.select("cpu", "cpu").rht_quantize_nvfp4(x[:, :40], SIGNS, None, False, 0, 0)


# --- scaled values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "heavy", "tiny", "nonfinite", "zeros", "signed_zeros"])
def test_scaled_values_match_reference(cpu, kind):
    x = make_input(kind, (21, 200))
    packed, scales = REF.quantize_nvfp4(x, REF.amax(x), 1, True, 1, 2)
    for dtype in (torch.bfloat16, torch.float32, torch.float16):
        got, want = cpu.scaled_values(packed, scales, dtype), REF.scaled_values(packed, scales, dtype)
        assert same_float(got, want), dtype


def test_scaled_values_every_code_and_scale(cpu):
    codes = torch.arange(256, dtype=torch.uint8).repeat(256, 1)  # every byte in every row
    scales = torch.arange(256, dtype=torch.uint8).unsqueeze(1).repeat(1, 32).view(torch.float8_e4m3fn)
    for dtype in (torch.bfloat16, torch.float32):
        assert same_float(cpu.scaled_values(codes, scales, dtype), REF.scaled_values(codes, scales, dtype))


# --- the E4M3 conversion, swept over the float32 bit patterns --------------------------------------------------


def test_e4m3_conversion_sweep(cpu):
    """Against torch's float8_e4m3fn cast after clamping to ±448: every pattern of the top 12 bits (sign, exponent,
    3 mantissa bits) with the low 20 bits at every rounding-relevant value, plus a dense stride over [0, 480]."""
    hi = torch.arange(0, 1 << 12, dtype=torch.int64) << 20
    lo = torch.tensor([0, 1, 2, 0x3FFFF, 0x40000, 0x7FFFE, 0x7FFFF, 0x80000, 0x80001, 0xBFFFF, 0xFFFFE, 0xFFFFF])
    structured = (hi.unsqueeze(1) | lo.unsqueeze(0)).flatten()
    dense = torch.arange(0, 0x43F00000, 251, dtype=torch.int64)  # 0 .. 480
    subnormal_region = torch.arange(0x3A000000, 0x3D000000, 3, dtype=torch.int64)  # 2^-11 .. 2^-5, E4M3 subnormals
    for bits in (structured, dense, dense | (1 << 31), subnormal_region):
        x = bits.to(torch.int32).view(torch.float32)
        x = x[torch.isfinite(x)].contiguous()
        out = torch.empty(x.numel(), dtype=torch.uint8)
        cpu.lib.nvfp4_e4m3_encode(x.data_ptr(), x.numel(), out.data_ptr())
        want = x.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).view(torch.uint8)
        bad = (out != want).nonzero()
        assert bad.numel() == 0, f"{bad.numel()} differ, e.g. x={x[bad[0]].item()!r}: {out[bad[0]]} vs {want[bad[0]]}"


# --- the public API, the registry and the build ----------------------------------------------------------------


@pytest.mark.parametrize("tile", [(1, 16), (16, 16)])
@pytest.mark.parametrize("stochastic", [False, True])
def test_public_api_backend_cpu_equals_reference(tile, stochastic):
    x = make_input("heavy", (15, 70)).reshape(3, 5, 70)
    for global_amax in (None, 40.0):
        kw = dict(tile=tile, stochastic=stochastic, seed=9, global_amax=global_amax, offset=4)
        got, want = quantize_nvfp4(x, backend="cpu", **kw), quantize_nvfp4(x, backend="reference", **kw)
        assert torch.equal(got.packed, want.packed)
        assert torch.equal(got.scales.view(torch.uint8), want.scales.view(torch.uint8))
        assert same_float(got.global_amax, want.global_amax)
        assert same_float(got.dequantize(), want.dequantize())
        assert same_float(got.scaled_values(), want.scaled_values())


def test_registry_prefers_cpu_and_env_var_disables(monkeypatch):
    assert "cpu" in kernels.available_backends("cpu")
    assert not CPUBackend.is_available("meta")
    monkeypatch.setenv("NVFP4_DISABLE_CPU_KERNEL", "1")
    assert not CPUBackend.is_available("cpu")
    assert "cpu" not in kernels.available_backends("cpu")


def test_missing_compiler_warns_once_and_disables(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="no C compiler"):
        build_library()
    monkeypatch.setattr(cpu_mod, "_lib", None)
    monkeypatch.setattr(cpu_mod, "_load_error", None)
    monkeypatch.setattr(cpu_mod, "_warned", False)
    with pytest.warns(RuntimeWarning, match="install a C compiler"):
        assert not CPUBackend.is_available("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not CPUBackend.is_available("cpu")  # no second warning


def test_build_is_cached_and_failures_are_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("NVFP4_CACHE", str(tmp_path))
    variant = (("-DNVFP4_PORTABLE",),)
    lib = build_library(variant)
    (so,) = (tmp_path / "kernels").glob("nvfp4_cpu-*.so")
    assert not list((tmp_path / "kernels").glob("*.tmp")), "temporary files must be renamed or removed"
    mtime = os.stat(so).st_mtime_ns
    build_library(variant)
    assert os.stat(so).st_mtime_ns == mtime, "the cached library must be reused"
    assert lib.nvfp4_abi_version() == cpu_mod._ABI_VERSION
    with pytest.raises(RuntimeError, match="failed"):
        build_library((("-DNVFP4_PORTABLE", "--no-such-flag-xyz"),))


def test_inputs_outside_the_fast_path_are_rejected_cleanly():
    cpu = CPUBackend.instance()
    with pytest.raises(Unsupported):  # a negative amax is outside the contract: the reference handles it
        cpu.quantize_nvfp4(torch.ones(2, 16), torch.tensor(-1.0), 1, False, 0, 0)
    with pytest.raises(ValueError, match="do not match"):
        cpu.scaled_values(torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(2, 2).to(torch.float8_e4m3fn))
    assert math.isnan(float(cpu.amax(torch.tensor([[1.0, float("nan"), float("inf")]]))))
