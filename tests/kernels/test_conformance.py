"""One conformance suite for every backend that can run here: the contract's signatures, and the reference's bits.

Backends: ``cpu`` (the C kernel) and ``triton`` (on a GPU, or in Triton's CPU interpreter: TRITON_INTERPRET=1
must be set when the backend module is first imported, as in test_triton_backend.py). Every entry point of
``nvfp4.kernels.contract`` (``OPS``: amax, quantize over every spec, scaled_values; and the per-format
``CONVENIENCES``) runs on the fast backend itself (an input its ``supports`` declines is skipped and counted) on
random, heavy-tailed, all-zero, NaN- and Inf-carrying inputs in FP32 and BF16, odd shapes, plain and transposed,
and must return the reference's bits (any NaN equals any NaN).
"""

from __future__ import annotations

import inspect
import os

import pytest
import torch

from nvfp4 import kernels
from nvfp4.formats.hadamard import default_signs
from nvfp4.kernels.contract import CONVENIENCES, KERNELS, OPS, BackendBase, QuantSpec, Unsupported
from nvfp4.kernels.cpu import CPUBackend
from nvfp4.kernels.reference import ReferenceBackend
from tests.kernels.inputs import decorate_triton_kernels_again

_GPU = torch.cuda.is_available()
_SET_INTERPRET = not _GPU and "TRITON_INTERPRET" not in os.environ
if not _GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
try:
    from nvfp4.kernels import triton_backend

    if not _GPU:
        decorate_triton_kernels_again()
except ImportError:
    triton_backend = None
if _SET_INTERPRET:
    del os.environ["TRITON_INTERPRET"]

REF = ReferenceBackend()
BACKENDS = {"cpu": CPUBackend} | ({"triton": triton_backend.TritonBackend} if triton_backend else {})


@pytest.fixture
def backend(request, monkeypatch):
    """The registry's wrapper around the named backend, on its device (TRITON_INTERPRET set for Triton on a CPU)."""
    name = request.param
    if name == "triton" and not _GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    device = torch.device("cuda" if name == "triton" and _GPU else "cpu")
    if not BACKENDS[name].is_available(device):
        pytest.skip(f"{name} is not available on {device}")
    return kernels.select(name, device), device


def _scale_boundaries() -> torch.Tensor:
    """Blocks whose amax is 448·2^k or 6·2^k exactly, or one FP32 ulp either side: power-of-two scale rules decide
    on the rounding of an FP32 product or quotient there (MXFP8's amax·FP32(1/448), MXFP4's exponent)."""
    rows = []
    for center in [448.0 * 2.0**k for k in (-30, -1, 0, 3)] + [6.0 * 2.0**k for k in (-2, 5)]:
        c = torch.tensor(center, dtype=torch.float32)
        for amax in (c, torch.nextafter(c, c * 2), torch.nextafter(c, c * 0)):
            row = torch.full((64,), float(amax) / 3)
            row[7], row[40] = -amax, amax
            rows.append(row)
    return torch.stack(rows)


def _inputs() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(20, 64, generator=g)
    heavy = base * torch.exp(2.5 * torch.randn(20, 64, generator=g))
    nan = base.clone()
    nan[3, 5] = float("nan")
    inf = base.clone()
    inf[7, 1], inf[0, 63] = float("inf"), -float("inf")
    return [
        ("random-fp32", base * 3),
        ("heavy-bf16", heavy.bfloat16()),
        ("zeros-fp32", torch.zeros(20, 64)),
        ("nan-fp32", nan),
        ("inf-bf16", inf.bfloat16()),
        ("odd-fp32", torch.randn(17, 40, generator=g) * 1e-3),
        ("tiny-fp32", base * 1e-37),  # below FP32's normal range in places; MXFP8's biased exponent 0
        ("huge-fp32", base * 1e36),
        ("scale-boundaries-fp32", _scale_boundaries()),  # K not a block multiple, M not a tile multiple
    ]


