"""The fused backend ops: ``fake_quantize_nvfp4`` and the ``transpose=True`` forms of ``quantize_nvfp4`` and
``rht_quantize_nvfp4``. The reference backend defines them as compositions of the existing reference functions; the
C CPU backend (vectorized and portable builds) must match them bit for bit: scales byte for byte, values bitwise
(including where the NaNs are).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from nvfp4 import kernels
from nvfp4.formats.hadamard import random_hadamard_transform
from nvfp4.formats.rng import derive_keys, random_bytes
from nvfp4.kernels.contract import Unsupported
from nvfp4.kernels.cpu import CPUBackend
from nvfp4.quantize import quantize_nvfp4
from tests.kernels.inputs import make_input, same_float
from tests.kernels.test_cpu_backend import (
    REF,
    SIGNS,
    assert_quant_equal,
    torch_threads,
)

FLOATS = (torch.float32, torch.bfloat16, torch.float16)
# (rows, cols) of the INPUT x2d; with transpose=True the logical tensor is (cols, rows). Odd sizes on both sides.
SHAPES = [(1, 1), (3, 17), (33, 15), (17, 100), (16, 16), (31, 48), (48, 31), (20, 300), (64, 80)]
KINDS = ["random", "heavy", "tiny", "huge", "mixed", "zeros", "signed_zeros", "ties", "nonfinite"]


def assert_fake_equal(got: tuple, want: tuple) -> None:
    (v1, a1), (v0, a0) = got, want
    assert v1.shape == v0.shape and v1.dtype == v0.dtype, (v1.shape, v1.dtype, v0.shape, v0.dtype)
    assert a1.dtype == torch.float32 and a1.dim() == 0
    assert same_float(a1, a0), (a1, a0)
    nan1, nan0 = torch.isnan(v1), torch.isnan(v0)
    assert torch.equal(nan1, nan0), f"NaN positions differ: {int((nan1 != nan0).sum())}"
    if not same_float(v1, v0):
        bad = (v1.masked_fill(nan1, 0) != v0.masked_fill(nan0, 0)) | (
            torch.signbit(v1.masked_fill(nan1, 0)) != torch.signbit(v0.masked_fill(nan0, 0))
        )
        first = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{int(bad.sum())} values differ, first at {first}: {v1[first]} vs {v0[first]}")


def logical_cols(x: torch.Tensor, transpose: bool) -> int:
    return x.shape[0] if transpose else x.shape[1]


def amax_arg(choice: int, x: torch.Tensor) -> torch.Tensor | None:
    """None (the op computes it), or a caller-given amax: 3.5, or 2688 (S_enc = 1: exact ties for 'ties')."""
    return (None, torch.tensor(3.5), torch.tensor(2688.0))[choice % 3]


# --- fake_quantize vs the reference ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_fake_quantize_matches_reference(cpu, shape, kind):
    """Every dtype x transpose x RHT x RN/SR; tile rows, given/None amax and the output dtype rotate through."""
    counter = itertools.count()
    for dtype in FLOATS:
        x = make_input(kind, shape, seed=3).to(dtype)
        for transpose, rht, stochastic in itertools.product((False, True), repeat=3):
            if rht and logical_cols(x, transpose) % 16:
                continue
            i = next(counter)
            tile_rows = (1, 16)[i % 2]
            out_dtype = (torch.bfloat16, torch.float32, torch.bfloat16, torch.float16)[i % 4]
            args = (amax_arg(i // 2, x), tile_rows, stochastic, 1234 + i, 7)
            kw = dict(transpose=transpose, rht_signs=SIGNS if rht else None, out_dtype=out_dtype)
            assert_fake_equal(cpu.fake_quantize_nvfp4(x, *args, **kw), REF.fake_quantize_nvfp4(x, *args, **kw))


@pytest.mark.parametrize("shape", [(48, 32), (37, 64)])
def test_fake_quantize_every_option(cpu, shape):
    """The full product of the options on two shapes (one with a row tail in each layout)."""
    x = make_input("heavy", shape, seed=5)
    x[5, 7] = float("nan")  # one NaN block (one NaN 16x16 tile) in each layout
    for dtype, transpose, rht, tile_rows, stochastic, amax, out_dtype in itertools.product(
        (torch.float32, torch.bfloat16),
        (False, True),
        (False, True),
        (1, 16),
        (False, True),
        (0, 1),
        (torch.bfloat16, torch.float32),
    ):
        xd = x.to(dtype)
        if rht and logical_cols(xd, transpose) % 16:
            continue
        args = (amax_arg(amax, xd), tile_rows, stochastic, 99, 3)
        kw = dict(transpose=transpose, rht_signs=SIGNS if rht else None, out_dtype=out_dtype)
        assert_fake_equal(cpu.fake_quantize_nvfp4(xd, *args, **kw), REF.fake_quantize_nvfp4(xd, *args, **kw))


@pytest.mark.parametrize("amax_value", [2688.0, 1.0, 1e-3, 0.0, 1e-45, float("inf"), float("nan")])
def test_fake_quantize_given_amax_edges(cpu, amax_value):
    """A caller-given amax, even 0, subnormal, below max|x| or non-finite, is used exactly as the reference does."""
    x = make_input("ties", (32, 48))
    x[:, ::16] = 6.0
    x[::16, :] = 6.0
    for transpose, rht, tile_rows, stochastic in itertools.product((False, True), repeat=4):
        args = (torch.tensor(amax_value), 16 if tile_rows else 1, stochastic, 3, 0)
        kw = dict(transpose=transpose, rht_signs=SIGNS if rht else None)
        assert_fake_equal(cpu.fake_quantize_nvfp4(x, *args, **kw), REF.fake_quantize_nvfp4(x, *args, **kw))


@pytest.mark.parametrize("seed, offset", [(0, 0), (1, 5), (2**40 + 3, 2**33 + 1), (2**64 - 1, 123456789)])
def test_fake_quantize_sr_streams(cpu, seed, offset):
    x = make_input("random", (80, 48), seed=4)
    for transpose, rht in itertools.product((False, True), repeat=2):
        kw = dict(transpose=transpose, rht_signs=SIGNS if rht else None)
        args = (None, 1, True, seed, offset)
        got = cpu.fake_quantize_nvfp4(x, *args, **kw)
        assert_fake_equal(got, REF.fake_quantize_nvfp4(x, *args, **kw))
        other = cpu.fake_quantize_nvfp4(x, None, 1, True, seed ^ 1, offset, **kw)
        assert not torch.equal(other[0], got[0]), "a different seed must give different SR bytes"


def test_fake_quantize_is_the_composition():
    """The reference op equals the public API's quantize + scaled values on t (RHT'd), with the SR index of t."""
    x = make_input("heavy", (48, 40), seed=6)
    for transpose, rht, tile in itertools.product((False, True), (False, True), ((1, 16), (16, 16))):
        t = x.t() if transpose else x
        if rht and t.shape[1] % 16:
            continue
        if rht:
            t = random_hadamard_transform(t, dim=-1, size=16, signs=SIGNS)
        q = quantize_nvfp4(t.contiguous(), tile, True, seed=8, offset=2, backend="reference")
        values, amax = REF.fake_quantize_nvfp4(
            x, None, tile[0], True, 8, 2, transpose=transpose, rht_signs=SIGNS if rht else None
        )
        assert same_float(values, q.scaled_values(torch.bfloat16))
        assert same_float(amax, q.global_amax)


# --- quantize / rht_quantize with transpose=True -------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["random", "heavy", "tiny", "mixed", "zeros", "signed_zeros", "ties", "nonfinite"])
def test_transposed_quantize_matches_reference(cpu, shape, kind):
    for dtype in FLOATS:
        x = make_input(kind, shape, seed=1).to(dtype)
        amax = REF.amax(x)
        for tile_rows, stochastic in itertools.product((1, 16), (False, True)):
            args = (amax, tile_rows, stochastic, 21, 4)
            got = cpu.quantize_nvfp4(x, *args, transpose=True)
            assert_quant_equal(got, REF.quantize_nvfp4(x, *args, transpose=True))
            assert_quant_equal(got, REF.quantize_nvfp4(x.t().contiguous(), *args))
        if x.shape[0] % 16 == 0:  # the RHT runs along the logical K = the input's rows
            for global_amax, stochastic in itertools.product((None, torch.tensor(3.5)), (False, True)):
                args = (SIGNS, global_amax, stochastic, 11, 3)
                got = cpu.rht_quantize_nvfp4(x, *args, transpose=True)
                want = REF.rht_quantize_nvfp4(x, *args, transpose=True)
                assert_quant_equal(got, want)
                assert same_float(torch.as_tensor(got[2]).float(), torch.as_tensor(want[2]).float())
                assert_quant_equal(got, REF.rht_quantize_nvfp4(x.t().contiguous(), *args))


def test_transposed_views_are_read_in_place(cpu):
    """A .t() view given with transpose=False (and a .t() view with transpose=True, i.e. contiguous memory) give the
    results of the contiguous tensor; other strides are copied first."""
    base = make_input("heavy", (64, 48), seed=2)
    view = base.t()  # (48, 64), strides (1, 48)
    sliced = make_input("heavy", (64, 96), seed=2)[:, ::2]  # neither layout is contiguous
    for x in (view, sliced):
        xc = x.contiguous()
        for tile_rows, stochastic, transpose in itertools.product((1, 16), (False, True), (False, True)):
            args = (REF.amax(x), tile_rows, stochastic, 5, 5)
            want = REF.quantize_nvfp4(xc, *args, transpose=transpose)
            assert_quant_equal(cpu.quantize_nvfp4(x, *args, transpose=transpose), want)
            kw = dict(transpose=transpose, rht_signs=SIGNS)
            assert_fake_equal(
                cpu.fake_quantize_nvfp4(x, None, tile_rows, stochastic, 5, 5, **kw),
                REF.fake_quantize_nvfp4(xc, None, tile_rows, stochastic, 5, 5, **kw),
            )


def test_transposed_other_tile_rows_are_copied(cpu):
    """tile_rows other than 1 and 16 (outside the contract, but supported by the row path) still match."""
    x = make_input("heavy", (40, 33), seed=9)
    args = (REF.amax(x), 3, True, 1, 1)
    assert_quant_equal(cpu.quantize_nvfp4(x, *args, transpose=True), REF.quantize_nvfp4(x, *args, transpose=True))
    assert_fake_equal(
        cpu.fake_quantize_nvfp4(x, None, 3, False, 1, 1, transpose=True),
        REF.fake_quantize_nvfp4(x, None, 3, False, 1, 1, transpose=True),
    )


# --- threads, tails, and the generator -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(208, 600), (100, 1037), (4112, 16)])
def test_large_inputs_use_the_threaded_paths(cpu, shape):
    """Above 2^15 elements the kernels run OpenMP teams (of 2 here); the transposed path splits the input into
    64-row x 256-column work items, with row and column tails here."""
    x = make_input("heavy", shape, seed=8)
    x[-1, -2] = float("nan")
    x[-20, 3] = float("inf")
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype)
        cases = [
            (transpose, rht, tile_rows, stochastic)
            for transpose, rht, tile_rows, stochastic in itertools.product(
                (False, True), (False, True), (1, 16), (False, True)
            )
            if not (rht and logical_cols(xd, transpose) % 16)
        ]
        with torch_threads(2):
            got = [
                cpu.fake_quantize_nvfp4(xd, None, t, s, 6, 1, transpose=tr, rht_signs=SIGNS if r else None)
                for tr, r, t, s in cases
            ]
            got_packed = cpu.quantize_nvfp4(xd, REF.amax(xd), 16, True, 6, 1, transpose=True)
        for g, (tr, r, t, s) in zip(got, cases, strict=True):
            assert_fake_equal(
                g, REF.fake_quantize_nvfp4(xd, None, t, s, 6, 1, transpose=tr, rht_signs=SIGNS if r else None)
            )
        assert_quant_equal(got_packed, REF.quantize_nvfp4(xd, REF.amax(xd), 16, True, 6, 1, transpose=True))


def test_outputs_of_4mb_and_more_use_streaming_stores():
    """Outputs >= 4 MB are written with streaming stores (vectorized build): same bits."""
    cpu = CPUBackend.instance()
    x = make_input("heavy", (1024, 2048), seed=12)
    x[100, 200] = float("nan")
    with torch_threads(2):
        for transpose, out_dtype in itertools.product((False, True), (torch.bfloat16, torch.float32)):
            kw = dict(transpose=transpose, out_dtype=out_dtype)
            got = cpu.fake_quantize_nvfp4(x, None, 1, False, 0, 0, **kw)
            assert_fake_equal(got, REF.fake_quantize_nvfp4(x, None, 1, False, 0, 0, **kw))


def test_random_bytes_of_lane_bases_across_the_32_bit_carry(cpu):
    """The transposed path's generator (per-lane 64-bit bases + j) equals nvfp4.formats.rng at the 2^32 carry."""
    bases = torch.tensor([0, 2**32 - 1, 2**32 - 9, 2**32, 2**33 + 5, 2**62 - 40, 7, 2**32 - 16] * 2, dtype=torch.int64)
    bases[8:] += torch.arange(8) * 4097
    for seed, offset in ((0, 0), (77, 2**35)):
        k1, k2 = derive_keys(seed, offset)
        for j in (0, 1, 8, 15):
            out = torch.empty(16, dtype=torch.uint8)
            cpu.lib.nvfp4_random_bytes_lanes(bases.data_ptr(), j, k1, k2, out.data_ptr())
            assert torch.equal(out.to(torch.int64), random_bytes(bases + j, seed, offset))


