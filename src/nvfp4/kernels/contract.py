"""The backend contract: one frozen spec crosses the boundary, a predicate decides who runs it.

A backend (``ReferenceBackend``, the oracle in plain PyTorch; ``CPUBackend``, C; ``TritonBackend``) is a
``BackendBase`` with a ``name``, ``is_available(device)``, a cached ``instance()`` and

* ``supports(op, x, spec, *, signs, amax) -> str | None``: ``None`` if its kernel runs this input, else the reason
  it does not. A pure predicate (no work, no device sync); the registry asks it before every call.
* three kernels with the reference's signatures and semantics, which may assume ``supports`` said yes:
  ``amax_kernel(x2d)``, ``quantize_kernel(x2d, spec, *, amax, signs, seed, offset)`` and
  ``scaled_values_kernel(packed, scales, dtype)``.

``BackendBase`` gives every backend the same checked entry points (``amax``, ``quantize``, ``scaled_values``: a
declined input raises ``Unsupported`` before any work) and the per-format conveniences the tests and benchmarks
use (``quantize_nvfp4``, ``fake_quantize_mxfp4``, ...), each a ``QuantSpec`` and one ``quantize`` call.
Through the registry (``nvfp4.kernels.select``) a declined input runs on the reference instead (with one warning
on a GPU: that path is slow); an exception *inside* a kernel is a bug and always propagates, so a broken fast
kernel can never hide behind the reference. ``tests/kernels/test_conformance.py`` checks every backend that runs
here against the reference's signatures and bits.

Stochastic rounding: ``seed`` is an int (per layer, constant); ``offset`` is an int or a 0-d int64 tensor. A
tensor offset on the GPU is read by the kernel itself, so a step neither syncs nor bakes the offset into a
captured CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

FORMATS = ("nvfp4", "mxfp4", "fp8", "mxfp8")
_RHT_SIZES = (2, 4, 8, 16, 32, 64, 128)  # what nvfp4.hadamard transforms; backends fuse some (``supports``)

OPS = ("amax", "quantize", "scaled_values")  # the checked entry points; each runs the op's *_kernel
KERNELS = ("amax_kernel", "quantize_kernel", "scaled_values_kernel")
CONVENIENCES = (  # per-format shorthands over ``quantize``, defined once in BackendBase
    "quantize_nvfp4",
    "rht_quantize_nvfp4",
    "fake_quantize_nvfp4",
    "quantize_mxfp4",
    "fake_quantize_mxfp4",
    "quantize_fp8",
    "fake_quantize_fp8",
    "quantize_mxfp8",
    "fake_quantize_mxfp8",
)


class Unsupported(RuntimeError):
    """A backend's ``supports`` declined this input (raised before any work by a direct, unchecked call)."""


@dataclass(frozen=True)
class QuantSpec:
    """What to compute for one operand: hashable and static per operand, so a compiled graph holds it as a constant.

    The logical operand is t = x2d.t() if ``transpose`` else x2d, of shape (M, K), quantized along K:
    ``format`` "nvfp4" (E2M1, 16-blocks, E4M3 scales, FP32 tensor scale; ``tile`` (1, 16) or (r, 16) tiles),
    "mxfp4" (E2M1, 32-blocks, E8M0 scales; ``scale_rule`` "ceil" or "floor"), "fp8" (E4M3 values, FP32 block
    scales; ``tile`` (1, 128) or (128, 128)) or "mxfp8" (E4M3 values, 32-blocks, E8M0 scales; ``tile`` (1, 32)).
    ``rht``: the size of a random Hadamard transform applied along K
    first (its signs travel as a tensor; K must be a multiple). ``out_dtype``: the dtype of the GEMM values
    value(q) × block scale (M, K), or ``None`` for the packed codes and scales. ``four_over_six`` (nvfp4): each
    block keeps the better of its amax/6 and amax/4 scales, the tensor scale targets 256 (SR: with 16/17 headroom).
    """

    format: str
    tile: tuple[int, int] = (1, 16)
    stochastic: bool = False
    transpose: bool = False
    rht: int | None = None
    scale_rule: str = "ceil"
    out_dtype: torch.dtype | None = torch.bfloat16
    four_over_six: bool = False  # nvfp4: adaptive 4/6 block scales (nvfp4.formats.fouroversix)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")
        tile = tuple(int(v) for v in self.tile)
        object.__setattr__(self, "tile", tile)
        if len(tile) != 2 or min(tile) < 1:
            raise ValueError(f"a tile is (rows, cols) with both >= 1, got {tile}")
        if self.format == "nvfp4" and tile[1] != 16:
            raise ValueError(f"nvfp4 tiles are (rows, 16), got {tile}")
        if self.format in ("mxfp4", "mxfp8") and tile != (1, 32):
            raise ValueError(f"{self.format} tiles are (1, 32), got {tile}")
        if self.format == "fp8" and tile not in ((1, 128), (128, 128)):
            raise ValueError(f"fp8 tiles are (1, 128) or (128, 128), got {tile}")
        if self.rht is not None and self.rht not in _RHT_SIZES:
            raise ValueError(f"rht must be a power of two from 2 to 128 (or None), got {self.rht}")
        if self.format == "mxfp4" and self.scale_rule not in ("ceil", "floor"):
            raise ValueError(f"scale_rule must be 'ceil' or 'floor', got {self.scale_rule!r}")
        if self.four_over_six and self.format != "nvfp4":
            raise ValueError(f"four_over_six is an nvfp4 block-scale rule, not defined for {self.format}")
        if self.stochastic and self.format in ("fp8", "mxfp8"):
            raise ValueError(f"{self.format} rounds to nearest only: stochastic=True is not defined for it")

    @property
    def packed(self) -> bool:
        return self.out_dtype is None