def _calls(op: str, x: torch.Tensor):
    """(label, args, kwargs) variants of one op on one input; the inputs go to the backend's device later."""
    rht_ok = x.shape[1] % 32 == 0 and x.shape[0] % 32 != 0  # K % 32 for the plain, M handled by transpose=False
    if op == "amax":
        yield "", (x,), {}
    elif op == "quantize":
        for spec in _specs(x):
            signs = None if spec.rht is None else default_signs(spec.rht)
            for amax in (None, REF.amax(x) * 2) if spec.format == "nvfp4" else (None,):
                kwargs = {"amax": amax, "signs": signs, "seed": 5, "offset": 9}
                yield f"{spec} amax={'given' if amax is not None else 'computed'}", (x, spec), kwargs
    elif op == "quantize_nvfp4":
        for tile_rows, sr, t in ((1, False, False), (16, False, True), (1, True, True), (1, True, False)):
            t_in = x.t() if t else x
            yield f"tile{tile_rows} sr={sr} T={t}", (x, REF.amax(t_in), tile_rows, sr, 5, 9), {"transpose": t}
    elif op == "rht_quantize_nvfp4":
        if x.shape[1] % 16 == 0:
            for sr in (False, True):
                yield f"sr={sr}", (x, default_signs(16), None, sr, 5, 9), {}
    elif op == "fake_quantize_nvfp4":
        for tile_rows, sr, t in ((1, False, False), (16, False, True), (1, True, True)):
            yield f"tile{tile_rows} sr={sr} T={t}", (x, None, tile_rows, sr, 5, 9), {"transpose": t}
        if x.shape[1] % 16 == 0:
            yield "rht", (x, None, 1, True, 5, 9), {"rht_signs": default_signs(16)}
    elif op == "scaled_values":
        packed, scales = REF.quantize_nvfp4(x, REF.amax(x), 1, False, 0, 0)
        for dtype in (torch.bfloat16, torch.float32):
            yield f"{dtype}", (packed, scales, dtype), {}
    elif op == "quantize_mxfp4":
        for sr, t in ((False, False), (True, True)):
            yield f"sr={sr} T={t}", (x, sr, 5, 9), {"transpose": t}
    elif op == "fake_quantize_mxfp4":
        for sr, t in ((False, True), (True, False)):
            yield f"sr={sr} T={t}", (x, sr, 5, 9), {"transpose": t}
        if rht_ok:
            yield "rht32", (x, True, 5, 9), {"rht_signs": default_signs(32)}
    elif op in ("quantize_fp8", "fake_quantize_fp8"):
        for tile, t in (((1, 128), False), ((128, 128), True)):
            yield f"{tile} T={t}", (x, tile), {"transpose": t}
    elif op == "quantize_mxfp8":
        for t in (False, True):
            yield f"T={t}", (x,), {"transpose": t}
    elif op == "fake_quantize_mxfp8":
        for t, dtype in ((False, torch.bfloat16), (True, torch.bfloat16), (False, torch.float32)):
            yield f"T={t} {dtype}", (x,), {"transpose": t, "out_dtype": dtype}


def _specs(x: torch.Tensor) -> list[QuantSpec]:
    """Every spec the layer's recipes use (and a few more), for an input of this shape."""
    rows, cols = x.shape
    specs = []
    for transpose in (False, True):
        k = rows if transpose else cols
        for out in (None, torch.bfloat16, torch.float32):
            for tile, sr in (((1, 16), False), ((1, 16), True), ((16, 16), False), ((16, 16), True)):
                specs.append(QuantSpec("nvfp4", tile, sr, transpose, out_dtype=out))
                specs.append(QuantSpec("nvfp4", tile, sr, transpose, out_dtype=out, four_over_six=True))
            if k % 16 == 0:
                specs.append(QuantSpec("nvfp4", (1, 16), True, transpose, rht=16, out_dtype=out))
                specs.append(QuantSpec("nvfp4", (1, 16), True, transpose, rht=16, out_dtype=out, four_over_six=True))
            for sr in (False, True):
                specs.append(QuantSpec("mxfp4", (1, 32), sr, transpose, out_dtype=out))
            if k % 32 == 0:
                specs.append(QuantSpec("mxfp4", (1, 32), True, transpose, rht=32, scale_rule="floor", out_dtype=out))
            for tile in ((1, 128), (128, 128)):
                specs.append(QuantSpec("fp8", tile, False, transpose, out_dtype=torch.float32 if out else None))
            specs.append(QuantSpec("mxfp8", (1, 32), False, transpose, out_dtype=out))
    return specs


