"""Backend resolution: done once, failures included, so the hot path never re-imports anything."""

from __future__ import annotations

import importlib.abc
import sys

import pytest
import torch

import nvfp4
from nvfp4 import kernels
from nvfp4.model import GPT


class _ImportRecorder(importlib.abc.MetaPathFinder):
    """Records every import that reaches the finders (i.e. every module not already in sys.modules)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, fullname, path, target=None):
        self.names.append(fullname)
        return None


@pytest.fixture
def without_triton(monkeypatch):
    """As on a machine without Triton: `import triton` fails, and the backend module is not yet imported."""
    monkeypatch.setitem(sys.modules, "triton", None)
    for module in ("triton_backend", "triton_kernels", "triton_numerics"):
        monkeypatch.delitem(sys.modules, f"nvfp4.kernels.{module}", raising=False)
    kernels._load.cache_clear()
    kernels._select.cache_clear()
    yield
    kernels._load.cache_clear()
    kernels._select.cache_clear()


def test_failed_backend_import_is_not_retried(without_triton):
    assert kernels._load("triton") is None
    kernels.select("auto", "cpu")  # first resolution: imports the backends that exist
    recorder = _ImportRecorder()
    sys.meta_path.insert(0, recorder)
    try:
        for _ in range(5):
            kernels.select("auto", "cpu")
            kernels.available_backends("cpu")
    finally:
        sys.meta_path.remove(recorder)
    assert recorder.names == []


@pytest.mark.parametrize("recipe", ["nvfp4", "mxfp4", "fp8"])
def test_training_step_imports_nothing(without_triton, monkeypatch, recipe):
    """The issue-12 item-0 regression: under PYTHONDONTWRITEBYTECODE=1 a retried failed import recompiled
    triton_backend.py for every operand (4-6x slower steps). After one warm-up step, a step imports nothing."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    torch.manual_seed(0)
    model = nvfp4.convert(GPT.from_preset("tiny", vocab_size=128, seq_len=32), recipe)
    x = torch.randint(0, 128, (2, 32))

    def step():
        _, loss = model(x, x)
        loss.backward()
        nvfp4.invalidate_weight_caches(model)

    step()
    recorder = _ImportRecorder()
    sys.meta_path.insert(0, recorder)
    try:
        step()
    finally:
        sys.meta_path.remove(recorder)
    assert recorder.names == [], f"a training step imported {sorted(set(recorder.names))}"


def test_cuda_without_a_fast_backend_warns_once(without_triton, monkeypatch):
    """The silent 20-100x slow path of issue #12: a CUDA tensor that gets the reference says so, once."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kernels._warn_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="no fast backend"):
        assert kernels.select("auto", "cuda").name == "reference"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.select("auto", "cuda")  # the second time: silent