class Quantized(NamedTuple):
    """What ``quantize`` returns: ``data`` = the GEMM values (out_dtype, (M, K)) or the packed codes/E4M3 data;
    ``scales`` = the block scales (packed only; else None); ``amax`` = the FP32 0-d tensor amax used (NVFP4 only)."""

    data: torch.Tensor
    scales: torch.Tensor | None
    amax: torch.Tensor | None


def logical_shape(x2d: torch.Tensor, spec: QuantSpec) -> tuple[int, int]:
    return (x2d.shape[1], x2d.shape[0]) if spec.transpose else (x2d.shape[0], x2d.shape[1])


def offset_value(offset: int | torch.Tensor) -> int:
    """The SR offset as a Python int (the host backends' view of a tensor offset; a GPU tensor would sync)."""
    return int(offset) & ((1 << 64) - 1)


def _check_rht(x2d: torch.Tensor, spec: QuantSpec, signs: torch.Tensor | None) -> None:
    """Inputs no backend can quantize: a clear ValueError from every backend alike."""
    if (signs is None) != (spec.rht is None):
        raise ValueError("a Hadamard transform needs both spec.rht and its signs (or neither)")
    if spec.rht is None:
        return
    if int(signs.numel()) != spec.rht:
        raise ValueError(f"spec.rht = {spec.rht} but {int(signs.numel())} signs were given")
    cols = logical_shape(x2d, spec)[1]
    if cols % spec.rht:
        raise ValueError(f"the RHT needs K % {spec.rht} == 0 (K = {cols}); zero-pad the tensor first")


