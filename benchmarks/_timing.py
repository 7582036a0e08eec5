"""Shared timing helper for the benchmarks: medians of repeated runs, after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from nvfp4._provenance import cpu_model


def median_ms(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def machine() -> str:
    return f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
