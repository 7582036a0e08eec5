"""The Triton backend must equal the PyTorch reference bit for bit (packed codes, scale bytes, amax).

Without a GPU the kernels run in Triton's CPU interpreter, on small shapes. The kernels become
interpreted functions only if TRITON_INTERPRET=1 is set when ``nvfp4.kernels.triton_backend`` is
imported, so it is set at the top of this module (and the backend module re-imported if another
test module imported it first). The variable is then removed again and only set while these
tests run (fixture below): otherwise later tests that quantize on the CPU with ``backend="auto"``
would pick the (slow) interpreted Triton backend.
"""

from __future__ import annotations

import importlib
import itertools
import os

import pytest
import torch

_USE_INTERPRETER = not torch.cuda.is_available()
_SET_INTERPRET = _USE_INTERPRETER and "TRITON_INTERPRET" not in os.environ
if _USE_INTERPRETER:
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from nvfp4 import kernels  # noqa: E402
from nvfp4.formats.hadamard import default_signs  # noqa: E402
from nvfp4.formats.rng import derive_keys, random_bytes  # noqa: E402
from nvfp4.kernels import triton_backend, triton_kernels, triton_numerics  # noqa: E402
from nvfp4.kernels.contract import Unsupported  # noqa: E402
from nvfp4.kernels.reference import ReferenceBackend  # noqa: E402
from nvfp4.quantize import quantize_nvfp4  # noqa: E402
from tests.kernels.inputs import decorate_triton_kernels_again, make_input, same_bits, same_float  # noqa: E402

if _USE_INTERPRETER:
    decorate_triton_kernels_again()
tl = triton.language


@triton.jit
def _random_bytes_probe(out_ptr, base, key1, key2, N: tl.constexpr):
    """Runs the backend's in-kernel RNG on arbitrary int64 indices (decorated while interpreting)."""
    index = base.to(tl.int64) + tl.arange(0, N).to(tl.int64)
    tl.store(
        out_ptr + tl.arange(0, N),
        triton_numerics.random_bytes(index, key1.to(tl.uint32, bitcast=True), key2.to(tl.uint32, bitcast=True)),
    )


if _SET_INTERPRET:
    del os.environ["TRITON_INTERPRET"]

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REF = ReferenceBackend()
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SHAPES = ((1, 1), (3, 17), (32, 64), (17, 48), (48, 33))


@pytest.fixture(autouse=True, scope="module")
def _interpreter_env():
    """TRITON_INTERPRET=1 while this module runs (is_available reads it), as before afterwards."""
    if _SET_INTERPRET:
        os.environ["TRITON_INTERPRET"] = "1"
    if not triton_backend.TritonBackend.is_available(DEVICE):
        pytest.skip(f"Triton backend not available on {DEVICE}")
    yield
    if _SET_INTERPRET:
        os.environ.pop("TRITON_INTERPRET", None)


@pytest.fixture(scope="module")
def tb():
    return triton_backend.TritonBackend()


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def assert_quantize_equal(tb, x: torch.Tensor, amax: torch.Tensor, tile_rows: int, sr: bool, seed=0, offset=0):
    packed, scales = tb.quantize_nvfp4(x.to(DEVICE), amax.to(DEVICE), tile_rows, sr, seed, offset)
    ref_packed, ref_scales = REF.quantize_nvfp4(x, amax, tile_rows, sr, seed, offset)
    assert packed.dtype == torch.uint8 and scales.dtype == torch.float8_e4m3fn
    assert packed.shape == ref_packed.shape and scales.shape == ref_scales.shape
    where = f"tile_rows={tile_rows} sr={sr} seed={seed} offset={offset}"
    assert same_bits(scales, ref_scales), f"scale bytes differ ({where})"
    assert same_bits(packed, ref_packed), f"packed codes differ ({where})"


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


def test_registered_and_selected():
    assert "triton" in kernels.available_backends(DEVICE)
    assert kernels.select("auto", DEVICE).name == "triton"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["random", "heavy", "tiny", "huge", "subnormal", "zeros", "nan", "inf"])
