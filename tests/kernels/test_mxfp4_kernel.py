"""The C kernel's MXFP4 ops (``quantize_mxfp4``, ``fake_quantize_mxfp4``) against the reference backend, bit for bit:
packed codes and E8M0 scale bytes exactly, GEMM values bitwise (NaN positions included), for the vectorized and the
portable builds, every dtype, both layouts, both scale rules, RN and SR, with and without the fused 32-point RHT.
The reference itself is checked against the independent numpy oracle in tests/formats/test_mxfp4.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from nvfp4 import kernels
from nvfp4.formats.hadamard import default_signs
from nvfp4.kernels.contract import Unsupported
from nvfp4.kernels.cpu import CPUBackend
from nvfp4.quantize import quantize_mxfp4
from tests.kernels.inputs import make_input, same_float
from tests.kernels.test_cpu_backend import REF, torch_threads

SIGNS32 = default_signs(32)
FLOATS = (torch.float32, torch.bfloat16, torch.float16)
# (rows, cols) of the INPUT x2d; with transpose=True the logical tensor is (cols, rows).
SHAPES = [(1, 1), (3, 33), (33, 15), (17, 100), (32, 32), (64, 31), (31, 64), (20, 300), (96, 40)]
KINDS = ["random", "heavy", "tiny", "huge", "mixed", "zeros", "signed_zeros", "ties", "nonfinite"]


def mx_input(kind: str, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    if kind == "ties":  # block amax 6 gives scale 1 (ceil rule), so the values sit exactly on the E2M1 thresholds
        g = torch.Generator().manual_seed(seed)
        vals = torch.tensor([0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 0.5, 1, 1.5, 2, 3, 4, 6, 5.5])
        x = vals[torch.randint(0, 16, shape, generator=g)] * torch.sign(torch.randn(shape, generator=g))
        x[:, ::32] = 6.0
        return x.contiguous()
    return make_input(kind, shape, seed=seed)


def assert_packed_equal(got: tuple, want: tuple) -> None:
    (p1, s1), (p0, s0) = got, want
    assert p1.dtype == torch.uint8 and s1.dtype == torch.float8_e8m0fnu, (p1.dtype, s1.dtype)
    assert p1.shape == p0.shape and s1.shape == s0.shape, (p1.shape, p0.shape, s1.shape, s0.shape)
    bad = (s1.view(torch.uint8) != s0.view(torch.uint8)).nonzero()
    assert bad.numel() == 0, f"{len(bad)} scales differ, first at {bad[0].tolist()}"
    bad = (p1 != p0).nonzero()
    assert bad.numel() == 0, f"{len(bad)} packed bytes differ, first at {bad[0].tolist()}"


def assert_values_equal(v1: torch.Tensor, v0: torch.Tensor) -> None:
    assert v1.shape == v0.shape and v1.dtype == v0.dtype, (v1.shape, v1.dtype, v0.shape, v0.dtype)
    if not same_float(v1, v0):
        nan1, nan0 = torch.isnan(v1), torch.isnan(v0)
        assert torch.equal(nan1, nan0), f"NaN positions differ: {int((nan1 != nan0).sum())}"
        bad = (v1.masked_fill(nan1, 0).float() != v0.masked_fill(nan0, 0).float()).nonzero()
        raise AssertionError(f"values differ (e.g. at {bad[0].tolist() if len(bad) else 'a zero sign'})")


def logical_cols(x: torch.Tensor, transpose: bool) -> int:
    return x.shape[0] if transpose else x.shape[1]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_quantize_mxfp4_matches_reference(cpu, shape, kind):
    for dtype, transpose, stochastic, rule in itertools.product(
        FLOATS, (False, True), (False, True), ("ceil", "floor")
    ):
        x = mx_input(kind, shape).to(dtype)
        kw = dict(scale_rule=rule, transpose=transpose)
        got = cpu.quantize_mxfp4(x, stochastic, 99, 3, **kw)
        assert_packed_equal(got, REF.quantize_mxfp4(x, stochastic, 99, 3, **kw))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_fake_quantize_mxfp4_matches_reference(cpu, shape, kind):
    """Every dtype x transpose x RN/SR x scale rule x RHT32 (where K % 32 == 0); the output dtype rotates."""
    out_dtypes = itertools.cycle((torch.bfloat16, torch.float32, torch.float16))
    for dtype, transpose, stochastic, rule, rht in itertools.product(
        FLOATS, (False, True), (False, True), ("ceil", "floor"), (False, True)
    ):
        x = mx_input(kind, shape).to(dtype)
        if rht and logical_cols(x, transpose) % 32:
            continue
        kw = dict(scale_rule=rule, transpose=transpose, rht_signs=SIGNS32 if rht else None, out_dtype=next(out_dtypes))
        got = cpu.fake_quantize_mxfp4(x, stochastic, 1234, 7, **kw)
        assert_values_equal(got, REF.fake_quantize_mxfp4(x, stochastic, 1234, 7, **kw))


@pytest.mark.parametrize("seed, offset", [(0, 0), (1, 5), (2**40 + 3, 2**33 + 1), (2**64 - 1, 123456789)])
def test_sr_streams_match(cpu, seed, offset):
    x = make_input("heavy", (40, 96), seed=3)
    for transpose in (False, True):
        got = cpu.fake_quantize_mxfp4(x, True, seed, offset, transpose=transpose)
        assert_values_equal(got, REF.fake_quantize_mxfp4(x, True, seed, offset, transpose=transpose))
    other = cpu.fake_quantize_mxfp4(x, True, seed, offset + 1)
    assert not torch.equal(other, cpu.fake_quantize_mxfp4(x, True, seed, offset)), "the offset must change the bits"


@pytest.mark.parametrize("shape", [(208, 600), (100, 1037), (4128, 32)])
def test_large_inputs_use_the_threaded_path(cpu, shape):
    """Above 2^15 elements the kernel runs an OpenMP team (of 2 here), in both walk orders."""
    x = make_input("heavy", shape, seed=8)
    x[-1, -2] = float("nan")
    x[-20, 3] = float("inf")
    cases = itertools.product((torch.float32, torch.bfloat16), (False, True), (False, True))
    for dtype, transpose, stochastic in cases:
        xd = x.to(dtype)
        rht = SIGNS32 if logical_cols(xd, transpose) % 32 == 0 else None
        with torch_threads(2):
            got = cpu.fake_quantize_mxfp4(xd, stochastic, 6, 1, transpose=transpose, rht_signs=rht)
            packed = cpu.quantize_mxfp4(xd, stochastic, 6, 1, transpose=transpose)
        assert_values_equal(got, REF.fake_quantize_mxfp4(xd, stochastic, 6, 1, transpose=transpose, rht_signs=rht))
        assert_packed_equal(packed, REF.quantize_mxfp4(xd, stochastic, 6, 1, transpose=transpose))


def test_transposed_views_are_read_in_place(cpu):
    """A .t() view (non-contiguous) is the same logical tensor as its contiguous copy."""
    x = make_input("heavy", (64, 96), seed=4)
    for transpose in (False, True):
        got = cpu.fake_quantize_mxfp4(x.t(), True, 2, 9, transpose=transpose)
        want = REF.fake_quantize_mxfp4(x.t().contiguous(), True, 2, 9, transpose=transpose)
        assert_values_equal(got, want)


def test_fake_quantize_is_the_dequantized_packed_quantization(cpu):
    x = make_input("heavy", (48, 96), seed=5)
    q = quantize_mxfp4(x, True, 11, offset=4, backend="cpu")
    assert_values_equal(cpu.fake_quantize_mxfp4(x, True, 11, 4), q.scaled_values(torch.bfloat16))


def test_public_quantize_mxfp4_dispatches_to_the_cpu_kernel(monkeypatch):
    x = make_input("heavy", (16, 70), seed=6)
    want = quantize_mxfp4(x, True, 3, offset=2, backend="reference")

    def fail(*args, **kwargs):
        raise AssertionError("the reference must not run")

    monkeypatch.setattr(REF, "quantize_mxfp4", fail)
    monkeypatch.setattr(REF, "fake_quantize_mxfp4", fail)
    got = quantize_mxfp4(x, True, 3, offset=2)
    assert_packed_equal((got.packed, got.scales), (want.packed, want.scales))
    kernels.select("auto", "cpu").fake_quantize_mxfp4(x, False, 0, 0)


def test_unsupported_transforms_and_bad_shapes():
    cpu = CPUBackend.instance()
    impl = kernels.select("cpu", "cpu")
    x = make_input("random", (40, 64))
    with pytest.raises(Unsupported):  # only the 32-point RHT is fused ...
        cpu.fake_quantize_mxfp4(x, False, 0, 0, rht_signs=default_signs(16))
    got = impl.fake_quantize_mxfp4(x, False, 0, 0, rht_signs=default_signs(16))  # ... the rest runs the reference
    assert_values_equal(got, REF.fake_quantize_mxfp4(x, False, 0, 0, rht_signs=default_signs(16)))
    for backend in (cpu, REF):
        with pytest.raises(ValueError, match="K % 32 == 0"):
            backend.fake_quantize_mxfp4(x, False, 0, 0, transpose=True, rht_signs=SIGNS32)  # K = 40
    with pytest.raises(ValueError, match="scale_rule"):
        quantize_mxfp4(x, scale_rule="nearest", backend="cpu")
