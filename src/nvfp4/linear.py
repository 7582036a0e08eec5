"""``nvfp4.Linear``: a drop-in ``nn.Linear`` whose three GEMMs run on quantized operands (SPEC §5).

Layering: the module (``Linear``) owns the state — the quantized-weight cache, the stochastic-rounding call
counter (a 0-d tensor on the input's device, so compiled graphs and CUDA graphs read it instead of baking it in,
and a GPU step never syncs on it) and the precision switch — and hands
the autograd function (``_QuantizedLinearFn``) only tensors and one frozen ``_Plan``. The function is stateless:
what backward needs goes through ``save_for_backward`` (the packed 4.5-bit activation too), so saved-tensor hooks,
activation checkpointing and ``torch.compile(fullgraph=True)`` all see it. Under ``no_grad`` only the Fprop
operands are quantized.

Emulation, exact by construction: each operand is quantized along its GEMM's reduction dim
and turned back into "value × block scale" numbers, which are exact in BF16 (FP8 baseline:
FP32); a BF16 matmul accumulates in FP32 and the two FP32 tensor scales are applied to the
FP32 result before the output is rounded once. On CPU this uses ``addmm(alpha=scale)``, which
scales the FP32 accumulator inside the GEMM. The weight-gradient GEMM outputs FP32 when the
recipe's ``exact_gemm`` is True or on CUDA; on CPU it defaults to the scaled accumulator rounded
once to BF16 (as torch's own bf16 autocast does for nn.Linear's dW), because an FP32 matmul
costs 2x here.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nvfp4 import recipes
from nvfp4.formats import fouroversix
from nvfp4.formats.fp8 import FP8Tensor
from nvfp4.formats.hadamard import default_signs, random_hadamard_transform
from nvfp4.formats.mxfp4 import MXFP4Tensor
from nvfp4.formats.nvfp4 import NVFP4Tensor, global_decode_scale, tensor_amax
from nvfp4.formats.rng import derive_keys
from nvfp4.kernels import ops
from nvfp4.recipe import OPERANDS, OperandConfig, Recipe

PRECISIONS = ("recipe", "bf16")
_OPERAND_ID = {name: i for i, name in enumerate(OPERANDS)}
AmaxReducer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class QuantizedOperand:
    """A GEMM operand (rows × K) after quantization: what the GEMM reads and backward keeps."""

    data: NVFP4Tensor | MXFP4Tensor | FP8Tensor | torch.Tensor
    cols: int  # K of the GEMM (after any Hadamard padding)
    decode: torch.Tensor | None = None  # tensor scale of pre-dequantized NVFP4 values (fused path)

    def values(self) -> torch.Tensor:
        """value × block scale: BF16 (exact) for FP4 formats, FP32 for FP8, the tensor itself for BF16."""
        d = self.data
        if isinstance(d, NVFP4Tensor):  # through the custom op, so torch.compile can trace it
            return ops.nvfp4_scaled_values(d.packed, d.scales, d.backend)[:, : self.cols]
        if isinstance(d, MXFP4Tensor):
            return d.scaled_values(torch.bfloat16, padded=True)[:, : self.cols]
        if isinstance(d, FP8Tensor):
            return d.dequantize(torch.float32)
        return d

    @property
    def decode_scale(self) -> torch.Tensor | None:
        if self.decode is not None:
            return self.decode
        return self.data.decode_scale if isinstance(self.data, NVFP4Tensor) else None

    @property
    def nbytes(self) -> int:
        d = self.data
        if isinstance(d, NVFP4Tensor):
            return d.packed.nbytes + d.scales.nbytes + 4
        if isinstance(d, MXFP4Tensor):
            return d.packed.nbytes + d.scales.nbytes
        if isinstance(d, FP8Tensor):
            return d.data.nbytes + d.scales.nbytes
        return d.nbytes

    def transposed_2d(self) -> QuantizedOperand:
        """For a 16x16-tiled (or BF16) operand: the exact transpose, reusing the same bits."""
        return _TransposedOperand(self.data, self.cols, self)


class _TransposedOperand(QuantizedOperand):
    def __init__(self, data, cols, source: QuantizedOperand):
        super().__init__(data, cols, source.decode)
        self.source = source

    def values(self) -> torch.Tensor:
        return self.source.values().t()


_NO_CALL = torch.zeros((), dtype=torch.int64)  # the call counter of a stand-alone quantize_operand: offset as given


def quantize_operand(
    t2d: torch.Tensor,
    cfg: OperandConfig,
    *,
    seed: int = 0,
    offset: int = 0,
    global_amax: torch.Tensor | None = None,
    backend: str = "auto",
    transpose: bool = False,
    keep_packed: bool = False,
) -> QuantizedOperand:
    """Quantize a 2-D operand along its last (reduction) dim as ``cfg`` says.

    ``transpose``: quantize ``t2d.t()`` (the Wgrad operands are x and dy transposed) without a copy
    where the backend can. ``keep_packed``: keep NVFP4 codes + scales (4.5 bits/value, for tensors
    saved for backward) instead of the BF16 GEMM values that the fused path writes directly.
    """
    return _quantize_operand(
        t2d, cfg, ops.signed64(seed), offset, _NO_CALL, global_amax, backend, transpose, keep_packed
    )


def _quantize_operand(
    t2d: torch.Tensor,
    cfg: OperandConfig,
    seed: int,
    stream: int,
    call: torch.Tensor,
    global_amax: torch.Tensor | None,
    backend: str,
    transpose: bool,
    keep_packed: bool,
) -> QuantizedOperand:
    """``quantize_operand`` with the SR offset as (stream, call): offset = stream + OPERAND_COUNT * call."""
    if cfg.format == "nvfp4" and (cfg.hadamard is None or cfg.tile == (1, 16)):
        return _quantize_nvfp4_operand(t2d, cfg, seed, stream, call, global_amax, backend, transpose, keep_packed)
    if cfg.format == "mxfp4" and cfg.quantized:
        return _quantize_mxfp4_operand(t2d, cfg, seed, stream, call, backend, transpose)
    if cfg.format == "fp8" and not cfg.hadamard:
        return _quantize_fp8_operand(t2d, cfg, backend, transpose, keep_packed)
    if cfg.format == "mxfp8":  # no RHT (OperandConfig refuses one): TE's MXFP8 has none
        values = ops.mxfp8_values(_fused_input(t2d, transpose, None), transpose, backend)
        return QuantizedOperand(values, values.shape[1])
    if transpose:
        t2d = t2d.t().contiguous()
    if not cfg.quantized and not cfg.hadamard:
        return QuantizedOperand(t2d.to(torch.bfloat16), t2d.shape[1])
    cols = t2d.shape[1]
    if cfg.hadamard:
        size = cfg.hadamard
        padded = math.ceil(cols / size) * size
        if padded != cols:
            t2d = F.pad(t2d, (0, padded - cols))
        cols = padded
        t2d = random_hadamard_transform(t2d, dim=-1, size=size, signs=rht_signs(cfg, t2d.device))
    if not cfg.quantized:  # RHT alone (a BF16 operand): used to check that the transform cancels
        return QuantizedOperand(t2d, cols)
    if cfg.format == "nvfp4":
        t2d = _fused_input(t2d, False, None)
        packed, scales, amax = ops.nvfp4_packed(
            t2d, global_amax, cfg.tile[0], cfg.stochastic, seed, stream, call, False, None, backend
        )
        return QuantizedOperand(NVFP4Tensor(packed, scales, amax, t2d.shape, cfg.tile, backend), cols)
    # fp8 with a Hadamard transform (MXFP4 always takes its fused path)
    data, scales = ops.fp8_packed(_fused_input(t2d, False, None), cfg.tile[0], cfg.tile[1], False, backend)
    return QuantizedOperand(FP8Tensor(data, scales, t2d.shape, cfg.tile), cols)


def rht_signs(cfg: OperandConfig, device: torch.device) -> torch.Tensor | None:
    """The RHT's sign vector for this operand (None without an RHT): the fixed default, or all +1 when the recipe
    turns the sign randomisation off. Cached per device, so a training step never copies it to a GPU."""
    if not cfg.hadamard:
        return None
    if torch.compiler.is_compiling():  # a constant of the graph (a cache cannot be traced)
        return _make_signs(cfg.hadamard, cfg.random_signs, torch.device(device))
    return _device_signs(cfg.hadamard, cfg.random_signs, torch.device(device))


def _make_signs(size: int, random_signs: bool, device: torch.device) -> torch.Tensor:
    signs = default_signs(size) if random_signs else torch.ones(size)
    return signs.to(device)


_device_signs = functools.cache(_make_signs)


def _fused_input(t2d: torch.Tensor, transpose: bool, hadamard: int | None) -> torch.Tensor:
    """The input of a fused backend op: a float dtype the kernels read, and, for an RHT, the logical last dim
    (dim 0 when ``transpose``) zero-padded to a multiple of the transform size (zeros do not change the GEMM)."""
    if t2d.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        t2d = t2d.float()
    if hadamard:
        pad = -t2d.shape[0 if transpose else 1] % hadamard
        if pad:
            t2d = F.pad(t2d, (0, 0, 0, pad) if transpose else (0, pad))
    return t2d


def _quantize_nvfp4_operand(
    t2d: torch.Tensor,
    cfg: OperandConfig,
    seed: int,
    stream: int,
    call: torch.Tensor,
    global_amax: torch.Tensor | None,
    backend: str,
    transpose: bool,
    keep_packed: bool,
) -> QuantizedOperand:
    """NVFP4 through the backend's fused ops: (RHT +) quantize (+ dequantize to BF16) in one pass."""
    t2d = _fused_input(t2d, transpose, cfg.hadamard)
    signs = rht_signs(cfg, t2d.device)
    if signs is not None and cfg.hadamard != 16:
        # the kernels fuse the 16-point RHT only; other sizes are transformed here (to BF16, as the fused one rounds)
        t2d = random_hadamard_transform(t2d.t() if transpose else t2d, dim=-1, size=cfg.hadamard, signs=signs)
        signs, transpose = None, False
    rows, cols = (t2d.shape[1], t2d.shape[0]) if transpose else t2d.shape
    amax = None if global_amax is None else global_amax.to(torch.float32)
    four_over_six = cfg.four_over_six
    numerator = fouroversix.tensor_scale_numerator(four_over_six, cfg.stochastic)
    if keep_packed:
        packed, scales, amax = ops.nvfp4_packed(
            t2d, amax, cfg.tile[0], cfg.stochastic, seed, stream, call, transpose, signs, backend, four_over_six
        )
        q = NVFP4Tensor(packed, scales, amax, torch.Size((rows, cols)), cfg.tile, backend, numerator)
        return QuantizedOperand(q, cols)
    values, amax = ops.nvfp4_values(
        t2d, amax, cfg.tile[0], cfg.stochastic, seed, stream, call, transpose, signs, backend, four_over_six
    )
    return QuantizedOperand(values, cols, decode=global_decode_scale(amax, numerator))


