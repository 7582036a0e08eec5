"""Backends behind the reference quantizers, selected per device.

The contract (``nvfp4.kernels.contract``): every backend implements the ops of ``ReferenceBackend`` (amax,
quantize_nvfp4, rht_quantize_nvfp4, fake_quantize_nvfp4, scaled_values, the MXFP4 and FP8 ops; ``transpose=True``
reads x2d.t()) with its signatures, and must match the plain-PyTorch reference bit for bit; the conformance tests
enforce it. ``select("auto", device)`` picks the first available backend in ``_PREFERENCE`` order, once per
device; ``backend="reference"`` forces the oracle. A fast backend declines an input it has no kernel for by
raising ``Unsupported`` before doing any work, and then the reference runs instead; any other exception propagates.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings

import torch

from nvfp4.kernels.contract import OPS, Unsupported
from nvfp4.kernels.reference import ReferenceBackend

# name -> "module:Class"; loaded lazily so a missing compiler or Triton never breaks import.
_REGISTRY = {
    "triton": "nvfp4.kernels.triton_backend:TritonBackend",
    "cpu": "nvfp4.kernels.cpu:CPUBackend",
    "reference": "nvfp4.kernels.reference:ReferenceBackend",
}
_PREFERENCE = ("triton", "cpu", "reference")


@functools.cache
def _load(name: str):
    """The backend class, or None when its module cannot be imported (e.g. no Triton).

    Cached, failures included: Python does not cache a failed import, so without this every call would
    re-read and (under PYTHONDONTWRITEBYTECODE=1, no .pyc) recompile the module source: about 5 ms per
    operand, a 4-6x slower CPU training step (issue #12, item 0).
    """
    module_name, class_name = _REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return getattr(module, class_name)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names usable on ``device``, fastest first; "reference" is always available."""
    device = torch.device(device)
    names = []
    for name in _PREFERENCE:
        cls = _load(name)
        if cls is not None and cls.is_available(device):
            names.append(name)
    return names


def select(backend: str, device: torch.device | str):
    """The backend object for ``backend`` ("auto" = fastest available) on ``device``.

    Resolved once per (backend, device) and the environment switches that change availability (the hot path calls
    this for every operand)."""
    env = (os.environ.get("TRITON_INTERPRET"), os.environ.get("NVFP4_DISABLE_CPU_KERNEL"))
    return _select(backend, torch.device(device), env)


@functools.lru_cache(maxsize=64)
def _select(backend: str, device: torch.device, env: tuple) -> object:
    names = available_backends(device)
    if backend == "auto":
        backend = names[0]
        if backend == "reference" and torch.device(device).type == "cuda":
            _warn_once(
                f"nvfp4: no fast backend for {device} (is Triton installed?): quantizing with the plain-PyTorch "
                "reference, 20-100x slower. `pip install triton`, or pass backend='reference' to silence this."
            )
    if backend not in names:
        known = ", ".join(_REGISTRY)
        raise ValueError(
            f"backend={backend!r} is not available on {device}; available there: {', '.join(names)} "
            f"(known backends: {known})"
        )
    fast = _load(backend).instance()
    return fast if backend == "reference" else _Fallback(fast, ReferenceBackend.instance())


class _Fallback:
    """Wraps a fast backend: an op it declines (``Unsupported``) runs on the reference. Each op's wrapper is built
    once and then found as a plain attribute (this sits on the per-operand hot path)."""

    def __init__(self, fast, reference: ReferenceBackend):
        self.fast, self.reference, self.name = fast, reference, fast.name

    def __getattr__(self, op: str):
        if op not in OPS:
            raise AttributeError(op)
        fast_op, ref_op = getattr(self.fast, op, None), getattr(self.reference, op)
        name = self.name

        def call(*args, **kwargs):
            if fast_op is not None:
                try:
                    return fast_op(*args, **kwargs)
                except Unsupported as e:
                    tensor = next((a for a in args if isinstance(a, torch.Tensor)), None)
                    if tensor is not None and tensor.is_cuda:
                        _warn_once(f"nvfp4: the {name} backend does not run {op} here ({e}); using the "
                                   "plain-PyTorch reference, which is much slower on a GPU")  # fmt: skip
            return ref_op(*args, **kwargs)

        setattr(self, op, call)  # later lookups skip __getattr__
        return call


@functools.cache
def _warn_once(message: str) -> None:
    """One warning per distinct message per process: a slow path is worth knowing about, not 1,000 times a step."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)