def test_amax_and_quantize_match_reference(tb, kind, dtype):
    for i, shape in enumerate(SHAPES):
        x = make_input(kind, shape, dtype, seed=i)
        amax = tb.amax(x.to(DEVICE))
        assert amax.shape == () and amax.dtype == torch.float32
        assert same_float(amax, REF.amax(x)), f"amax {amax} vs {REF.amax(x)} for {shape}"
        # Two of the four (tile, rounding) modes per shape, rotating, so every mode meets several
        # shapes while the interpreter time stays low.
        for tile_rows, sr in (((1, False), (16, True)), ((16, False), (1, True)))[i % 2]:
            assert_quantize_equal(tb, x, REF.amax(x), tile_rows, sr, seed=i + 1, offset=3 * i)


@pytest.mark.parametrize(
    "global_amax", [0.5, 3.0, 1e6, 0.0, float("inf"), float("nan"), 1e-38, 2e-45], ids=lambda v: f"amax={v}"
)
def test_given_global_amax(tb, global_amax):
    """Caller-given amax: saturating scales when it is too small, FLT_MAX S_enc at 0, NaN scales if non-finite."""
    x = make_input("random", (17, 48), torch.float32)
    x[3, 5] = float("inf")  # one bad block even when the tensor amax is finite
    amax = torch.tensor(global_amax)
    for tile_rows in (1, 16):
        for sr in (False, True):
            assert_quantize_equal(tb, x, amax, tile_rows, sr, seed=7)


def test_e2m1_rounding_ties(tb):
    """S_enc = 1 (amax 2688) and a block amax of 6 give enc = 1, so x lands exactly on E2M1 ties."""
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 0.0, -0.0, 0.5, 2.0, 3.0, 4.0, 1e-8, -1e-8])
    x = torch.stack([ties, -ties, ties.flip(0), torch.roll(ties, 3)])
    x = torch.cat([x, x * 1.0000001, x * 0.9999999], dim=1)  # just above / below each tie
    x[:, 15::16] = 6.0
    for dtype in DTYPES:
        xd = x.to(dtype)
        for tile_rows in (1, 16):
            for sr in (False, True):
                assert_quantize_equal(tb, xd, torch.tensor(2688.0), tile_rows, sr, seed=3)


def test_e4m3_scale_ties(tb):
    """Global amax 448 makes the FP32 scale equal the block amax: put block amaxes on E4M3 midpoints."""
    midpoints = [
        1.0625,
        1.1875,
        432.0,
        3 * 2.0**-10,
        2.0**-10,
        5 * 2.0**-10,
        15 * 2.0**-11,
        0.0146484375,
        448.0,
        500.0,
        464.0,
        2.0**-12,
        240.0,
        0.3125,
        17 * 2.0**-10,
    ]
    x = torch.rand(len(midpoints), 16, generator=torch.Generator().manual_seed(1)) * 2.0**-12
    x[:, 7] = torch.tensor(midpoints)
    x = torch.cat([x, -x], dim=1)
    for tile_rows in (1, 16):
        assert_quantize_equal(tb, x, torch.tensor(448.0), tile_rows, False)
        assert_quantize_equal(tb, x, torch.tensor(448.0), tile_rows, True, seed=11)


@pytest.mark.parametrize("seed,offset", [(0, 0), (1, 0), (0, 1), (2**32 + 5, 2**33 + 1), (2**64 - 1, 2**63 + 9)])
def test_stochastic_rounding_seeds(tb, seed, offset):
    x = make_input("heavy", (48, 33), torch.bfloat16, seed=5)
    amax = REF.amax(x)
    assert_quantize_equal(tb, x, amax, 1, True, seed, offset)
    assert_quantize_equal(tb, x, amax, 16, True, seed, offset)


def test_stochastic_rounding_depends_on_seed(tb):
    x = make_input("random", (32, 64), torch.float32)
    amax = REF.amax(x)
    a, _ = tb.quantize_nvfp4(x.to(DEVICE), amax.to(DEVICE), 1, True, 1, 0)
    b, _ = tb.quantize_nvfp4(x.to(DEVICE), amax.to(DEVICE), 1, True, 2, 0)
    c, _ = tb.quantize_nvfp4(x.to(DEVICE), amax.to(DEVICE), 1, True, 1, 1)
    assert not torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("base", [0, 2**32 - 9, 2**40 + 3, 2**62])