def _quantize_mxfp4_operand(
    t2d: torch.Tensor, cfg: OperandConfig, seed: int, stream: int, call: torch.Tensor, backend: str, transpose: bool
) -> QuantizedOperand:
    """MXFP4 through the backend's fused op: (RHT +) quantize + dequantize to BF16 in one pass.

    MXFP4 has no tensor scale, so the BF16 values are the whole operand; they are kept as such for backward too
    (2 bytes/value rather than 4.25 bits: the CPU emulation trades that memory for one pass instead of three).
    """
    t2d = _fused_input(t2d, transpose, cfg.hadamard)
    signs = rht_signs(cfg, t2d.device)
    values = ops.mxfp4_values(t2d, cfg.stochastic, seed, stream, call, transpose, signs, backend)
    return QuantizedOperand(values, values.shape[1])


def _quantize_fp8_operand(
    t2d: torch.Tensor, cfg: OperandConfig, backend: str, transpose: bool, keep_packed: bool
) -> QuantizedOperand:
    """FP8 through the backend: the FP32 GEMM operand in one pass, or (keep_packed, for backward) E4M3 codes +
    scales (1 byte/value). E4M3 × FP32 scale is not exact in BF16, so FP8 GEMMs run in FP32."""
    t2d = _fused_input(t2d, transpose, None)
    rows, cols = (t2d.shape[1], t2d.shape[0]) if transpose else t2d.shape
    if keep_packed:
        data, scales = ops.fp8_packed(t2d, cfg.tile[0], cfg.tile[1], transpose, backend)
        return QuantizedOperand(FP8Tensor(data, scales, torch.Size((rows, cols)), cfg.tile), cols)
    return QuantizedOperand(ops.fp8_values(t2d, cfg.tile[0], cfg.tile[1], transpose, backend), cols)


