"""Quantization speed on the CPU: the C backend vs the plain-PyTorch reference, relative to a plain copy.

    PYTHONPATH=src python benchmarks/quantize.py                       # 4096x4096, backends cpu and reference
    PYTHONPATH=src python benchmarks/quantize.py --size 2048 --repeats 21 --backends cpu

Every NVFP4 row is a full call as training makes it: tensor amax pass + quantization into freshly allocated
outputs. "ratio" divides by the median time of ``y.copy_(x)`` into a preallocated ``y`` of the same tensor (a copy
reads and writes the tensor once: a memory-bandwidth yardstick), timed alternately with the row's own runs so that
both see the same load on a shared machine; the copy row shows the median of those per-row copy medians. "min"
columns are the fastest run of each (and min over min): on a busy shared machine they show the unloaded speed.
MXFP4 and FP8 have only reference implementations; they are listed for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine  # noqa: E402

from nvfp4 import kernels  # noqa: E402
from nvfp4.formats import quantize_fp8_blockwise, quantize_mxfp4, quantize_nvfp4  # noqa: E402
from nvfp4.hadamard import default_signs  # noqa: E402


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
    if backend == "reference":
        ops["MXFP4 1x32 RN"] = lambda: quantize_mxfp4(x)
        ops["FP8 1x128"] = lambda: quantize_fp8_blockwise(x)
    return ops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="the input is size x size (default 4096)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per row (reference rows: a third)")
    parser.add_argument("--backends", default="cpu,reference", help="comma-separated (default cpu,reference)")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    available = kernels.available_backends("cpu")
    for b in backends:
        if b not in available:
            parser.error(f"backend {b!r} is not available on this machine (available: {', '.join(available)})")

    print(f"machine: {machine()}")
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
                med, low, copy_med, copy_low = pair_stats(fn, lambda x=x, y=y: y.copy_(x), repeats)
                rows.append((op, backend, med, med / copy_med, low, low / copy_low))
                copy_medians.append(copy_med)
                copy_mins.append(copy_low)
        copy_row = ("copy (y.copy_(x))", "torch", statistics.median(copy_medians), 1.0, min(copy_mins), 1.0)
        for op, backend, med, ratio, low, low_ratio in [copy_row, *rows]:
            print(f"| {name:5} | {op:24} | {backend:9} | {med:9.2f} | {ratio:13.2f} | {low:6.2f} | {low_ratio:9.2f} |")


if __name__ == "__main__":
    main()
