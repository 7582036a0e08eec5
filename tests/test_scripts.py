"""The device check scripts refuse to 'pass' on a machine without a GPU (issue #12, item 9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")


def test_gpu_checks_exits_2_without_cuda(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_checks.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "no CUDA device" in (tmp_path / "summary.txt").read_text()


@pytest.mark.parametrize("script", ["scripts/gpu_smoke.py", "benchmarks/gpu.py"])
def test_gpu_python_checks_exit_2_without_cuda(script):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / script)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
