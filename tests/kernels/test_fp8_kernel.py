"""The C kernel's blockwise FP8 ops against the reference backend (``quantize_fp8_blockwise``), bit for bit: FP32
scales and E4M3 bytes (a NaN code matches any NaN code: the sign of a NaN is not specified), and the FP32 GEMM
operand e4m3(x/s)·s, for both builds, every dtype, both layouts and both tiles. The reference itself is checked
against the numpy oracle in tests/formats/test_fp8.py."""

from __future__ import annotations

import itertools

import pytest
import torch

from nvfp4 import kernels
from nvfp4.kernels.cpu import CPUBackend
from tests.kernels.inputs import make_input, same_float
from tests.kernels.test_cpu_backend import REF, torch_threads

FLOATS = (torch.float32, torch.bfloat16, torch.float16)
TILES = ((1, 128), (128, 128))
SHAPES = [(1, 1), (3, 130), (129, 64), (130, 257), (256, 128)]
KINDS = ["random", "heavy", "tiny", "huge", "mixed", "zeros", "signed_zeros", "nonfinite"]


def assert_fp8_equal(got: tuple, want: tuple) -> None:
    (d1, s1), (d0, s0) = got, want
    assert d1.dtype == torch.float8_e4m3fn and d1.shape == d0.shape, (d1.dtype, d1.shape, d0.shape)
    assert same_float(s1, s0), "scales differ"
    nan1, nan0 = torch.isnan(d1.float()), torch.isnan(d0.float())
    assert torch.equal(nan1, nan0), "NaN positions differ"
    bad = (d1.view(torch.uint8) != d0.view(torch.uint8)) & ~nan0
    assert not bad.any(), f"{int(bad.sum())} codes differ, first at {bad.nonzero()[0].tolist()}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_fp8_matches_reference(cpu, shape, kind):
    for dtype, transpose, tile in itertools.product(FLOATS, (False, True), TILES):
        x = make_input(kind, shape).to(dtype)
        assert_fp8_equal(cpu.quantize_fp8(x, tile, transpose=transpose), REF.quantize_fp8(x, tile, transpose=transpose))
        got = cpu.fake_quantize_fp8(x, tile, transpose=transpose)
        assert got.dtype == torch.float32
        assert same_float(got, REF.fake_quantize_fp8(x, tile, transpose=transpose)), (dtype, transpose, tile)


def test_large_inputs_use_the_threaded_path(cpu):
    x = make_input("heavy", (300, 520), seed=3)
    x[7, 9] = float("nan")
    for transpose, tile in itertools.product((False, True), TILES):
        with torch_threads(2):
            got = cpu.fake_quantize_fp8(x, tile, transpose=transpose)
        assert same_float(got, REF.fake_quantize_fp8(x, tile, transpose=transpose))


def test_dispatch_and_unsupported_tiles():
    impl = kernels.select("auto", "cpu")
    x = make_input("random", (64, 256))
    with pytest.raises(ValueError, match="tile"):  # no backend has that tile: the spec says so
        CPUBackend.instance().fake_quantize_fp8(x, (16, 16))
    with pytest.raises(ValueError, match="tile"):  # the reference's error, through the fallback wrapper
        impl.fake_quantize_fp8(x, (16, 16))
