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


def interleaved_ms(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Times (ms) of each step over ``repeats`` rounds, the steps taking turns within a round, so that machine load
    affects all of them alike (the ratios are then fair even on a noisy machine). Warm up before calling."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def machine() -> str:
    return f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
