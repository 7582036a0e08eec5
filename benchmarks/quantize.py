"""Quantization speed on the CPU: the C backend vs the plain-PyTorch reference, relative to a plain copy.

    PYTHONPATH=src python benchmarks/quantize.py                       # 4096x4096, backends cpu and reference
    PYTHONPATH=src python benchmarks/quantize.py --size 2048 --repeats 21 --backends cpu
    THP_MEM_ALLOC_ENABLE=1 PYTHONPATH=src python benchmarks/quantize.py --backends cpu --ops "fused,quantize+,t()"

Every NVFP4 row is a full call as training makes it: tensor amax pass + quantization into freshly allocated
outputs. "ratio" divides by the median time of ``y.copy_(x)`` into a preallocated ``y`` of the same tensor (a copy
reads and writes the tensor once: a memory-bandwidth yardstick), timed alternately with the row's own runs so that
both see the same load on a shared machine; the copy row shows the median of those per-row copy medians. "min"
columns are the fastest run of each (and min over min): on a busy shared machine they show the unloaded speed.
MXFP4 and FP8 rows run on every backend: "MXFP4 fused ..." is ``fake_quantize_mxfp4`` (the GEMM operand in BF16,
one pass: MXFP4 has no tensor amax), "FP8 fused ..." is ``fake_quantize_fp8`` (the FP32 GEMM operand).

The "fused" rows (non-reference backends only) time what a linear layer needs per operand, the GEMM operand
value(q)·s_b in BF16 with fresh outputs, two ways: ``fake_quantize_nvfp4`` (one op) against the composition it
replaces (quantize, then ``scaled_values``; for the Wgrad operand also the ``x.t().contiguous()`` copy first).
"T" = quantize ``x.t()`` (the Wgrad operands are quantized along the token dim). Fresh 32 MB outputs pay the
kernel's zero-filling of new pages on first touch; ``THP_MEM_ALLOC_ENABLE=1`` (read by torch at its first
allocation) makes torch use transparent huge pages, which removes most of that cost: run the script both ways.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine  # noqa: E402

from nvfp4 import kernels  # noqa: E402
from nvfp4.formats.hadamard import default_signs  # noqa: E402
from nvfp4.quantize import quantize_fp8_blockwise, quantize_mxfp4, quantize_nvfp4  # noqa: E402


def timed_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def pair_stats(fn: Callable[[], object], copy: Callable[[], object], repeats: int) -> tuple[float, ...]:
    """(median, min) of ``fn`` and of ``copy``, run alternately so both see the same load (shared CPUs)."""
    fn()  # warm-up: first-use compilation, allocator
    copy()
    times, copies = [], []
    for _ in range(repeats):
        copies.append(timed_ms(copy))
        times.append(timed_ms(fn))
    return statistics.median(times), min(times), statistics.median(copies), min(copies)


def cases(x: torch.Tensor, backend: str) -> dict[str, Callable[[], object]]:
    """The timed operations for one input and backend."""
    impl = kernels.select(backend, x.device)
    signs = default_signs(16)
    q = quantize_nvfp4(x, backend=backend)
    ops = {
        "NVFP4 1x16 RN": lambda: quantize_nvfp4(x, backend=backend),
        "NVFP4 1x16 SR": lambda: quantize_nvfp4(x, stochastic=True, seed=1, backend=backend),
        "NVFP4 16x16 RN": lambda: quantize_nvfp4(x, tile=(16, 16), backend=backend),
        "RHT16 + NVFP4 1x16 RN": lambda: impl.rht_quantize_nvfp4(x, signs, None, False, 0, 0),
        "scaled_values -> bf16": lambda: impl.scaled_values(q.packed, q.scales, torch.bfloat16),
    }
    signs32 = default_signs(32)
    ops["MXFP4 1x32 RN"] = lambda: quantize_mxfp4(x, backend=backend)
    ops["MXFP4 fused RN"] = lambda: impl.fake_quantize_mxfp4(x, False, 0, 0)
    ops["MXFP4 fused SR"] = lambda: impl.fake_quantize_mxfp4(x, True, 1, 0)
    ops["MXFP4 fused T RHT32 SR"] = lambda: impl.fake_quantize_mxfp4(x, True, 1, 0, transpose=True, rht_signs=signs32)
    ops["FP8 fused -> fp32"] = lambda: impl.fake_quantize_fp8(x, (1, 128))
    ops["FP8 fused T -> fp32"] = lambda: impl.fake_quantize_fp8(x, (1, 128), transpose=True)
    if backend == "reference":
        ops["FP8 1x128 (codes)"] = lambda: quantize_fp8_blockwise(x)
    else:
        ops.update(fused_cases(x, impl, signs))
    return ops


def fused_cases(x: torch.Tensor, impl, signs: torch.Tensor) -> dict[str, Callable[[], object]]:
    """GEMM operands (BF16 values) straight from the input: the fused op vs the composition it replaces."""

    def composed(stochastic: bool) -> torch.Tensor:
        packed, scales = impl.quantize_nvfp4(x, impl.amax(x), 1, stochastic, 1, 0)
        return impl.scaled_values(packed, scales, torch.bfloat16)

    def composed_wgrad() -> torch.Tensor:
        packed, scales, _ = impl.rht_quantize_nvfp4(x.t().contiguous(), signs, None, True, 1, 0)
        return impl.scaled_values(packed, scales, torch.bfloat16)

    return {
        "x.t().contiguous()": lambda: x.t().contiguous(),
        "fused RN": lambda: impl.fake_quantize_nvfp4(x, None, 1, False, 1, 0),
        "quantize+values RN": lambda: composed(False),
        "fused SR": lambda: impl.fake_quantize_nvfp4(x, None, 1, True, 1, 0),
        "quantize+values SR": lambda: composed(True),
        "fused T RHT SR": lambda: impl.fake_quantize_nvfp4(x, None, 1, True, 1, 0, transpose=True, rht_signs=signs),
        "t()+rht_q+values SR": composed_wgrad,
        "fused T RHT RN (packed)": lambda: impl.rht_quantize_nvfp4(x, signs, None, False, 0, 0, transpose=True),
        "t()+rht_quantize RN": lambda: impl.rht_quantize_nvfp4(x.t().contiguous(), signs, None, False, 0, 0),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="the input is size x size (default 4096)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per row (reference rows: a third)")
    parser.add_argument("--backends", default="cpu,reference", help="comma-separated (default cpu,reference)")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: torch's)")
    parser.add_argument("--ops", default="", help="comma-separated substrings: time only the rows whose name has one")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    wanted = [w.strip() for w in args.ops.split(",") if w.strip()]
    available = kernels.available_backends("cpu")
    for b in backends:
        if b not in available:
            parser.error(f"backend {b!r} is not available on this machine (available: {', '.join(available)})")

    print(f"machine: {machine()}; THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '(unset)')}")
    print(f"input: {args.size}x{args.size}; {args.repeats} runs per row (reference: {max(3, args.repeats // 3)})")
    print()
    print(f"| input | {'operation':24} | backend   | median ms | ratio to copy | min ms | min ratio |")
    print("|-------|--------------------------|-----------|-----------|---------------|--------|-----------|")
    torch.manual_seed(0)
    base = torch.randn(args.size, args.size)
    for dtype in (torch.float32, torch.bfloat16):
        x = base.to(dtype)
        y = torch.empty_like(x)
        name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
        rows, copy_medians, copy_mins = [], [], []
        for backend in backends:
            repeats = args.repeats if backend != "reference" else max(3, args.repeats // 3)
            for op, fn in cases(x, backend).items():
                if wanted and not any(w in op for w in wanted):
                    continue
                med, low, copy_med, copy_low = pair_stats(fn, lambda x=x, y=y: y.copy_(x), repeats)
                rows.append((op, backend, med, med / copy_med, low, low / copy_low))
                copy_medians.append(copy_med)
                copy_mins.append(copy_low)
        copy_row = ("copy (y.copy_(x))", "torch", statistics.median(copy_medians), 1.0, min(copy_mins), 1.0)
        for op, backend, med, ratio, low, low_ratio in [copy_row, *rows]:
            print(f"| {name:5} | {op:24} | {backend:9} | {med:9.2f} | {ratio:13.2f} | {low:6.2f} | {low_ratio:9.2f} |")


if __name__ == "__main__":
    main()