class BackendBase:
    """Checked entry points and per-format conveniences over a backend's ``supports`` and three kernels."""

    name = "base"

    def supports(
        self,
        op: str,
        x: torch.Tensor,
        spec: QuantSpec | None = None,
        *,
        signs: torch.Tensor | None = None,
        amax: torch.Tensor | None = None,
    ) -> str | None:
        """None when this backend's kernel runs ``op`` on this input, else why not (no work is done)."""
        return None

    def amax_kernel(self, x2d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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
        raise NotImplementedError

    def scaled_values_kernel(
        self, packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
    ) -> torch.Tensor:
        raise NotImplementedError

    # -- checked entry points -----------------------------------------------------------------------------
    def _require(self, op: str, x: torch.Tensor, spec: QuantSpec | None = None, **kw) -> None:
        if x.dim() != 2:
            raise ValueError(f"{op} takes a 2-D tensor, got shape {tuple(x.shape)}")
        if spec is not None:
            _check_rht(x, spec, kw.get("signs"))
        reason = self.supports(op, x, spec, **kw)
        if reason is not None:
            raise Unsupported(f"{self.name} backend: {reason}")

    def amax(self, x2d: torch.Tensor) -> torch.Tensor:
        """max|x| as an FP32 0-d tensor (NaN if any NaN)."""
        self._require("amax", x2d)
        return self.amax_kernel(x2d)

    def quantize(
        self,
        x2d: torch.Tensor,
        spec: QuantSpec,
        *,
        amax: torch.Tensor | None = None,
        signs: torch.Tensor | None = None,
        seed: int = 0,
        offset: int | torch.Tensor = 0,
    ) -> Quantized:
        """Quantize t (see ``QuantSpec``) with the tensor ``amax`` (NVFP4; max|t| after the RHT when None)."""
        self._require("quantize", x2d, spec, signs=signs, amax=amax)
        return self.quantize_kernel(x2d, spec, amax=amax, signs=signs, seed=seed, offset=offset)

    def scaled_values(
        self, packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
    ) -> torch.Tensor:
        """value(q) × block scale of NVFP4 codes for every (padded) element: (M, ceil(K/16)*16), exact in BF16."""
        self._require("scaled_values", packed)
        return self.scaled_values_kernel(packed, scales, dtype)

    # -- per-format conveniences: one spec, one quantize call ---------------------------------------------
    def quantize_nvfp4(
        self,
        x2d: torch.Tensor,
        global_amax: torch.Tensor,
        tile_rows: int,
        stochastic: bool,
        seed: int,
        offset: int | torch.Tensor,
        *,
        transpose: bool = False,
        four_over_six: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(packed uint8 (M, ceil(K/16)*8), scales e4m3 (M, ceil(K/16))) of t; SR element index row*K + col of t."""
        spec = QuantSpec("nvfp4", (tile_rows, 16), stochastic, transpose, out_dtype=None, four_over_six=four_over_six)
        q = self.quantize(x2d, spec, amax=global_amax, seed=seed, offset=offset)
        return q.data, q.scales

    def rht_quantize_nvfp4(
        self,
        x2d: torch.Tensor,
        signs: torch.Tensor,
        global_amax: torch.Tensor | None,
        stochastic: bool,
        seed: int,
        offset: int | torch.Tensor,
        *,
        transpose: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RHT (size len(signs)) along K of t, BF16-rounded, then 1x16 NVFP4: (packed, scales, amax used)."""
        spec = QuantSpec(
            "nvfp4", (1, 16), stochastic, transpose, rht=int(torch.as_tensor(signs).numel()), out_dtype=None
        )
        q = self.quantize(x2d, spec, amax=global_amax, signs=signs, seed=seed, offset=offset)
        return q.data, q.scales, q.amax

    def fake_quantize_nvfp4(
        self,
        x2d: torch.Tensor,
        global_amax: torch.Tensor | None,
        tile_rows: int,
        stochastic: bool,
        seed: int,
        offset: int | torch.Tensor,
        *,
        transpose: bool = False,
        rht_signs: torch.Tensor | None = None,
        out_dtype: torch.dtype = torch.bfloat16,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(values (M, K) = value(q)·s_b in out_dtype, amax used) of t, RHT16'd along K first if rht_signs."""
        rht = None if rht_signs is None else int(torch.as_tensor(rht_signs).numel())
        spec = QuantSpec("nvfp4", (tile_rows, 16), stochastic, transpose, rht=rht, out_dtype=out_dtype)
        q = self.quantize(x2d, spec, amax=global_amax, signs=rht_signs, seed=seed, offset=offset)
        return q.data, q.amax

    def quantize_mxfp4(
        self,
        x2d: torch.Tensor,
        stochastic: bool,
        seed: int,
        offset: int | torch.Tensor,
        *,
        scale_rule: str = "ceil",
        transpose: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(packed uint8 (M, ceil(K/32)*16), scales float8_e8m0fnu (M, ceil(K/32))) of t."""
        spec = QuantSpec("mxfp4", (1, 32), stochastic, transpose, scale_rule=scale_rule, out_dtype=None)
        q = self.quantize(x2d, spec, seed=seed, offset=offset)
        return q.data, q.scales

    def fake_quantize_mxfp4(
        self,
        x2d: torch.Tensor,
        stochastic: bool,
        seed: int,
        offset: int | torch.Tensor,
        *,
        scale_rule: str = "ceil",
        transpose: bool = False,
        rht_signs: torch.Tensor | None = None,
        out_dtype: torch.dtype = torch.bfloat16,
    ) -> torch.Tensor:
        """The MXFP4 GEMM operand value(q)·2^e (M, K) of t, RHT'd along K first if rht_signs."""
        rht = None if rht_signs is None else int(torch.as_tensor(rht_signs).numel())
        spec = QuantSpec("mxfp4", (1, 32), stochastic, transpose, rht=rht, scale_rule=scale_rule, out_dtype=out_dtype)
        return self.quantize(x2d, spec, signs=rht_signs, seed=seed, offset=offset).data

    def quantize_fp8(
        self, x2d: torch.Tensor, tile: tuple[int, int], *, transpose: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(E4M3 data (M, K), FP32 scales (M, ceil(K/128))) of t."""
        q = self.quantize(x2d, QuantSpec("fp8", tile, transpose=transpose, out_dtype=None))
        return q.data, q.scales

    def fake_quantize_fp8(self, x2d: torch.Tensor, tile: tuple[int, int], *, transpose: bool = False) -> torch.Tensor:
        """The FP8 GEMM operand e4m3(t / s_b) · s_b (FP32, (M, K)) of t."""
        return self.quantize(x2d, QuantSpec("fp8", tile, transpose=transpose, out_dtype=torch.float32)).data

    def quantize_mxfp8(self, x2d: torch.Tensor, *, transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(E4M3 data (M, K), E8M0 scales float8_e8m0fnu (M, ceil(K/32))) of t."""
        q = self.quantize(x2d, QuantSpec("mxfp8", (1, 32), transpose=transpose, out_dtype=None))
        return q.data, q.scales

    def fake_quantize_mxfp8(
        self, x2d: torch.Tensor, *, transpose: bool = False, out_dtype: torch.dtype = torch.bfloat16
    ) -> torch.Tensor:
        """The MXFP8 GEMM operand e4m3(t · 2^-e) · 2^e (M, K) of t."""
        return self.quantize(x2d, QuantSpec("mxfp8", (1, 32), transpose=transpose, out_dtype=out_dtype)).data