# --- errors, fallbacks, the registry -------------------------------------------------------------------------------


def test_rht_needs_k_multiple_of_16():
    cpu = CPUBackend.instance()
    x = make_input("random", (40, 48))
    for backend in (cpu, REF, kernels.select("cpu", "cpu")):
        with pytest.raises(ValueError, match="K % 16 == 0"):
            backend.fake_quantize_nvfp4(x, None, 1, False, 0, 0, transpose=True, rht_signs=SIGNS)  # K = 40
        backend.fake_quantize_nvfp4(x, None, 1, False, 0, 0, rht_signs=SIGNS)  # K = 48: fine
    for backend in (cpu, REF, kernels.select("cpu", "cpu")):  # invalid for every backend: the same clear error
        with pytest.raises(ValueError, match="K % 16 == 0"):
            backend.rht_quantize_nvfp4(x, SIGNS, None, False, 0, 0, transpose=True)


def test_unsupported_inputs_fall_back_to_the_reference():
    cpu = CPUBackend.instance()
    impl = kernels.select("cpu", "cpu")
    x = make_input("random", (32, 32))
    with pytest.raises(Unsupported):  # a negative amax is outside the contract
        cpu.fake_quantize_nvfp4(x, torch.tensor(-1.0), 1, False, 0, 0)
    with pytest.raises(Unsupported):  # only the 16-point RHT is fused with NVFP4
        cpu.fake_quantize_nvfp4(x, None, 1, False, 0, 0, rht_signs=torch.ones(32))
    got = impl.fake_quantize_nvfp4(x, None, 1, False, 0, 0, rht_signs=torch.ones(32))  # the reference runs it
    assert_fake_equal(got, REF.fake_quantize_nvfp4(x, None, 1, False, 0, 0, rht_signs=torch.ones(32)))
    with pytest.raises(Unsupported, match="±1"):
        cpu.fake_quantize_nvfp4(x, None, 1, False, 0, 0, rht_signs=torch.full((16,), 2.0))
    with pytest.raises(ValueError, match="signs"):  # the reference's error, through the fallback
        impl.fake_quantize_nvfp4(x, None, 1, False, 0, 0, rht_signs=torch.full((16,), 2.0))
    got = impl.fake_quantize_nvfp4(x, torch.tensor(-1.0), 1, False, 0, 0, transpose=True)
    assert_fake_equal(got, REF.fake_quantize_nvfp4(x, torch.tensor(-1.0), 1, False, 0, 0, transpose=True))


def test_registry_dispatches_the_new_ops_to_the_cpu_backend(monkeypatch):
    impl = kernels.select("auto", "cpu")
    assert impl.name == "cpu"
    x = make_input("heavy", (32, 48))

    def fail(*args, **kwargs):
        raise AssertionError("the reference must not run")

    for op in ("fake_quantize_nvfp4", "quantize_nvfp4", "rht_quantize_nvfp4"):
        monkeypatch.setattr(REF, op, fail)
    impl.fake_quantize_nvfp4(x, None, 16, True, 1, 2, transpose=True, rht_signs=SIGNS, out_dtype=torch.float32)
    impl.quantize_nvfp4(x, torch.tensor(2.0), 1, True, 1, 2, transpose=True)
    impl.rht_quantize_nvfp4(x, SIGNS, None, True, 1, 2, transpose=True)
