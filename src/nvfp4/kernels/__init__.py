"""Backends behind the reference quantizers, selected per device.

The contract (``nvfp4.kernels.contract``): every backend has a ``supports`` predicate and the reference's three
kernels (amax, quantize with one frozen ``QuantSpec``, scaled_values), and must match the plain-PyTorch reference
bit for bit; the conformance tests enforce it. ``select("auto", device)`` picks the first available backend in
``_PREFERENCE`` order, once per device; ``backend="reference"`` forces the oracle. Through ``select`` an input the
fast backend's ``supports`` declines runs on the reference; an exception inside a kernel always propagates.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings

import torch

from nvfp4.kernels.contract import BackendBase, Quantized, QuantSpec
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


class _Fallback(BackendBase):
    """A fast backend with the reference behind it: before every call the fast backend's ``supports`` decides, and a
    declined input runs on the reference (one warning per reason on a GPU). An exception raised *inside* a fast
    kernel is never caught: a bug cannot hide behind the reference."""

    def __init__(self, fast: BackendBase, reference: ReferenceBackend):
        self.fast, self.reference, self.name = fast, reference, fast.name

    def _choose(self, op: str, x: torch.Tensor, spec: QuantSpec | None = None, **kw) -> BackendBase:
        reason = self.fast.supports(op, x, spec, **kw)
        if reason is None:
            return self.fast
        if x.is_cuda:
            _warn_once(
                f"nvfp4: the {self.name} backend does not run {op} here ({reason}); using the plain-PyTorch "
                "reference, which is much slower on a GPU"
            )
        return self.reference

    def amax_kernel(self, x2d: torch.Tensor) -> torch.Tensor:
        return self._choose("amax", x2d).amax_kernel(x2d)

    def quantize_kernel(
        self,
        x2d: torch.Tensor,
        spec: QuantSpec,
        *,
        amax: torch.Tensor | None = None,
        signs: torch.Tensor | None = None,
        seed: int = 0,
        offset: int | torch.Tensor = 0,
    ) -> Quantized:
        impl = self._choose("quantize", x2d, spec, signs=signs, amax=amax)
        return impl.quantize_kernel(x2d, spec, amax=amax, signs=signs, seed=seed, offset=offset)

    def scaled_values_kernel(
        self, packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
    ) -> torch.Tensor:
        return self._choose("scaled_values", packed).scaled_values_kernel(packed, scales, dtype)


@functools.cache
def _warn_once(message: str) -> None:
    """One warning per distinct message per process: a slow path is worth knowing about, not 1,000 times a step."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)
