"""The backend contract: what every fast backend implements, and how it declines an input.

A backend is a class with a ``name``, ``is_available(device)`` and a cached ``instance()``, and the ops in ``OPS``
with exactly the signatures and semantics of ``nvfp4.kernels.reference.ReferenceBackend`` (the oracle: plain
PyTorch, whose docstrings define each op). A fast backend must return the reference's bits for every input it
accepts (``tests/kernels/test_conformance.py`` checks both the signatures and the bits, for every backend that can
run here).

Declining: an input outside a backend's kernels (an unfused Hadamard size, a tile it has no kernel for, a device it
does not run on) raises ``Unsupported`` *before any work*, and the registry runs the reference instead (on a GPU it
warns once: that path is slow). Any other exception, ``NotImplementedError`` included, is a bug and propagates, so a
broken fast kernel can never hide behind the reference.
"""

from __future__ import annotations

from typing import Protocol

import torch

OPS = (
    "amax",
    "quantize_nvfp4",
    "rht_quantize_nvfp4",
    "fake_quantize_nvfp4",
    "scaled_values",
    "quantize_mxfp4",
    "fake_quantize_mxfp4",
    "quantize_fp8",
    "fake_quantize_fp8",
)


class Unsupported(NotImplementedError):
    """This backend has no kernel for this input (raised before any work): the reference runs it."""


class Backend(Protocol):
    """The class side of a backend; its ops are ``OPS``, with ReferenceBackend's signatures."""

    name: str

    @classmethod
    def is_available(cls, device: torch.device) -> bool: ...

    @classmethod
    def instance(cls) -> Backend: ...