def emulated_gemm(
    a: QuantizedOperand, b: QuantizedOperand, out_dtype: torch.dtype, exact: bool | None = None
) -> torch.Tensor:
    """a · bᵀ with FP32 accumulation and the tensor scales applied to the FP32 result."""
    av, bv = a.values(), b.values()
    scales = [s for s in (a.decode_scale, b.decode_scale) if s is not None]
    scale = scales[0] * scales[1] if len(scales) == 2 else (scales[0] if scales else None)
    on_cuda = av.is_cuda
    if exact is None:
        exact = on_cuda
    if av.dtype == torch.float32 or bv.dtype == torch.float32:
        acc = av.float() @ bv.float().t()
    elif on_cuda and exact:
        acc = torch.mm(av, bv.t(), out_dtype=torch.float32)
    elif out_dtype != torch.float32 or not exact:
        # The CPU BF16 GEMM applies the scale to its FP32 accumulator, then rounds once to BF16: exact for BF16
        # outputs (SPEC §2); for the FP32 weight gradient it is one BF16 rounding. (A custom op under compile.)
        return ops.cpu_scaled_mm(av, bv, scale, out_dtype)
    else:
        acc = av.float() @ bv.float().t()
    if scale is not None:
        acc = acc * scale
    return acc.to(out_dtype)


