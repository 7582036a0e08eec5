"""The Four Over Six C kernel (csrc/fouroversix.c), both builds (AVX-512 and portable scalar), against the oracle
(nvfp4.formats.fouroversix through the reference backend): codes, scales and values bit for bit (any NaN equals any
NaN), on every adversarial input kind, odd shapes, both tiles, RN and SR, transposed, with the fused RHT16, and on
inputs large enough to take the threaded paths."""

from __future__ import annotations

import pytest
import torch

from nvfp4.formats.hadamard import default_signs
from nvfp4.kernels import QuantSpec
from nvfp4.kernels.reference import ReferenceBackend

from .inputs import KINDS, make_input, same_float

REF = ReferenceBackend.instance()


def _same(a, b) -> bool:
    if a.data.dtype == torch.uint8:
        data = torch.equal(a.data, b.data)
    else:
        data = same_float(a.data, b.data)
    scales = a.scales is None and b.scales is None
    if not scales:
        sa, sb = a.scales.view(torch.uint8), b.scales.view(torch.uint8)
        nan_a, nan_b = (sa & 0x7F) == 0x7F, (sb & 0x7F) == 0x7F
        scales = torch.equal(nan_a, nan_b) and torch.equal(sa[~nan_a], sb[~nan_b])
    return data and scales and same_float(a.amax, b.amax)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(33, 47), (48, 64)])
def test_every_option_matches_the_reference(cpu, kind, shape):
    x = make_input(kind, shape)
    for tile in ((1, 16), (16, 16)):
        for stochastic in (False, True):
            for transpose in (False, True):
                for out in (None, torch.bfloat16, torch.float32):
                    spec = QuantSpec("nvfp4", tile, stochastic, transpose, None, "ceil", out, True)
                    got = cpu.quantize(x, spec, seed=11, offset=7)
                    want = REF.quantize(x, spec, seed=11, offset=7)
                    assert _same(got, want), (kind, shape, tile, stochastic, transpose, out)


@pytest.mark.parametrize("kind", KINDS)
def test_the_fused_rht_matches_the_reference(cpu, kind):
    x = make_input(kind, (40, 64))
    signs = default_signs(16)
    for stochastic in (False, True):
        for transpose in (False, True):
            t = x[:32] if transpose else x  # K = 32 rows when transposed: a multiple of 16
            spec = QuantSpec("nvfp4", (1, 16), stochastic, transpose, 16, "ceil", torch.bfloat16, True)
            assert _same(cpu.quantize(t, spec, signs=signs, seed=3), REF.quantize(t, spec, signs=signs, seed=3))


def test_bf16_input_and_threaded_sizes(cpu):
    torch.manual_seed(0)
    x = torch.randn(512, 272) * torch.exp(torch.randn(512, 1) * 3)
    for dtype in (torch.float32, torch.bfloat16):
        for tile in ((1, 16), (16, 16)):
            spec = QuantSpec("nvfp4", tile, True, False, None, "ceil", None, True)
            assert _same(cpu.quantize(x.to(dtype), spec, seed=1), REF.quantize(x.to(dtype), spec, seed=1))


def test_a_caller_amax_is_used_as_given(cpu):
    x = torch.randn(32, 48)
    for amax in (x.abs().max() * 2, torch.tensor(0.0), torch.tensor(float("inf"))):
        spec = QuantSpec("nvfp4", (1, 16), False, False, None, "ceil", torch.float32, True)
        assert _same(cpu.quantize(x, spec, amax=amax), REF.quantize(x, spec, amax=amax))