def _same(a, b) -> bool:
    """Bit-equal tensors (or tuples of them); any NaN equals any NaN (FP32/BF16/FP16, E4M3 and E8M0 bytes)."""
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if a is None or b is None:
        return a is None and b is None
    a, b = a.detach().cpu(), b.detach().cpu()
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype in (torch.float8_e4m3fn, torch.float8_e8m0fnu):
        a, b = a.view(torch.uint8), b.view(torch.uint8)
        nan_byte = 0x7F if a.dtype == torch.float8_e4m3fn else 0xFF
        nan_a, nan_b = (a & nan_byte) == nan_byte, (b & nan_byte) == nan_byte
        return torch.equal(nan_a, nan_b) and torch.equal(a[~nan_a], b[~nan_b])
    if a.is_floating_point():
        nan_a, nan_b = torch.isnan(a), torch.isnan(b)
        if not torch.equal(nan_a, nan_b):
            return False
        a, b = a.masked_fill(nan_a, 0), b.masked_fill(nan_b, 0)
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _to(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


@pytest.mark.parametrize("name", BACKENDS)
def test_every_kernel_has_the_reference_signature(name):
    checks = [(op, ReferenceBackend) for op in KERNELS] + [("supports", BackendBase)]
    for op, source in checks:
        want = inspect.signature(getattr(source, op))
        got = inspect.signature(getattr(BACKENDS[name], op))
        assert list(got.parameters) == list(want.parameters), f"{name}.{op}{got} != reference{want}"
        for p, q in zip(got.parameters.values(), want.parameters.values(), strict=True):
            assert (p.kind, p.default) == (q.kind, q.default), f"{name}.{op}: parameter {p.name}"


@pytest.mark.parametrize("op", OPS + CONVENIENCES)
@pytest.mark.parametrize("backend", list(BACKENDS), indirect=True)
def test_backend_returns_the_reference_bits(backend, op):
    impl, device = backend
    ran = declined = 0
    for kind, x in _inputs():
        for label, args, kwargs in _calls(op, x):
            want = getattr(REF, op)(*args, **kwargs)
            dev_args, dev_kwargs = [_to(a, device) for a in args], {k: _to(v, device) for k, v in kwargs.items()}
            try:
                got = getattr(impl.fast, op)(*dev_args, **dev_kwargs)  # the fast kernel itself, no fallback
            except Unsupported:
                declined += 1
                continue
            assert _same(got, want), f"{impl.name}.{op} differs from the reference on {kind} ({label})"
            ran += 1
    assert ran > 0, f"{impl.name} declined every {op} call ({declined}): nothing was checked"


def test_declined_inputs_run_on_the_reference_and_kernel_errors_surface(monkeypatch):
    """Through the registry, an input the fast backend's ``supports`` declines runs on the reference; an exception
    inside a fast kernel (even Unsupported or NotImplementedError) is a bug and propagates; a direct call of a
    fast backend on a declined input raises Unsupported before any work."""
    impl = kernels._Fallback(CPUBackend.instance(), REF)
    x = torch.randn(4, 32)
    spec = QuantSpec("nvfp4", (1, 16), out_dtype=None)

    def kernel_must_not_run(*args, **kwargs):
        raise AssertionError("the fast kernel ran on an input its supports() declined")

    monkeypatch.setattr(CPUBackend, "supports", lambda self, op, x, spec=None, **kw: "declined for the test")
    monkeypatch.setattr(CPUBackend, "quantize_kernel", kernel_must_not_run)
    monkeypatch.setattr(CPUBackend, "amax_kernel", kernel_must_not_run)
    assert _same(impl.quantize(x, spec).data, REF.quantize(x, spec).data)
    assert _same(impl.amax(x), REF.amax(x))
    with pytest.raises(Unsupported, match="declined for the test"):
        CPUBackend.instance().quantize(x, spec)
    monkeypatch.undo()

    for error in (Unsupported, NotImplementedError, RuntimeError):

        def broken(*args, error=error, **kwargs):
            raise error("a bug deep inside a kernel")

        monkeypatch.setattr(CPUBackend, "quantize_kernel", broken)
        with pytest.raises(error, match="a bug"):
            impl.quantize(x, spec)
        monkeypatch.undo()


@pytest.mark.parametrize("backend", list(BACKENDS), indirect=True)
def test_supports_is_a_pure_predicate(backend):
    """``supports`` answers for every spec without running a kernel: it says why for inputs outside its kernels."""
    impl, device = backend
    fast = impl.fast
    x = torch.randn(20, 64, device=device)
    assert fast.supports("quantize", x, QuantSpec("nvfp4", (1, 16))) is None
    assert fast.supports("quantize", x, QuantSpec("nvfp4", (1, 16), rht=64), signs=default_signs(64)) is not None
    assert fast.supports("quantize", x, QuantSpec("nvfp4", (1, 16), rht=16), signs=-2 * default_signs(16)) is not None
    assert fast.supports("quantize", x[:, :40], QuantSpec("nvfp4", (1, 16), rht=16), signs=default_signs(16))
    assert fast.supports("amax", x[:0]) is not None  # empty
    assert fast.supports("amax", torch.randn(3, 4, 5, device=device)) is not None  # not 2-D


@pytest.mark.parametrize("backend", list(BACKENDS), indirect=True)
def test_an_offset_tensor_gives_the_int_offsets_bits(backend):
    """SR offsets may be 0-d int64 tensors (the layer's device-side counters): the same bits as the int, for every
    stochastic format, including offsets that use all 64 bits. On the Triton backend the offset tensor on the
    kernel's device is read by the kernel itself (DEVICE_OFFSET)."""
    impl, device = backend
    x = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    for offset in (9, (3 << 48) | 5, (1 << 64) - 7):
        as_tensor = torch.tensor(offset - (1 << 64) if offset >= 1 << 63 else offset, dtype=torch.int64)
        for spec, signs in (
            (QuantSpec("nvfp4", (1, 16), True, out_dtype=None), None),
            (QuantSpec("nvfp4", (1, 16), True, True, rht=16), default_signs(16)),
            (QuantSpec("mxfp4", (1, 32), True, out_dtype=None), None),
        ):
            want = REF.quantize(x, spec, signs=signs, seed=11, offset=offset)
            dev_signs = None if signs is None else signs.to(device)
            got = impl.fast.quantize(x.to(device), spec, signs=dev_signs, seed=11, offset=as_tensor.to(device))
            assert _same(got, want), f"{impl.name} {spec} offset {offset}"


def _huge_inputs() -> list[tuple[str, torch.Tensor]]:
    """Where a sum-then-scale RHT overflows although the exact transform is finite (issue #13 item 7)."""
    g = torch.Generator().manual_seed(3)
    block = torch.randn(8, 64, generator=g)
    block[2, 16:18] = 3e38  # one chunk with two huge values among ordinary ones (pre-scaled: they share it)
    pairs = torch.zeros(4, 64)
    pairs[:, 0::16] = pairs[:, 1::16] = 3e38  # the first butterfly stage adds them: 6e38 overflows, y = ±a/2 does not
    return [("gaussian-3e37", torch.randn(8, 64, generator=g) * 3e37), ("pair-3e38", pairs), ("one-huge-chunk", block)]


@pytest.mark.parametrize("backend", list(BACKENDS), indirect=True)
def test_rht_stays_finite_and_equal_at_the_top_of_the_range(backend):
    """The RHT pre-scales chunks with a value >= 2^120, so it stays finite wherever the exact transform is, and every
    backend returns the reference's bits there too (16-point, fused with NVFP4; 32-point, fused with MXFP4)."""
    from nvfp4.formats.hadamard import random_hadamard_transform

    impl, device = backend
    for kind, x in _huge_inputs():
        for size in (16, 32):
            h = random_hadamard_transform(x, size=size, signs=default_signs(size)).float()
            assert torch.isfinite(h).all(), f"{kind}, RHT{size}: not finite"
        signs = default_signs(16)
        want = REF.rht_quantize_nvfp4(x, signs, None, False, 5, 9)
        assert torch.isfinite(want[2]), f"{kind}: the transformed amax is not finite"
        got = impl.fast.rht_quantize_nvfp4(x.to(device), signs.to(device), None, False, 5, 9)
        assert _same(got, want), f"{impl.name} rht_quantize_nvfp4 on {kind}"
        want_t = REF.rht_quantize_nvfp4(x.t().contiguous(), signs, None, True, 5, 9, transpose=True)
        got_t = impl.fast.rht_quantize_nvfp4(
            x.t().contiguous().to(device), signs.to(device), None, True, 5, 9, transpose=True
        )
        assert _same(got_t, want_t), f"{impl.name} transposed rht_quantize_nvfp4 on {kind}"
        want_mx = REF.fake_quantize_mxfp4(x, True, 5, 9, rht_signs=default_signs(32))
        got_mx = impl.fast.fake_quantize_mxfp4(x.to(device), True, 5, 9, rht_signs=default_signs(32).to(device))
        assert _same(got_mx, want_mx), f"{impl.name} MXFP4 RHT32 on {kind}"


# A block whose 4/6 choice depends on the order of the error sum (found by search: pairwise and left-to-right
# FP32 sums pick different candidates). Every backend must sum as the reference does (pairwise, adjacent pairs).
ORDER_SENSITIVE_BLOCK = [
    0.015869140625,
    1.1796875,
    -0.349609375,
    0.921875,
    0.31640625,
    1.5859375,
    -0.9609375,
    0.00121307373046875,
    0.376953125,
    -0.007171630859375,
    0.0228271484375,
    0.5078125,
    0.3515625,
    0.515625,
    2.0625,
    0.765625,
]


@pytest.mark.parametrize("backend", list(BACKENDS), indirect=True)
def test_four_over_six_sums_the_error_in_the_reference_order(backend):
    impl, device = backend
    x = torch.zeros(2, 16)
    x[0, 0] = 6.0  # tensor amax 6
    x[1] = torch.tensor(ORDER_SENSITIVE_BLOCK)
    spec = QuantSpec("nvfp4", (1, 16), out_dtype=None, four_over_six=True)
    fused = impl.fast.supports("quantize", x.to(device), spec) is None
    got = (impl.fast if fused else impl).quantize(x.to(device), spec)  # declined: the registry's reference
    want = REF.quantize(x, spec)
    assert _same(tuple(got), tuple(want))