# -- the autograd function: stateless, tensors in, tensors saved ------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Everything the autograd function needs besides tensors: hashable, so a compiled graph treats it as a
    constant (one per layer, not one per call)."""

    recipe: Recipe
    seed: int  # the layer's SR seed as a signed int64 (ops.signed64)
    rank: int  # data-parallel rank, part of the activation/gradient SR streams
    backend: str
    out_dtype: torch.dtype
    quantize_fwd: bool
    quantize_bwd: bool

    def quantize(self, t2d, operand, call, global_amax=None, *, transpose=False, keep_packed=False) -> QuantizedOperand:
        cfg = self.recipe.operand(operand)
        stream = _sr_stream(operand, self.rank)
        return _quantize_operand(t2d, cfg, self.seed, stream, call, global_amax, self.backend, transpose, keep_packed)


def _sr_stream(operand: str, rank: int) -> int:
    """The constant part of an operand's SR offset: unique per operand and (for activations and gradients)
    data-parallel rank; weight streams ignore the rank so every rank quantizes W alike."""
    rank = 0 if operand in ("fprop_w", "dgrad_w") else rank
    return (rank << 48) | _OPERAND_ID[operand]


def _fprop(x2, weight, bias, wq: QuantizedOperand | None, call: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """y = x · Wᵀ (+ b) for 2-D x: on quantized operands when the plan quantizes the forward (wq is then the
    quantized weight), else as a BF16 GEMM."""
    if plan.quantize_fwd:
        y = emulated_gemm(plan.quantize(x2, "fprop_x", call), wq, plan.out_dtype, plan.recipe.exact_gemm)
    else:
        y = (x2.to(torch.bfloat16) @ weight.to(torch.bfloat16).t()).to(plan.out_dtype)
    return y if bias is None else y + bias.to(y.dtype)


def _saved_tensors(q: QuantizedOperand) -> tuple[str, tuple[torch.Tensor, ...], tuple]:
    """A saved operand as (kind, tensors for save_for_backward, plain metadata)."""
    d = q.data
    if isinstance(d, NVFP4Tensor):
        meta = (tuple(d.shape), d.tile, d.backend, q.cols, d.encode_numerator)
        return "nvfp4", (d.packed, d.scales, d.global_amax), meta
    if isinstance(d, FP8Tensor):
        return "fp8", (d.data, d.scales), (tuple(d.shape), d.tile, q.cols)
    return "values", (d, q.decode), (q.cols,)


def _restore_saved(kind: str, tensors: tuple[torch.Tensor, ...], meta: tuple) -> QuantizedOperand:
    if kind == "nvfp4":
        shape, tile, backend, cols, numerator = meta
        q = NVFP4Tensor(tensors[0], tensors[1], tensors[2], torch.Size(shape), tile, backend, numerator)
        return QuantizedOperand(q, cols)
    if kind == "fp8":
        shape, tile, cols = meta
        return QuantizedOperand(FP8Tensor(tensors[0], tensors[1], torch.Size(shape), tile), cols)
    return QuantizedOperand(tensors[0], meta[0], tensors[1])


class _QuantizedLinearFn(torch.autograd.Function):
    """y = x Wᵀ (+ b) on quantized operands. Receives the quantized weight operands (from the module's cache) and
    the SR call counter as tensors; keeps only tensors: W, its Dgrad operand, the counter and the quantized
    (RHT'd, ~4.5-bit) xᵀ that Wgrad needs."""

    @staticmethod
    def forward(ctx, x, weight, bias, w_fprop, w_fprop_decode, w_dgrad, w_dgrad_decode, call, plan: _Plan):
        x2 = x.reshape(-1, x.shape[-1])
        wq = QuantizedOperand(w_fprop, w_fprop.shape[1], w_fprop_decode) if plan.quantize_fwd else None
        y = _fprop(x2, weight, bias, wq, call, plan)
        ctx.plan, ctx.x_shape, ctx.x_dtype, ctx.has_bias = plan, x.shape, x.dtype, bias is not None
        if plan.quantize_bwd:
            kind, tensors, meta = _saved_tensors(plan.quantize(x2, "wgrad_x", call, transpose=True, keep_packed=True))
            ctx.saved_kind, ctx.saved_meta = kind, meta
            ctx.save_for_backward(weight, w_dgrad, w_dgrad_decode, call, *tensors)
        else:
            ctx.save_for_backward(weight, x2.to(torch.bfloat16))
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        plan = ctx.plan
        dy2 = grad_out.reshape(-1, grad_out.shape[-1])
        exact = plan.recipe.exact_gemm
        grad_x = grad_w = grad_b = None
        if plan.quantize_bwd:
            weight, w_dgrad, w_dgrad_decode, call, *saved = ctx.saved_tensors
            if ctx.needs_input_grad[0]:
                dyq = plan.quantize(dy2, "dgrad_dy", call)
                wq = QuantizedOperand(w_dgrad, w_dgrad.shape[1], w_dgrad_decode)
                grad_x = emulated_gemm(dyq, wq, ctx.x_dtype, exact).reshape(ctx.x_shape)
            if ctx.needs_input_grad[1]:
                dytq = plan.quantize(dy2, "wgrad_dy", call, transpose=True)
                xq = _restore_saved(ctx.saved_kind, tuple(saved), ctx.saved_meta)
                grad_w = emulated_gemm(dytq, xq, torch.float32, exact).to(weight.dtype)
        else:
            weight, x_bf16 = ctx.saved_tensors
            dy_bf16 = dy2.to(torch.bfloat16)
            if ctx.needs_input_grad[0]:
                grad_x = (dy_bf16 @ weight.to(torch.bfloat16)).to(ctx.x_dtype).reshape(ctx.x_shape)
            if ctx.needs_input_grad[1]:
                grad_w = (dy_bf16.t() @ x_bf16).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = dy2.float().sum(0)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


class Linear(nn.Linear):
    """Drop-in ``nn.Linear`` (same parameters and state_dict keys) running a quantized recipe.

    The FP32 master weight is quantized once per optimizer step (cached until its version
    counter changes) and reused for Fprop, Dgrad and every micro-batch. Stochastic-rounding
    bits come from (``sr_seed``, call counter, operand), so runs reproduce and resume exactly.
    Under ``torch.compile`` the weight is quantized inside the graph on every call instead (same bits; a
    recipe with SR on weights then draws new bits per micro-batch).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        recipe: str | Recipe = "nvfp4",
        seed: int = 0,
        backend: str = "auto",
    ):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._setup(recipe, seed, backend)

    def _setup(self, recipe: str | Recipe, seed: int, backend: str) -> None:
        self.recipe = recipes.get(recipe)
        self.sr_seed = int(seed)
        # The call counter: a 0-d int64 tensor (not a buffer: it stays out of the state_dict, which remains
        # nn.Linear's). On the CPU for CPU inputs; on the GPU for GPU inputs (see _next_call).
        self._sr_counter = torch.zeros((), dtype=torch.int64)
        self.backend = backend
        self.precision = {"forward": "recipe", "backward": "recipe"}
        self.amax_reducer: AmaxReducer | None = None
        self.sr_rank = 0  # data-parallel rank: decorrelates SR noise of activations/gradients across ranks
        self._weight_cache: dict[str, tuple[tuple, QuantizedOperand]] = {}

    @property
    def sr_calls(self) -> int:
        """How many forward calls this layer has made (the SR stream position; saved with checkpoints)."""
        return int(self._sr_counter)

    @sr_calls.setter
    def sr_calls(self, value: int) -> None:
        self._sr_counter.fill_(int(value))

    def invalidate_weight_cache(self) -> None:
        """Forget the quantized weight. The cache is keyed on the weight's version counter and address,
        which catches in-place optimizer steps; call this when weights change behind autograd's back
        (e.g. FSDP2 re-gathering into the same storage)."""
        self._weight_cache.clear()

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, recipe: str | Recipe = "nvfp4", *, seed: int = 0, backend: str = "auto"
    ) -> Linear:
        """Wrap an existing ``nn.Linear``, sharing its Parameter objects (no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        new._setup(recipe, seed, backend)
        return new

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe.name}, precision={self.precision}"

    # -- the pieces the forward computes for the autograd function -----------------------------
    def _plan(self, out_dtype: torch.dtype, quantize_fwd: bool, quantize_bwd: bool) -> _Plan:
        return _Plan(
            self.recipe, ops.signed64(self.sr_seed), self.sr_rank, self.backend, out_dtype, quantize_fwd, quantize_bwd
        )

    def _stream(self, operand: str, call: int) -> tuple[int, int]:
        """(seed, offset) of an operand's SR stream at forward call ``call``."""
        return self.sr_seed, ops.sr_offset(_sr_stream(operand, self.sr_rank), call)

    def _next_call(self, device: torch.device) -> torch.Tensor:
        """This call's counter value (a new 0-d int64 tensor), advancing the counter.

        On a GPU the counter lives on the input's device (moved there once, at the first call): the Triton kernels
        read the SR offset from device memory, so a step never syncs and a captured CUDA graph replays with the
        counter advancing. On the CPU it stays a CPU tensor."""
        if device.type == "cuda" and self._sr_counter.device != device:
            self._sr_counter = self._sr_counter.to(device)
        call = self._sr_counter.clone()
        self._sr_counter.add_(1)
        return call

    def _weight_operand(self, operand: str) -> QuantizedOperand:
        """The quantized weight for Fprop ("fprop_w") or Dgrad ("dgrad_w"), cached per weight version in eager mode.

        Under torch.compile the weight is quantized in the graph (Python-side caches cannot be traced)."""
        w = self.weight
        cfg = self.recipe.operand(operand)
        compiling = torch.compiler.is_compiling()
        if not compiling:
            key = (w._version, w.data_ptr(), w.dtype, cfg, id(self.amax_reducer))
            cached = self._weight_cache.get(operand)
            if cached is not None and cached[0] == key:
                return cached[1]
        square_tiles = cfg.tile[0] == cfg.tile[1] and cfg.format in ("nvfp4", "fp8")
        shares_fprop_bits = cfg == self.recipe.fprop_w and (square_tiles or not cfg.quantized)
        if operand == "dgrad_w" and shares_fprop_bits and not cfg.hadamard:
            # Square tiles (NVFP4 16x16, FP8 128x128): quantize(W)ᵀ == quantize(Wᵀ) bit for bit (SPEC §2), so Dgrad
            # reuses Fprop's W.
            result = self._weight_operand("fprop_w").transposed_2d()
        else:
            w2 = w.detach()
            amax = None
            if self.amax_reducer is not None and cfg.format == "nvfp4":
                amax = self.amax_reducer(tensor_amax(w2))
            transpose = operand == "dgrad_w"  # Dgrad reduces over `out`: quantize Wᵀ
            plan = self._plan(torch.float32, True, True)
            result = plan.quantize(w2, operand, self._sr_counter.clone(), amax, transpose=transpose)
            result = QuantizedOperand(result.values(), result.cols, result.decode_scale)  # the GEMM operand
        if not compiling:
            self._weight_cache[operand] = (key, result)
        return result

    # -- forward -----------------------------------------------------------------------------
    def _passes_quantized(self) -> tuple[bool, bool]:
        r = self.recipe
        fwd = self.precision["forward"] == "recipe" and (r.fprop_x.quantized or r.fprop_w.quantized)
        bwd = self.precision["backward"] == "recipe" and any(
            r.operand(o).quantized for o in ("dgrad_dy", "dgrad_w", "wgrad_dy", "wgrad_x")
        )
        return fwd, bwd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantize_fwd, quantize_bwd = self._passes_quantized()
        if not (quantize_fwd or quantize_bwd):
            return F.linear(x, self.weight, self.bias)
        if not x.is_floating_point():  # nn.Linear raises too: a quantized integer GEMM would silently truncate
            raise RuntimeError(f"nvfp4.Linear needs a floating-point input, got {x.dtype}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features on its last dim, this layer expects {self.in_features}")
        if x.numel() == 0:  # an empty batch: nothing to quantize; nn.Linear's empty output and gradients
            return F.linear(x, self.weight, self.bias)
        device_type = x.device.type
        autocast_on = torch.is_autocast_enabled(device_type)
        out_dtype = torch.get_autocast_dtype(device_type) if autocast_on else x.dtype
        call = self._next_call(x.device)
        grad_needed = torch.is_grad_enabled() and (
            x.requires_grad or self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        )
        with torch.autocast(device_type, enabled=False):
            if not grad_needed:  # inference: the Fprop GEMM alone, no backward operand is computed
                return self._forward_only(x, call, self._plan(out_dtype, quantize_fwd, False))
            plan = self._plan(out_dtype, quantize_fwd, quantize_bwd)
            w_fprop = self._weight_operand("fprop_w") if quantize_fwd else None
            w_dgrad = self._weight_operand("dgrad_w") if quantize_bwd else None
            return _QuantizedLinearFn.apply(
                x,
                self.weight,
                self.bias,
                None if w_fprop is None else w_fprop.values(),
                None if w_fprop is None else w_fprop.decode_scale,
                None if w_dgrad is None else w_dgrad.values(),
                None if w_dgrad is None else w_dgrad.decode_scale,
                call,
                plan,
            )

    def _forward_only(self, x: torch.Tensor, call: torch.Tensor, plan: _Plan) -> torch.Tensor:
        wq = self._weight_operand("fprop_w") if plan.quantize_fwd else None
        y = _fprop(x.reshape(-1, x.shape[-1]), self.weight, self.bias, wq, call, plan)
        return y.reshape(*x.shape[:-1], y.shape[-1])


# -- activation checkpointing --------------------------------------------------------------------------------------


def checkpoint_context(
    module: nn.Module,
) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """A ``context_fn`` for ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: the recompute replays the
    SR call counters of the ``nvfp4.Linear`` layers in ``module`` from where the original forward started, as
    checkpoint replays torch's RNG, so a run with activation checkpointing draws the same bits as one without.

        checkpoint(block, x, use_reentrant=False, context_fn=functools.partial(nvfp4.checkpoint_context, block))
    """
    layers = [m for m in module.modules() if isinstance(m, Linear)]
    start: list[int] = []

    # Counter values are kept as tensor copies, never read as ints: on a GPU that would sync every block.
    @contextlib.contextmanager
    def forward() -> Iterator[None]:
        start[:] = [layer._sr_counter.clone() for layer in layers]
        yield

    @contextlib.contextmanager
    def recompute() -> Iterator[None]:
        now = [layer._sr_counter.clone() for layer in layers]
        for layer, value in zip(layers, start, strict=True):
            layer._sr_counter.copy_(value)
        try:
            yield
        finally:
            for layer, value in zip(layers, now, strict=True):
                layer._sr_counter.copy_(value)

    return forward(), recompute()


def layer_seed(model_seed: int, layer_index: int) -> int:
    """A per-layer SR seed derived from the model's seed (distinct streams for every layer)."""
    k1, k2 = derive_keys(model_seed, layer_index)
    return (k1 << 32) | k2