def test_random_bytes_large_indices(base):
    """Element indices past 2^32 (tensors with more than 4G elements) use the high word too."""
    k1, k2 = derive_keys(123456789, 42)
    out = torch.empty(16, dtype=torch.int32, device=DEVICE)
    as32 = triton_backend._as_int32
    with triton_backend.TritonBackend._device_guard(DEVICE):
        _random_bytes_probe[(1,)](out, base, as32(k1), as32(k2), N=16)
    index = torch.arange(16, dtype=torch.int64) + base
    assert torch.equal(out.cpu().to(torch.int64), random_bytes(index, 123456789, 42))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rht_quantize(tb, dtype):
    custom = torch.where(torch.rand(16, generator=torch.Generator().manual_seed(4)) < 0.5, -1.0, 1.0)
    for i, shape in enumerate([(1, 16), (17, 48), (33, 80)]):
        for j, kind in enumerate(("random", "heavy", "nan")):
            x = make_input(kind, shape, dtype, seed=i)
            sr = (i + j) % 2 == 1
            # Two configurations per input (the full product is too slow for the interpreter).
            for signs, global_amax, stochastic in ((default_signs(16), None, sr), (custom, torch.tensor(5.0), not sr)):
                got = tb.rht_quantize_nvfp4(x.to(DEVICE), signs, global_amax, stochastic, i, 2 * j)
                want = REF.rht_quantize_nvfp4(x, signs, global_amax, stochastic, i, 2 * j)
                where = f"{shape} {kind} amax={global_amax} sr={stochastic}"
                assert same_float(got[2], want[2]), f"amax differs {where}"
                assert same_bits(got[1], want[1]), f"scales differ {where}"
                assert same_bits(got[0], want[0]), f"packed differs {where}"


