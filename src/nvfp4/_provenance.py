"""Where a result came from: the code's git commit and the hardware, recorded with every run and report."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch


def git_commit() -> str | None:
    """Short commit of the checkout this package runs from (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def hardware(device: str | torch.device = "cpu") -> str:
    """CPU model and torch's thread count, torch version, and the GPU when ``device`` is (or "auto" picks) one."""
    text = f"{cpu_model()} ({torch.get_num_threads()} threads), torch {torch.__version__}"
    if str(device) != "cpu" and torch.cuda.is_available():
        index = torch.device(device).index if str(device).startswith("cuda") else None
        text += f", {torch.cuda.get_device_name(index or 0)}"
    return text
