"""One family of test inputs and bit comparisons for every backend test (CPU, Triton, fused ops, conformance).

``make_input(kind, shape, dtype, seed)``: random and adversarial matrices: zeros, signed zeros, E2M1 ties, huge and
tiny magnitudes, subnormals, per-row scales over 74 decades, heavy tails, NaN/Inf. ``same_float``: bit equality where
any NaN equals any NaN (NaN payloads are not specified)."""

from __future__ import annotations

import torch

KINDS = (
    "random",
    "heavy",
    "tiny",
    "huge",
    "subnormal",
    "mixed",
    "zeros",
    "signed_zeros",
    "ties",
    "nan",
    "inf",
    "nonfinite",
)


def make_input(kind: str, shape: tuple[int, int], dtype: torch.dtype = torch.float32, *, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    half = dtype == torch.float16  # FP16 has its own (narrow) range: scale the extremes to stay inside it
    if kind == "random":
        x = x * 3
    elif kind == "heavy":  # log-normal magnitudes: blocks with one dominant outlier
        x = x * torch.exp(3 * torch.randn(shape, generator=g))
    elif kind == "tiny":
        x = x * (1e-3 if half else 1e-30)
    elif kind == "huge":
        x = x * (1e4 if half else 1e30)
    elif kind == "subnormal":  # FP32/BF16 subnormals (FP16: its own subnormal range)
        x = x * (1e-6 if half else 1e-40)
    elif kind == "mixed":  # every row at another scale, 1e-44 .. 1e30 (FP32 subnormals included)
        x = x * (torch.logspace(-6, 4, shape[0]) if half else torch.logspace(-44, 30, shape[0])).unsqueeze(1)
    elif kind == "zeros":
        x = torch.zeros(shape)
    elif kind == "signed_zeros":  # -0.0 and negative values that underflow to -0 when scaled
        x = torch.where(torch.rand(shape, generator=g) < 0.5, -0.0, 1e-45 * torch.sign(x))
        x.view(-1)[0] = 1.0
    elif kind == "ties":  # with amax 2688 (S_enc = 1) and block amax 6, x * enc hits every E2M1 threshold exactly
        vals = torch.tensor([0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 0.5, 1, 1.5, 2, 3, 4, 6, 5.5])
        x = (vals[torch.randint(0, 16, shape, generator=g)] * torch.sign(x)).contiguous()
    elif kind in ("nan", "inf"):
        x = x * 3
        flat = x.view(-1)
        idx = torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 7)]
        special = float("nan") if kind == "nan" else float("inf")
        flat[idx] = special
        if kind == "inf":
            flat[idx[::2]] = -special
    elif kind == "nonfinite":
        x.view(-1)[:: max(1, x.numel() // 5)] = float("nan")
        x.view(-1)[3 :: max(1, x.numel() // 3)] = float("inf")
        x.view(-1)[-1] = -float("inf")
    else:
        raise ValueError(f"unknown input kind {kind!r}; kinds: {', '.join(KINDS)}")
    return x.to(dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.cpu().reshape(-1), b.cpu().reshape(-1)
    return a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def same_float(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal float tensors of one dtype and shape, except that any NaN equals any NaN."""
    a, b = a.detach().cpu(), b.detach().cpu()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    if not torch.equal(nan_a, nan_b):
        return False
    return same_bits(a.masked_fill(nan_a, 0), b.masked_fill(nan_b, 0))


def decorate_triton_kernels_again() -> None:
    """Make the Triton kernels interpreted functions (call with TRITON_INTERPRET=1 set): Triton decides when a kernel
    is decorated, so if another test module imported ``nvfp4.kernels.triton_kernels`` first, without the interpreter,
    the numerics and kernel modules are re-imported in dependency order. The backend finds its kernels through the
    ``triton_kernels`` module, which a reload updates in place."""
    import importlib

    from nvfp4.kernels import triton_backend, triton_kernels, triton_numerics

    if not triton_backend._interpreted():
        importlib.reload(triton_numerics)
        importlib.reload(triton_kernels)