def test_rht_unsupported_cases_fall_back(tb):
    x = make_input("random", (4, 32), torch.float32)
    with pytest.raises(Unsupported):
        tb.rht_quantize_nvfp4(x.to(DEVICE), default_signs(8), None, False, 0, 0)
    with pytest.raises(ValueError, match="K % 16 == 0"):  # invalid for every backend: the same clear error
        tb.rht_quantize_nvfp4(x[:, :24].to(DEVICE), default_signs(16), None, False, 0, 0)
    # Through the registry the reference takes over: same answer for size 8, same error for K=24.
    impl = kernels.select("triton", DEVICE)
    got = impl.rht_quantize_nvfp4(x.to(DEVICE), default_signs(8), None, False, 0, 0)
    want = REF.rht_quantize_nvfp4(x, default_signs(8), None, False, 0, 0)
    assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])
    with pytest.raises(ValueError):
        impl.rht_quantize_nvfp4(x[:, :24].to(DEVICE), default_signs(16), None, False, 0, 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scaled_values(tb, dtype):
    for i, shape in enumerate(SHAPES):
        for kind in ("random", "heavy", "nan", "tiny"):
            x = make_input(kind, shape, torch.float32, seed=i)
            packed, scales = REF.quantize_nvfp4(x, REF.amax(x), 1, False, 0, 0)
            got = tb.scaled_values(packed.to(DEVICE), scales.to(DEVICE), dtype)
            want = REF.scaled_values(packed, scales, dtype)
            assert got.dtype == dtype and got.shape == want.shape
            assert same_float(got, want), f"{shape} {kind}"


def test_public_api_and_noncontiguous_input(tb):
    w = make_input("heavy", (48, 40), torch.bfloat16, seed=9)
    for x in (w, w.t()):  # w.t() is not contiguous along the block dim
        for tile in ((1, 16), (16, 16)):
            q = quantize_nvfp4(x.to(DEVICE), tile=tile, stochastic=True, seed=5, backend="triton")
            r = quantize_nvfp4(x, tile=tile, stochastic=True, seed=5, backend="reference")
            assert same_bits(q.packed, r.packed) and same_bits(q.scales, r.scales)
            assert same_float(q.global_amax, r.global_amax)
            assert same_float(q.dequantize(), r.dequantize())


def test_weight_tiles_transpose_exactly(tb):
    """SPEC §2: with 16x16 tiles, quantize(W)ᵀ == quantize(Wᵀ) (here on codes via scaled values)."""
    w = make_input("random", (32, 48), torch.float32, seed=2)
    q = quantize_nvfp4(w.to(DEVICE), tile=(16, 16), backend="triton")
    qt = quantize_nvfp4(w.t().contiguous().to(DEVICE), tile=(16, 16), backend="triton")
    assert same_float(q.scaled_values(torch.float32).t(), qt.scaled_values(torch.float32))


# ----------------------------------------------------------------------------------------------
# Large shapes: only on a real GPU (excluded by the default `-m 'not slow and not gpu'`).
# ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [(4096, 4096), (1000, 4100), (8192, 8192)])
def test_large_shapes_on_gpu(tb, shape):
    x = make_input("heavy", shape, torch.bfloat16, seed=1)
    x[7, 100] = float("nan")
    xg = x.cuda()
    amax = tb.amax(xg)
    assert same_float(amax, REF.amax(x))
    clean = torch.nan_to_num(x)
    clean_amax = REF.amax(clean)
    for tile_rows in (1, 16):
        for sr in (False, True):
            assert_quantize_equal(tb, clean, clean_amax, tile_rows, sr, seed=99, offset=5)
    assert_quantize_equal(tb, x, amax.cpu(), 1, False)
    if shape[1] % 16 == 0:
        got = tb.rht_quantize_nvfp4(clean.cuda(), default_signs(16), None, True, 3, 4)
        want = REF.rht_quantize_nvfp4(clean, default_signs(16), None, True, 3, 4)
        assert same_float(got[2], want[2]) and same_bits(got[1], want[1]) and same_bits(got[0], want[0])
    packed, scales = tb.quantize_nvfp4(xg, amax, 1, False, 0, 0)
    assert same_float(tb.scaled_values(packed, scales), REF.scaled_values(packed.cpu(), scales.cpu()))


# ----------------------------------------------------------------------------------------------
# GPU code generation, checked without a GPU: compile for sm_90 and inspect the PTX.
# ----------------------------------------------------------------------------------------------

_COMPILE_FOR_SM90 = r"""
import json, re, sys
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile as triton_compile
from nvfp4.kernels import triton_kernels as tk

ALIGNED = {"x_ptr", "amax_ptr", "signs_ptr", "packed_ptr", "scales_ptr", "out_ptr",
           "M", "K", "NB", "stride_r", "stride_p", "stride_s", "stride_o"}  # as a launch on 8192x8192 sees them

def ptx(fn, signature, constexprs, warps):
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(signature) if name in ALIGNED}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    kernel = triton_compile(src, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": warps, "enable_fp_fusion": False})
    return kernel.asm["ptx"]

# stride_k = 1 (a row-major operand) is a constexpr, as Triton's launcher specializes an int argument equal to 1
quantize_sig = {"x_ptr": "*i16", "amax_ptr": "*fp32", "signs_ptr": "*fp32", "packed_ptr": "*u8", "scales_ptr": "*u8",
                "M": "i32", "K": "i32", "NB": "i32", "stride_r": "i32", "stride_k": "constexpr", "stride_p": "i32",
                "stride_s": "i32", "key1": "i32", "key2": "i32", "BF16_BITS": "constexpr", "TILE_ROWS": "constexpr",
                "STOCHASTIC": "constexpr", "INDEX64": "constexpr", "RHT": "constexpr", "OUT_VALUES": "constexpr",
                "OUT_BF16": "constexpr", "BLOCK_M": "constexpr", "BLOCKS_K": "constexpr"}
amax_sig = {"x_ptr": "*i16", "signs_ptr": "*fp32", "out_ptr": "*i32", "M": "i32", "K": "i32", "stride_r": "i32",
            "stride_k": "constexpr", "BF16_BITS": "constexpr", "RHT": "constexpr", "BLOCK_M": "constexpr",
            "BLOCK_K": "constexpr"}
values_sig = {"packed_ptr": "*u8", "scales_ptr": "*u8", "out_ptr": "*bf16", "M": "i32", "NB": "i32",
              "stride_p": "i32", "stride_s": "i32", "stride_o": "i32", "BLOCK_M": "constexpr", "BLOCKS_K": "constexpr"}
mx_sig = {"x_ptr": "*i16", "signs_ptr": "*fp32", "out_ptr": "*i16", "scales_ptr": "*u8", "M": "i32", "K": "i32",
          "NB": "i32", "stride_r": "i32", "stride_k": "constexpr", "stride_o": "i32", "stride_s": "i32", "key1": "i32",
          "key2": "i32", "BF16_BITS": "constexpr", "CEIL_RULE": "constexpr", "STOCHASTIC": "constexpr",
          "INDEX64": "constexpr", "RHT": "constexpr", "OUT_VALUES": "constexpr", "OUT_BF16": "constexpr",
          "BLOCK_M": "constexpr", "BLOCKS_K": "constexpr"}
blocks = {"BLOCK_M": tk.Q_BLOCK_M, "BLOCKS_K": tk.Q_BLOCKS_K}
out = {}
variants = {"sr": (1, True, False, False), "2d": (16, False, False, False), "rht_sr": (1, True, True, False),
            "values_rht_sr": (1, True, True, True)}
for name, (tile_rows, sr, rht, values) in variants.items():
    sig = dict(quantize_sig, packed_ptr="*i16") if values else quantize_sig
    out["quantize_" + name] = ptx(tk.nvfp4_quantize_kernel, sig, {"stride_k": 1, "BF16_BITS": True,
                                  "TILE_ROWS": tile_rows, "STOCHASTIC": sr, "INDEX64": name == "sr", "RHT": rht,
                                  "OUT_VALUES": values, "OUT_BF16": True, **blocks}, tk.Q_WARPS)
for name, (rht, values) in {"packed": (False, False), "values_rht_sr": (True, True)}.items():
    sig = mx_sig if values else dict(mx_sig, out_ptr="*u8")
    out["mxfp4_" + name] = ptx(tk.mxfp4_quantize_kernel, sig, {"stride_k": 1, "BF16_BITS": True, "CEIL_RULE": True,
                               "STOCHASTIC": values, "INDEX64": False, "RHT": rht, "OUT_VALUES": values,
                               "OUT_BF16": True, "BLOCK_M": tk.Q_BLOCK_M, "BLOCKS_K": tk.MX_BLOCKS_K}, tk.Q_WARPS)
out["amax_rht"] = ptx(tk.amax_kernel, amax_sig, {"stride_k": 1, "BF16_BITS": True, "RHT": True,
                      "BLOCK_M": tk.A_BLOCK_M, "BLOCK_K": tk.A_BLOCK_K}, tk.A_WARPS)
out["scaled_values"] = ptx(tk.scaled_values_kernel, values_sig, blocks, tk.Q_WARPS)
json.dump(out, sys.stdout)
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_with_exact_arithmetic():
    """The interpreter cannot show what the GPU would run: compile for an H100 (no GPU needed) and
    check the PTX: IEEE divisions only, no FMA contraction, no approximate or flush-to-zero
    arithmetic (except floor, whose inputs here are >= 0, where FTZ cannot change the result),
    and 16-byte vector loads."""
    import json
    import re
    import subprocess
    import sys
    from pathlib import Path

    import nvfp4

    if "nvidia" not in getattr(importlib.import_module("triton.backends"), "backends", {}):
        pytest.skip("Triton's NVIDIA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(nvfp4.__file__).parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_SM90], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, ptx in json.loads(proc.stdout).items():
        assert "fma." not in ptx, f"{name}: FMA contraction"
        assert not re.search(r"div\.(full|approx)", ptx), f"{name}: approximate division"
        ftz = set(re.findall(r"\b[a-z]+(?:\.[a-z0-9]+)*\.ftz(?:\.[a-z0-9]+)*", ptx))
        assert ftz <= {"cvt.rmi.ftz.f32.f32"}, f"{name}: flush-to-zero arithmetic {ftz}"
        assert "ld.global.v4" in ptx, f"{name}: loads are not vectorised"
        if name.startswith("quantize"):
            assert "div.rn.f32" in ptx


def test_transpose_keyword_matches_reference(tb) -> None:
    """The layer calls quantize/rht_quantize with transpose=True; the Triton backend must accept it."""
    from nvfp4.formats.hadamard import default_signs

    x = torch.randn(48, 32, device=DEVICE)
    signs = default_signs(16).to(DEVICE)
    amax = REF.amax(x)
    got = tb.quantize_nvfp4(x, amax, 1, True, 3, 5, transpose=True)
    want = REF.quantize_nvfp4(x, amax, 1, True, 3, 5, transpose=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1].view(torch.uint8), want[1].view(torch.uint8))
    got = tb.rht_quantize_nvfp4(x, signs, None, False, 3, 5, transpose=True)
    want = REF.rht_quantize_nvfp4(x, signs, None, False, 3, 5, transpose=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1].view(torch.uint8), want[1].view(torch.uint8))


# ----------------------------------------------------------------------------------------------
# The fused GEMM-operand op and MXFP4 (the layer's hot path)
# ----------------------------------------------------------------------------------------------

FUSED_KINDS = ["heavy", "subnormal", "zeros", "nan", "inf"]


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("kind", FUSED_KINDS)
def test_fake_quantize_nvfp4_matches_reference(tb, kind, dtype):
    """Values bitwise (NaN positions included) and the amax, for both layouts, RN/SR, 1x16/16x16, RHT16 on/off."""
    x = make_input(kind, (40, 48), dtype, seed=11)
    cases = itertools.product((False, True), (False, True), (1, 16), (False, True), (torch.bfloat16, torch.float32))
    for transpose, sr, tile_rows, rht, out_dtype in cases:
        if rht and (tile_rows == 16 or transpose):  # RHT: 1x16 only, and K % 16 == 0 (K = 40 when transposed)
            continue
        kw = dict(transpose=transpose, rht_signs=default_signs(16) if rht else None, out_dtype=out_dtype)
        values, amax = tb.fake_quantize_nvfp4(x.to(DEVICE), None, tile_rows, sr, 4, 1, **kw)
        want_values, want_amax = REF.fake_quantize_nvfp4(x, None, tile_rows, sr, 4, 1, **kw)
        where = f"transpose={transpose} sr={sr} tile_rows={tile_rows} rht={rht} out={out_dtype}"
        assert values.dtype == out_dtype and values.shape == want_values.shape, where
        assert same_float(amax, want_amax), where
        assert same_float(values, want_values), where


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("kind", FUSED_KINDS)
def test_mxfp4_matches_reference(tb, kind, dtype):
    """MXFP4 packed codes + E8M0 bytes and the fused values (RHT32 on/off), both layouts and scale rules, RN/SR."""
    x = make_input(kind, (33, 64), dtype, seed=12)
    for transpose, sr, rule in itertools.product((False, True), (False, True), ("ceil", "floor")):
        kw = dict(scale_rule=rule, transpose=transpose)
        packed, scales = tb.quantize_mxfp4(x.to(DEVICE), sr, 5, 3, **kw)
        want_packed, want_scales = REF.quantize_mxfp4(x, sr, 5, 3, **kw)
        where = f"transpose={transpose} sr={sr} rule={rule}"
        assert scales.dtype == torch.float8_e8m0fnu and same_bits(scales, want_scales), where
        assert same_bits(packed, want_packed), where
        rht_options = (False,) if transpose else (False, True)  # the logical K is 33 when transposed
        for rht, out_dtype in itertools.product(rht_options, (torch.bfloat16, torch.float32)):
            fkw = dict(kw, rht_signs=default_signs(32) if rht else None, out_dtype=out_dtype)
            values = tb.fake_quantize_mxfp4(x.to(DEVICE), sr, 5, 3, **fkw)
            assert same_float(values, REF.fake_quantize_mxfp4(x, sr, 5, 3, **fkw)), f"{where} rht={rht}"


def test_transposed_operands_are_read_in_place(tb):
    """transpose=True and .t() views reach the kernels as strided views of the same memory, not copies."""
    x = make_input("heavy", (48, 32), torch.float32).to(DEVICE)
    assert tb._operand(x, True).data_ptr() == x.data_ptr()
    assert tb._operand(x.t(), False).data_ptr() == x.data_ptr()
    got, _ = tb.fake_quantize_nvfp4(x.t(), None, 1, True, 2, 0, rht_signs=default_signs(16))
    want, _ = REF.fake_quantize_nvfp4(x.t().contiguous(), None, 1, True, 2, 0, rht_signs=default_signs(16))
    assert same_float(got, want)


def test_fused_ops_fall_back_or_fail_clearly(tb):
    x = make_input("random", (40, 64), torch.float32).to(DEVICE)
    with pytest.raises(Unsupported):  # a 16-point RHT is not fused for MXFP4: the reference runs it
        tb.fake_quantize_mxfp4(x, False, 0, 0, rht_signs=default_signs(16))
    with pytest.raises(ValueError, match="K % 32 == 0"):
        tb.fake_quantize_mxfp4(x, False, 0, 0, transpose=True, rht_signs=default_signs(32))  # K = 40
    with pytest.raises(ValueError, match="K % 16 == 0"):
        tb.fake_quantize_nvfp4(x[:, :40], None, 1, False, 0, 0, transpose=True, rht_signs=default_signs(16))


FP8_KINDS = ("random", "heavy", "tiny", "huge", "subnormal", "zeros", "nan", "inf")
FP8_SHAPES = ((1, 1), (3, 130), (130, 72))


def same_fp8(a: torch.Tensor, b: torch.Tensor) -> bool:
    """E4M3 bytes equal, except that any NaN byte (0x7F/0xFF) equals any NaN byte."""
    a, b = a.cpu().view(torch.uint8), b.cpu().view(torch.uint8)
    nan_a, nan_b = (a & 0x7F) == 0x7F, (b & 0x7F) == 0x7F
    return torch.equal(nan_a, nan_b) and torch.equal(a[~nan_a], b[~nan_b])


@pytest.mark.parametrize("tile", [(1, 128), (128, 128)], ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_fp8_blockwise_matches_reference(tb, tile, dtype):
    """FP8 on CUDA no longer runs the reference: the Triton kernel's bytes, scales and GEMM values equal it."""
    for i, shape in enumerate(FP8_SHAPES):
        for kind in FP8_KINDS:
            x = make_input(kind, shape, dtype, seed=i)
            for transpose in (False, True):
                where = f"{shape} {kind} transpose={transpose}"
                data, scales = tb.quantize_fp8(x.to(DEVICE), tile, transpose=transpose)
                want_data, want_scales = REF.quantize_fp8(x, tile, transpose=transpose)
                assert data.dtype == torch.float8_e4m3fn and data.shape == want_data.shape, where
                assert same_fp8(data, want_data), f"data differs {where}"
                assert same_float(scales, want_scales), f"scales differ {where}"
                values = tb.fake_quantize_fp8(x.to(DEVICE), tile, transpose=transpose)
                assert same_float(values, REF.fake_quantize_fp8(x, tile, transpose=transpose)), f"values {where}"


def _e2m1_boundary_rows() -> torch.Tensor:
    """Rows of 16 whose block amax is 6 (so, with global amax 2688, every scale is 1 and v = x exactly), carrying
    every E2M1 rounding boundary and grid value, its FP32 neighbours, both signs, and values just under 6."""
    points = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0])
    up, down = torch.nextafter(points, torch.tensor(7.0)), torch.nextafter(points, torch.tensor(-1.0))
    values = torch.cat([points, up, down])
    values = torch.cat([values, -values, torch.tensor([5.999, 1e-30, 0.1, 2.25, 4.5, 5.5])]).clamp(-6, 6)
    values = values[: values.numel() // 15 * 15].view(-1, 15)
    return torch.cat([torch.full((values.shape[0], 1), 6.0), values], dim=1)


@pytest.mark.parametrize("stochastic", [False, True], ids=["RN", "SR"])
def test_e2m1_rounding_at_every_boundary(tb, stochastic):
    """The bit-level E2M1 rounding (RN) and the index-from-floor SR path equal the reference's comparisons exactly at
    the rounding boundaries; for SR, over ~500 random bytes per value (so t lands exactly on 2 and 4 too)."""
    x = _e2m1_boundary_rows().repeat(32 if stochastic else 1, 1)  # SR: each value meets most of the 256 bytes
    amax = torch.tensor(2688.0)
    for seed in range(16 if stochastic else 1):
        got = tb.quantize_nvfp4(x.to(DEVICE), amax.to(DEVICE), 1, stochastic, seed, 3)
        want = REF.quantize_nvfp4(x, amax, 1, stochastic, seed, 3)
        assert same_bits(got[1], want[1]), "scales"  # all 1.0: v = x
        assert same_bits(got[0], want[0]), f"codes differ (seed {seed})"


def test_sr_index_paths_agree(tb, monkeypatch):
    """Launches below 2^32 elements take the 32-bit SR index path; the 64-bit one (for larger tensors) gives the same
    bits. Forced here on a small tensor, both must equal the reference."""
    x = make_input("random", (33, 80), torch.float32, seed=4).to(DEVICE)
    want = REF.quantize_nvfp4(x.cpu(), REF.amax(x.cpu()), 1, True, 11, 7)
    for wide in (False, True):
        monkeypatch.setattr(triton_backend, "_needs_index64", lambda rows, cols, wide=wide: wide)
        got = tb.quantize_nvfp4(x, REF.amax(x), 1, True, 11, 7)
        assert same_bits(got[0], want[0]), f"64-bit index path={wide}"
        values = tb.fake_quantize_mxfp4(x[:, :64], True, 11, 7)
        assert same_float(values, REF.fake_quantize_mxfp4(x[:, :64].cpu(), True, 11, 7)), f"mxfp4, 64-bit={wide}"


def test_launch_grids_are_one_dimensional_past_the_65535_limit(tb, monkeypatch):
    """A 2-D grid's second axis stops at 65,535 programs: the Wgrad operand of a micro-batch of 9M tokens (x
    transposed: column tiles = tokens / 128) could not launch. Every kernel now launches a 1-D grid (up to 2^31 - 1
    programs). Checked on the launch itself (a stand-in records the grid; nothing runs or is read)."""
    grids = {}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            grids[self.name] = grid
            return lambda *args, **kwargs: None

    for name in ("nvfp4_quantize_kernel", "mxfp4_quantize_kernel", "amax_kernel", "scaled_values_kernel"):
        monkeypatch.setattr(triton_kernels, name, Recorder(name))
    if _USE_INTERPRETER:  # the backend tells the interpreter by the kernels' type, which the stand-ins replace
        monkeypatch.setattr(triton_backend, "_interpreted", lambda: True)
    tokens = 9_000_000
    x = torch.zeros(1, 32, device=DEVICE).expand(tokens, 32)  # strides (0, 1): read in place, never copied
    tb.fake_quantize_nvfp4(x, torch.ones((), device=DEVICE), 1, True, 0, 0, transpose=True)
    tb.fake_quantize_mxfp4(x, True, 0, 0, transpose=True)
    tb.amax(x.t())
    packed = torch.zeros(1, tokens // 2, dtype=torch.uint8, device=DEVICE)
    tb.scaled_values(packed, torch.zeros(1, tokens // 16, dtype=torch.uint8, device=DEVICE).view(torch.float8_e4m3fn))
    assert all(len(grid) == 1 for grid in grids.values()), grids
    assert grids["nvfp4_quantize_kernel"][0] == (32 // 32) * -(-tokens // 128)  # one row tile x 70,313 column tiles
    assert -(-tokens // 128) > 65_535
