"""Triton backend: NVFP4 amax, quantize (1x16 / 16x16, RN / SR), fused RHT+quantize, the fused GEMM operand
(``fake_quantize_nvfp4``), scaled values, and MXFP4 (packed, or fused with the RHT32 into the GEMM operand).
Transposed operands (``transpose=True``) are read in place through strides, never copied.

Every kernel reproduces ``nvfp4.formats.nvfp4.reference_quantize_nvfp4_2d`` (and the RHT of
``nvfp4.formats.hadamard``) bit for bit: ``triton_numerics`` says how each FP32 step stays exact, ``triton_kernels``
holds the kernels, this module the launchers and the backend class.

Tests run the same kernels on a CPU with ``TRITON_INTERPRET=1``, which must be set before this
module is imported (the kernels are decorated then).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from nvfp4.formats.rng import derive_keys, device_key_words
from nvfp4.kernels import triton_kernels as tk
from nvfp4.kernels.contract import BackendBase, Quantized, QuantSpec, Unsupported, logical_shape, offset_value
from nvfp4.kernels.triton_numerics import BLOCK

# ----------------------------------------------------------------------------------------------
# Backend
# ----------------------------------------------------------------------------------------------

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _interpreted() -> bool:
    """True when the kernels in ``triton_kernels`` were built by Triton's CPU interpreter (TRITON_INTERPRET=1 was
    set when they were imported; the kernels' type records what actually happened)."""
    return type(tk.nvfp4_quantize_kernel).__name__ == "InterpretedFunction"


def _as_int32(key: int) -> int:
    """A uint32 key as the int32 with the same bits (Triton passes it as i32, bitcast in-kernel)."""
    return key - (1 << 32) if key >= 1 << 31 else key


def _bf16_as_bits(x: torch.Tensor) -> torch.Tensor:
    """BF16 tensors go to the kernels as int16 bits (see _load_tile)."""
    return x.view(torch.int16) if x.dtype == torch.bfloat16 else x


