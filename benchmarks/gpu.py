"""GPU benchmark of the Triton kernels (NVFP4, MXFP4, fused GEMM operands): bandwidth as a % of a device copy.

Quantization is memory-bound (read 2 or 4 bytes, write 0.5625 bytes per element), so the honest
yardstick is a plain copy of the same tensor on the same GPU: "% of copy" is the kernel's
achieved bandwidth (bytes it must move / time) over the copy's. Also timed: the PyTorch reference
on the same GPU, and a bit-exactness check of every kernel against it.

    PYTHONPATH=src python benchmarks/gpu.py            # 8192 x 8192, bf16 and fp32
    PYTHONPATH=src python benchmarks/gpu.py --size 4096 --no-reference

Exits with status 2 and a one-line message when no CUDA device or no Triton is present (a GPU check that finds
no GPU has not passed).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

OUTPUT_BYTES_PER_ELEMENT = 0.5 + 1 / 16  # packed codes + one E4M3 scale per 16 elements


@dataclass
class Row:
    op: str
    dtype: str
    micros: float
    gbps: float
    pct_copy: float
    ref_micros: float | None
    exact: str


def _bench(fn: Callable[[], object]) -> float:
    """Median time in microseconds (Triton's do_bench flushes L2 between runs)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype.is_floating_point and a.dtype.itemsize > 1:
        nan_a, nan_b = torch.isnan(a), torch.isnan(b)
        a, b = torch.where(nan_a, 0, a), torch.where(nan_b, 0, b)
        if not torch.equal(nan_a, nan_b):
            return False
        a, b = a.contiguous(), b.contiguous()
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _exact(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> str:
    return "yes" if all(_same(g, w) for g, w in zip(got, want, strict=True)) else "NO"


def _bench_dtype(x: torch.Tensor, with_reference: bool) -> list[Row]:
    """All rows for one input tensor: the copy baseline first, then every kernel."""
    from nvfp4.formats.hadamard import default_signs
    from nvfp4.kernels.reference import ReferenceBackend
    from nvfp4.kernels.triton_backend import TritonBackend

    tb, ref = TritonBackend.instance(), ReferenceBackend.instance()
    signs = default_signs(16)
    n, elem = x.numel(), x.element_size()
    name = str(x.dtype).removeprefix("torch.")
    copy_us = _bench(functools.partial(torch.empty_like(x).copy_, x))
    copy_gbps = 2 * n * elem / copy_us / 1e3
    rows = [Row("copy (baseline)", name, copy_us, copy_gbps, 100.0, None, "-")]
    amax = tb.amax(x)
    packed, scales = tb.quantize_nvfp4(x, amax, 1, False, 0, 0)

    def add(op: str, nbytes: float, fn: Callable[[], object], ref_fn: Callable[[], object]) -> None:
        micros = _bench(fn)
        gbps = nbytes / micros / 1e3
        ref_us, exact = None, "-"
        if with_reference:
            ref_us = _bench(ref_fn)
            got, want = fn(), ref_fn()
            got = got if isinstance(got, tuple) else (got,)
            want = want if isinstance(want, tuple) else (want,)
            exact = _exact(got, want)
        rows.append(Row(op, name, micros, gbps, 100 * gbps / copy_gbps, ref_us, exact))

    quant_bytes = n * elem + n * OUTPUT_BYTES_PER_ELEMENT
    add("amax", n * elem, lambda: tb.amax(x), lambda: ref.amax(x))
    add(
        "quantize 1x16 RN",
        quant_bytes,
        lambda: tb.quantize_nvfp4(x, amax, 1, False, 0, 0),
        lambda: ref.quantize_nvfp4(x, amax, 1, False, 0, 0),
    )
    add(
        "quantize 1x16 SR",
        quant_bytes,
        lambda: tb.quantize_nvfp4(x, amax, 1, True, 7, 3),
        lambda: ref.quantize_nvfp4(x, amax, 1, True, 7, 3),
    )
    add(
        "quantize 16x16 RN",
        quant_bytes,
        lambda: tb.quantize_nvfp4(x, amax, 16, False, 0, 0),
        lambda: ref.quantize_nvfp4(x, amax, 16, False, 0, 0),
    )
    add(
        "RHT+quantize SR (amax given)",
        quant_bytes,
        lambda: tb.rht_quantize_nvfp4(x, signs, amax, True, 7, 3)[:2],
        lambda: ref.rht_quantize_nvfp4(x, signs, amax, True, 7, 3)[:2],
    )
    # Without an amax the input is read twice (amax pass + quantize pass): count both reads.
    add(
        "RHT amax + quantize SR",
        2 * n * elem + n * OUTPUT_BYTES_PER_ELEMENT,
        lambda: tb.rht_quantize_nvfp4(x, signs, None, True, 7, 3),
        lambda: ref.rht_quantize_nvfp4(x, signs, None, True, 7, 3),
    )
    add(
        "scaled_values -> bf16",
        n * OUTPUT_BYTES_PER_ELEMENT + 2 * n,
        lambda: tb.scaled_values(packed, scales, torch.bfloat16),
        lambda: ref.scaled_values(packed, scales, torch.bfloat16),
    )
    # The layer's hot path: the GEMM operand in BF16 straight from the input (amax pass + one fused pass).
    add(
        "fused operand RN -> bf16",
        2 * n * elem + 2 * n,
        lambda: tb.fake_quantize_nvfp4(x, None, 1, False, 0, 0),
        lambda: ref.fake_quantize_nvfp4(x, None, 1, False, 0, 0),
    )
    add(
        "fused operand T RHT SR -> bf16",
        2 * n * elem + 2 * n,
        lambda: tb.fake_quantize_nvfp4(x, None, 1, True, 7, 3, transpose=True, rht_signs=signs),
        lambda: ref.fake_quantize_nvfp4(x, None, 1, True, 7, 3, transpose=True, rht_signs=signs),
    )
    signs32 = default_signs(32)
    add(
        "MXFP4 quantize RN",
        n * elem + n * (0.5 + 1 / 32),
        lambda: tb.quantize_mxfp4(x, False, 0, 0),
        lambda: ref.quantize_mxfp4(x, False, 0, 0),
    )
    add(
        "MXFP4 fused T RHT32 SR -> bf16",
        n * elem + 2 * n,
        lambda: tb.fake_quantize_mxfp4(x, True, 7, 3, transpose=True, rht_signs=signs32),
        lambda: ref.fake_quantize_mxfp4(x, True, 7, 3, transpose=True, rht_signs=signs32),
    )
    return rows


def run(size: int, dtypes: list[torch.dtype], with_reference: bool, device: str = "cuda") -> list[Row]:
    rows: list[Row] = []
    gen = torch.Generator(device=device).manual_seed(0)
    for dtype in dtypes:
        # Heavy-tailed data, like activations/gradients with outliers.
        x = torch.randn(size, size, device=device, generator=gen)
        x = (x * torch.exp(torch.randn(size, size, device=device, generator=gen))).to(dtype)
        rows += _bench_dtype(x, with_reference)
        del x
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def print_table(rows: list[Row], size: int) -> None:
    import triton

    props = torch.cuda.get_device_properties(0)
    memory = props.total_memory / 2**30
    print(
        f"NVFP4 Triton kernels on {props.name} (sm_{props.major}{props.minor}, {memory:.0f} GiB), "
        f"{size}x{size}, torch {torch.__version__}, triton {triton.__version__}"
    )
    header = (
        f"{'op':<30} {'dtype':<9} {'time us':>9} {'GB/s':>8} {'% of copy':>10} {'ref us':>10} "
        f"{'speedup':>8} {'exact':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ref = f"{r.ref_micros:10.1f}" if r.ref_micros is not None else f"{'-':>10}"
        speedup = f"{r.ref_micros / r.micros:7.1f}x" if r.ref_micros is not None else f"{'-':>8}"
        print(f"{r.op:<30} {r.dtype:<9} {r.micros:9.1f} {r.gbps:8.0f} {r.pct_copy:9.1f}% {ref} {speedup} {r.exact:>6}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="square tensor size (default 8192)")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated input dtypes")
    parser.add_argument("--no-reference", action="store_true", help="skip timing/checking the PyTorch reference")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device is available; nothing to benchmark (run it on a GPU machine).")
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print("benchmarks/gpu.py: Triton is not installed; the Triton backend cannot run.")
        return 2
    dtypes = [getattr(torch, d.strip()) for d in args.dtypes.split(",") if d.strip()]
    rows = run(args.size, dtypes, with_reference=not args.no_reference)
    print_table(rows, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
