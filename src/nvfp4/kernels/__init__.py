"""Backends behind the reference quantizers, selected per device.

Every backend implements the same small interface (see ``ReferenceBackend``) and must match
the plain-PyTorch reference bit for bit; the tests enforce it. ``select("auto", device)``
picks the fastest one available; ``backend="reference"`` forces the oracle.
"""

from __future__ import annotations

import torch

from nvfp4.kernels.reference import ReferenceBackend

_REFERENCE = ReferenceBackend()


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names usable on ``device``, fastest first; "reference" is always last."""
    return ["reference"]


def select(backend: str, device: torch.device | str):
    names = available_backends(device)
    if backend == "auto":
        backend = names[0]
    if backend == "reference":
        return _REFERENCE
    raise ValueError(f"backend={backend!r} is not available on {device}; available: {', '.join(names)}")