def _needs_index64(rows: int, padded_cols: int) -> bool:
    """Whether SR element indices (row * K + col, padding columns included) can reach 2^32 (then 64-bit index
    arithmetic; else the cheaper 32-bit path, same bits)."""
    return rows * padded_cols >= 1 << 32


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class TritonBackend(BackendBase):
    """NVFP4, MXFP4 and FP8 kernels in Triton for CUDA devices (and the CPU under TRITON_INTERPRET=1, for tests)."""

    name = "triton"
    _FUSED_RHT = {"nvfp4": 16, "mxfp4": 32, "fp8": None, "mxfp8": None}

    @classmethod
    def is_available(cls, device: torch.device) -> bool:
        device = torch.device(device)
        if device.type == "cuda":
            return torch.cuda.is_available()
        interpret = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")
        return device.type == "cpu" and interpret and _interpreted()

    @classmethod
    @functools.cache
    def instance(cls) -> TritonBackend:
        return cls()

    def __init__(self) -> None:
        self._signs_cache: dict[tuple[tuple[float, ...], str], torch.Tensor] = {}

    def supports(
        self,
        op: str,
        x: torch.Tensor,
        spec: QuantSpec | None = None,
        *,
        signs: torch.Tensor | None = None,
        amax: torch.Tensor | None = None,
    ) -> str | None:
        if not self.is_available(x.device):
            return f"not available on {x.device}"
        if x.dim() != 2 or x.numel() == 0:
            return "non-empty 2-D tensors only"
        if op == "scaled_values":
            return None
        if x.dtype not in _FLOAT_DTYPES:
            return f"fp32/bf16/fp16 input only, got {x.dtype}"
        if op != "quantize":
            return None
        if spec.format == "nvfp4" and spec.tile[0] not in (1, 16):
            return f"nvfp4 tiles (1, 16) and (16, 16) only, got {spec.tile}"
        if spec.rht is not None:
            if spec.rht != self._FUSED_RHT[spec.format] or signs is None:
                return f"no fused {spec.rht}-point RHT for {spec.format}"
            if logical_shape(x, spec)[1] % spec.rht:
                return f"K is not a multiple of the RHT size {spec.rht}"
            if signs.device.type == "cpu":  # a host vector is checked (once: cached); a device one would sync
                try:
                    self._device_signs(signs, x.device)
                except Unsupported as exc:
                    return str(exc)
        elif signs is not None:
            return "signs without spec.rht"
        return None

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _operand(x2d: torch.Tensor, transpose: bool) -> torch.Tensor:
        """The logical operand t = x2d (or x2d.t()) as a strided view the kernels read in place."""
        t = x2d.t() if transpose else x2d
        return t if 1 in t.stride() else t.contiguous()  # row- or column-major views are read as they are

    @staticmethod
    def _device_guard(device: torch.device) -> contextlib.AbstractContextManager:
        """Launch on the tensor's GPU; under the interpreter, silence NumPy's warnings about the
        IEEE results the kernels rely on (1/0 = inf, NaN compares) — they are not errors."""
        if device.type == "cuda":
            return torch.cuda.device(device)
        if _interpreted():
            import numpy

            return numpy.errstate(divide="ignore", invalid="ignore", over="ignore")
        return contextlib.nullcontext()

    def _device_signs(self, signs: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The sign vector as fp32 on ``device``. Host-side vectors (the usual case) are checked and
        their device copies cached, so a training step neither syncs nor copies; a vector that is
        already on the GPU is used as is (checking it would cost a device sync)."""
        if signs.device.type != "cpu":
            return signs.to(device=device, dtype=torch.float32).contiguous()
        values = tuple(float(v) for v in signs.reshape(-1).tolist())
        if any(v not in (1.0, -1.0) for v in values):
            raise Unsupported("signs must be ±1 (the reference raises the error)")
        key = (values, str(device))
        cached = self._signs_cache.get(key)
        if cached is None:
            cached = self._signs_cache[key] = torch.tensor(values, dtype=torch.float32, device=device)
        return cached

    @staticmethod
    def _sr_args(
        stochastic: bool, seed: int, offset: int | torch.Tensor, device: torch.device, dummy: torch.Tensor
    ) -> tuple[int, int, torch.Tensor, bool]:
        """(key1, key2, offset pointer, DEVICE_OFFSET): an offset tensor on the kernel's device is read by the kernel
        (no host sync, CUDA-graph safe); an int, or a tensor elsewhere (e.g. a CPU counter), gives host-side keys."""
        if not stochastic:
            return 0, 0, dummy, False
        if isinstance(offset, torch.Tensor) and offset.device == device:
            w1, w2 = device_key_words(seed)
            return _as_int32(w1), _as_int32(w2), offset.reshape(1).to(torch.int64), True
        k1, k2 = derive_keys(seed, offset_value(offset))
        return _as_int32(k1), _as_int32(k2), dummy, False

    def _launch_amax(self, t: torch.Tensor, signs: torch.Tensor | None) -> torch.Tensor:
        rows, cols = t.shape
        out = torch.zeros(1, dtype=torch.int32, device=t.device)  # +0.0; every |x| bit pattern is >= 0
        grid = (_cdiv(rows, tk.A_BLOCK_M) * _cdiv(cols, tk.A_BLOCK_K),)
        with self._device_guard(t.device):
            tk.amax_kernel[grid](
                _bf16_as_bits(t),
                signs if signs is not None else out,
                out,
                rows,
                cols,
                t.stride(0),
                t.stride(1),
                BF16_BITS=t.dtype == torch.bfloat16,
                RHT=signs is not None,
                BLOCK_M=tk.A_BLOCK_M,
                BLOCK_K=tk.A_BLOCK_K,
                num_warps=tk.A_WARPS,
                enable_fp_fusion=False,
            )
        return out.view(torch.float32).reshape(())

    # (block size, packed bytes per block, scale dtype, blocks per program) of the two FP4 formats
    _FP4_LAYOUT = {
        "nvfp4": (BLOCK, 8, torch.float8_e4m3fn, tk.Q_BLOCKS_K),
        "mxfp4": (32, 16, torch.float8_e8m0fnu, tk.MX_BLOCKS_K),
    }

    def _launch_fp4(
        self,
        t: torch.Tensor,
        spec: QuantSpec,
        seed: int,
        offset: int | torch.Tensor,
        signs: torch.Tensor | None,
        values_dtype: torch.dtype | None,
        amax: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """NVFP4 (with the tensor ``amax``) or MXFP4 of the logical (M, K) tensor t in one pass: (packed, scales),
        or (values (M, K), None) when values_dtype (bf16 or fp32) is set. The two kernels share their arguments but
        for NVFP4's amax pointer and tile rows and MXFP4's scale rule."""
        rows, cols = t.shape
        block, block_bytes, scale_dtype, blocks_k = self._FP4_LAYOUT[spec.format]
        nblk = _cdiv(cols, block)
        if values_dtype is None:
            out = torch.empty(rows, nblk * block_bytes, dtype=torch.uint8, device=t.device)
            scales = torch.empty(rows, nblk, dtype=torch.uint8, device=t.device)
        else:
            out = torch.empty(rows, cols, dtype=values_dtype, device=t.device)
            scales = None
        if spec.format == "nvfp4":
            amax_buf = amax.to(device=t.device, dtype=torch.float32).reshape(1)
            kernel, head, dummy = tk.nvfp4_quantize_kernel, (_bf16_as_bits(t), amax_buf), amax_buf
            format_args = {"TILE_ROWS": spec.tile[0], "FOUR_OVER_SIX": spec.four_over_six}
        else:
            kernel, head, dummy = tk.mxfp4_quantize_kernel, (_bf16_as_bits(t),), out
            format_args = {"CEIL_RULE": spec.scale_rule == "ceil"}
        key1, key2, offset_buf, device_offset = self._sr_args(spec.stochastic, seed, offset, t.device, dummy)
        grid = (_cdiv(rows, tk.Q_BLOCK_M) * _cdiv(nblk, blocks_k),)
        with self._device_guard(t.device):
            kernel[grid](
                *head,
                signs if signs is not None else dummy,
                _bf16_as_bits(out),
                scales if scales is not None else dummy,
                rows,
                cols,
                nblk,
                t.stride(0),
                t.stride(1),
                out.stride(0),
                scales.stride(0) if scales is not None else 0,
                key1,
                key2,
                offset_buf,
                BF16_BITS=t.dtype == torch.bfloat16,
                **format_args,
                STOCHASTIC=spec.stochastic,
                DEVICE_OFFSET=device_offset,
                INDEX64=_needs_index64(rows, nblk * block),
                RHT=signs is not None,
                OUT_VALUES=values_dtype is not None,
                OUT_BF16=values_dtype == torch.bfloat16,
                BLOCK_M=tk.Q_BLOCK_M,
                BLOCKS_K=blocks_k,
                num_warps=tk.Q_WARPS,
                enable_fp_fusion=False,
            )
        return (out, None) if scales is None else (out, scales.view(scale_dtype))

    def _launch_fp8(
        self, t: torch.Tensor, tile: tuple[int, int], out_values: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = t.shape
        nblk = _cdiv(cols, 128)
        out = torch.empty(rows, cols, dtype=torch.float32 if out_values else torch.uint8, device=t.device)
        scales = torch.empty(rows, nblk, dtype=torch.float32, device=t.device)
        row_programs = _cdiv(rows, tk.FP8_BLOCK_M if tile[0] == 1 else 128)
        with self._device_guard(t.device):
            tk.fp8_quantize_kernel[(row_programs * nblk,)](
                _bf16_as_bits(t),
                out,
                scales,
                rows,
                cols,
                nblk,
                t.stride(0),
                t.stride(1),
                out.stride(0),
                scales.stride(0),
                BF16_BITS=t.dtype == torch.bfloat16,
                TILE_ROWS=tile[0],
                OUT_VALUES=out_values,
                BLOCK_M=tk.FP8_BLOCK_M,
                num_warps=4,
                enable_fp_fusion=False,
            )
        return out, scales

    def _launch_mxfp8(
        self, t: torch.Tensor, values_dtype: torch.dtype | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """MXFP8 of the logical (M, K) tensor t in one pass: (E4M3 bytes, E8M0 scales), or (values, None)."""
        rows, cols = t.shape
        nblk = _cdiv(cols, 32)
        out_dtype = torch.uint8 if values_dtype is None else values_dtype
        out = torch.empty(rows, cols, dtype=out_dtype, device=t.device)
        scales = torch.empty(rows, nblk, dtype=torch.uint8, device=t.device) if values_dtype is None else None
        grid = (_cdiv(rows, tk.Q_BLOCK_M) * _cdiv(nblk, tk.MX_BLOCKS_K),)
        with self._device_guard(t.device):
            tk.mxfp8_quantize_kernel[grid](
                _bf16_as_bits(t),
                _bf16_as_bits(out),
                scales if scales is not None else out,
                rows,
                cols,
                nblk,
                t.stride(0),
                t.stride(1),
                out.stride(0),
                scales.stride(0) if scales is not None else 0,
                BF16_BITS=t.dtype == torch.bfloat16,
                OUT_VALUES=values_dtype is not None,
                OUT_BF16=values_dtype == torch.bfloat16,
                BLOCK_M=tk.Q_BLOCK_M,
                BLOCKS_K=tk.MX_BLOCKS_K,
                num_warps=tk.Q_WARPS,
                enable_fp_fusion=False,
            )
        if scales is None:
            return out, None
        return out.view(torch.float8_e4m3fn), scales.view(torch.float8_e8m0fnu)

    # -- the kernels of the contract (nvfp4.kernels.contract; semantics: ReferenceBackend) ----------

    def amax_kernel(self, x2d: torch.Tensor) -> torch.Tensor:
        """max|x| as an FP32 0-d tensor (NaN if any NaN), one pass with a grid-wide atomic max."""
        return self._launch_amax(self._operand(x2d, False), None)

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
        """t read in place (never transposed by a copy); NVFP4: the amax pass (of the RHT'd t, recomputed rather
        than stored: re-reading x costs less than writing and re-reading a BF16 intermediate) unless given, then one
        fused pass; MXFP4 and FP8: one pass."""
        t = self._operand(x2d, spec.transpose)
        dev_signs = None if signs is None else self._device_signs(signs, t.device)
        values_dtype = None
        if not spec.packed:
            values_dtype = spec.out_dtype if spec.out_dtype in (torch.bfloat16, torch.float32) else torch.float32
        if spec.format in self._FP4_LAYOUT:
            used = None
            if spec.format == "nvfp4":
                if amax is None:
                    used = self._launch_amax(t, dev_signs)
                else:
                    used = torch.as_tensor(amax).to(device=t.device, dtype=torch.float32).reshape(())
            out, scales = self._launch_fp4(t, spec, int(seed), offset, dev_signs, values_dtype, used)
        elif spec.format == "mxfp8":
            used = None
            out, scales = self._launch_mxfp8(t, values_dtype)
        else:
            used = None
            out, scales = self._launch_fp8(t, spec.tile, out_values=not spec.packed)
            if spec.packed:
                return Quantized(out.view(torch.float8_e4m3fn), scales, None)
            scales = None
        if not spec.packed and out.dtype != spec.out_dtype:
            out = out.to(spec.out_dtype)
        return Quantized(out, scales, used)

    def scaled_values_kernel(
        self, packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
    ) -> torch.Tensor:
        """value(q) × block scale for every (padded) element: (M, ceil(K/16)*16), exact in BF16."""
        native = dtype if dtype in _FLOAT_DTYPES else torch.float32
        rows, nbytes = packed.shape
        nblk = nbytes // 8
        packed = packed.contiguous()
        scale_bytes = scales.view(torch.uint8).to(packed.device).contiguous()
        out = torch.empty(rows, nblk * BLOCK, dtype=native, device=packed.device)
        grid = (_cdiv(rows, tk.Q_BLOCK_M) * _cdiv(nblk, tk.Q_BLOCKS_K),)
        with self._device_guard(packed.device):
            tk.scaled_values_kernel[grid](
                packed,
                scale_bytes,
                out,
                rows,
                nblk,
                packed.stride(0),
                scale_bytes.stride(0),
                out.stride(0),
                BLOCK_M=tk.Q_BLOCK_M,
                BLOCKS_K=tk.Q_BLOCKS_K,
                num_warps=tk.Q_WARPS,
                enable_fp_fusion=False,
            )
        return out if native == dtype else out.to(dtype)
