"""Mechanism probes: what each part of a recipe does to the operands and the gradients, measured on fixed batches.

At CPU scale the paper's ablations move the final loss by less than seed noise; their *mechanisms* show on one
batch (Quartet, Quartet II, FP4-all-the-way). For each recipe and each linear layer the probe measures:

- **operand error** (per GEMM operand, on the operands of the full-precision pass): SQNR, relative MSE, the fraction
  of values that became zero / underflowed / sit at the top code (saturated) / were clamped, block scales that
  underflowed to 0, and each GEMM's output error against the FP32 GEMM of the unquantized operands;
- **gradient fidelity** (per layer, weight gradient and the gradient into the layer's input) of ``draws`` independent
  stochastic-rounding draws of the whole quantized model against the FP32 gradient of the same model on the same
  batch: cosine, alignment ⟨ḡ, g⟩/‖g‖², relative bias ‖E[g_q] − g‖/‖g‖, relative variance and the concentration
  curve ‖mean_k(g_q) − g‖²/‖g‖² with its log-log slope (−1: unbiased; → 0: a bias floor). The same figures against
  the gradient of the *quantized forward* with an exact backward (``backward_only``) isolate the backward pass, which
  is where the paper's stochastic rounding acts;
- **forward/backward weight inconsistency**: ‖Q_fprop(W) − Q_dgrad(W)‖/‖W‖ of the weights the layer really uses
  (exactly 0 with 16×16 tiles).

Statistics of K draws g_1..g_K of a gradient g (``GradientEstimate``): with e₁ = mean_d ‖g_d − g‖² and
e_K = ‖ḡ_K − g‖², E[e₁] = ‖b‖² + tr Σ and E[e_K] = ‖b‖² + tr Σ / K, so tr Σ = (e₁ − e_K)·K/(K − 1) and ‖b‖² = e_K −
tr Σ / K: the bias is reported with the draws' own noise taken out. The curve at k = 1 is e₁ (the mean over draws);
at k > 1 it is the prefix mean of the first k draws (one realisation: for million-element gradients the squared
norm barely fluctuates).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import nvfp4
from nvfp4 import recipes
from nvfp4.convert import _set_submodule, _unwrap, conversion_report, quantized_layers
from nvfp4.formats.fp8 import FP8Tensor
from nvfp4.formats.hadamard import hadamard_matrix, random_hadamard_transform
from nvfp4.formats.mxfp4 import MX_BLOCK, _block_exponents
from nvfp4.formats.nvfp4 import NVFP4Tensor
from nvfp4.linear import Linear, QuantizedOperand, quantize_operand, rht_signs
from nvfp4.recipe import OPERANDS, OperandConfig, Recipe

# The raw matrix each operand quantizes, from a layer's x (tokens × in), W (out × in) and dy (tokens × out).
OPERAND_SOURCES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "fprop_x": lambda x, w, dy: x,
    "fprop_w": lambda x, w, dy: w,
    "dgrad_dy": lambda x, w, dy: dy,
    "dgrad_w": lambda x, w, dy: w.t(),
    "wgrad_dy": lambda x, w, dy: dy.t(),
    "wgrad_x": lambda x, w, dy: x.t(),
}
GEMMS = {"fprop": ("fprop_x", "fprop_w"), "dgrad": ("dgrad_dy", "dgrad_w"), "wgrad": ("wgrad_dy", "wgrad_x")}
MAX_CODE = {"nvfp4": 6.0, "mxfp4": 6.0, "fp8": 448.0}
SQRT3 = math.sqrt(3.0)  # FP4-all-the-way: quantized training stops helping once ||g|| < sqrt(3) x the noise


# -- operand error -------------------------------------------------------------------------------------------------


def _exact_rht(t: torch.Tensor, cfg: OperandConfig, inverse: bool = False) -> torch.Tensor:
    """RHT along the last dim in FP32 without the BF16 rounding of the transform's output (the error reference)."""
    size = cfg.hadamard
    signs = rht_signs(cfg, t.device).float()
    matrix = (signs[:, None] * hadamard_matrix(size).to(t.device).float()) / math.sqrt(size)
    if inverse:
        matrix = matrix.t()
    chunks = t.float().reshape(*t.shape[:-1], t.shape[-1] // size, size)
    return (chunks @ matrix).reshape(t.shape)


def _padded(t: torch.Tensor, cfg: OperandConfig) -> torch.Tensor:
    pad = -t.shape[-1] % cfg.hadamard if cfg.hadamard else 0
    return F.pad(t, (0, pad)) if pad else t


def dequantized(q: QuantizedOperand) -> torch.Tensor:
    """The FP32 values a quantized operand stands for (block and tensor scales applied), in its GEMM's basis."""
    values = q.values().float()
    scale = q.decode_scale
    return values * scale if scale is not None else values


def _block_scales(q: QuantizedOperand, quantizer_input: torch.Tensor, cfg: OperandConfig) -> tuple[torch.Tensor, int]:
    """The decoded block scale of every (row, block) of the operand, and the block length."""
    d = q.data
    if isinstance(d, NVFP4Tensor):
        return d.scales.float() * d.decode_scale, 16
    if isinstance(d, FP8Tensor):
        return d.scales.float(), cfg.tile[1]
    # MXFP4 (its op returns the values only): the power-of-two scales, recomputed from the quantizer's input
    amax = _block_amax(quantizer_input, MX_BLOCK)
    return torch.exp2(_block_exponents(amax, "ceil").float()), MX_BLOCK


def _at_top_code(q: QuantizedOperand, values: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Where the operand holds its format's largest magnitude (E2M1 6, E4M3 448), read off the codes."""
    d = q.data
    if isinstance(d, NVFP4Tensor):
        return (d.codes() & 7) == 7
    if isinstance(d, FP8Tensor):
        return d.data.float().abs() == MAX_CODE["fp8"]
    return (values.abs() == top) & (values != 0)  # MXFP4: value x 2^e, exact


def _block_amax(t: torch.Tensor, block: int) -> torch.Tensor:
    t = t.float().abs()
    t = F.pad(t, (0, -t.shape[-1] % block))
    return t.reshape(t.shape[0], -1, block).amax(dim=-1)


def operand_error(t2d: torch.Tensor, cfg: OperandConfig, *, seed: int = 0, offset: int = 0) -> dict[str, Any]:
    """Error figures of one GEMM operand (rows × K, quantized along K) under ``cfg``.

    The reference is the exact (FP32) RHT of the operand where ``cfg`` has one, so the error is measured in the
    GEMM's basis; the transform is orthogonal, so that is also the error of the back-transformed operand."""
    t2d = t2d.contiguous()
    reference = _padded(t2d.float(), cfg)
    quantizer_input = reference
    if cfg.hadamard:
        quantizer_input = random_hadamard_transform(reference, size=cfg.hadamard, signs=rht_signs(cfg, t2d.device))
        reference = _exact_rht(reference, cfg)
    q = quantize_operand(t2d, cfg, seed=seed, offset=offset, keep_packed=True)
    values = dequantized(q)[:, : reference.shape[1]]
    signal = float(reference.double().square().sum())
    noise = float((values.double() - reference.double()).square().sum())
    result: dict[str, Any] = {
        "format": cfg.format,
        "sqnr_db": _db(signal, noise),
        "relative_mse": noise / signal if signal > 0 else None,
        "zero_fraction": float((values == 0).float().mean()),
        "underflow_fraction": float(((values == 0) & (reference != 0)).float().mean()),
    }
    if not cfg.quantized:
        result.update(saturated_fraction=0.0, clamped_fraction=0.0, block_scale_underflow_fraction=0.0)
        return result
    scales, block = _block_scales(q, quantizer_input, cfg)
    cols = reference.shape[1]
    per_value = scales.repeat_interleave(block, dim=1)[:, :cols]
    top = MAX_CODE[cfg.format] * per_value
    result["saturated_fraction"] = float(_at_top_code(q, values, top)[:, :cols].float().mean())
    result["clamped_fraction"] = float((quantizer_input.float().abs() > top * (1 + 2**-20)).float().mean())
    amax = _block_amax(quantizer_input, block)[:, : scales.shape[1]]
    result["block_scale_underflow_fraction"] = float(((amax > 0) & (scales == 0)).float().mean())
    return result


def gemm_error(
    a: torch.Tensor,
    b: torch.Tensor,
    cfg_a: OperandConfig,
    cfg_b: OperandConfig,
    *,
    seed: int = 0,
    offsets: tuple[int, int] = (0, 1),
) -> float | None:
    """‖Q(a)·Q(b)ᵀ − a·bᵀ‖ / ‖a·bᵀ‖, the FP32 GEMM of the quantized operands against that of the originals."""
    exact = a.float() @ b.float().t()
    qa = dequantized(quantize_operand(a.contiguous(), cfg_a, seed=seed, offset=offsets[0], keep_packed=True))
    qb = dequantized(quantize_operand(b.contiguous(), cfg_b, seed=seed, offset=offsets[1], keep_packed=True))
    cols = min(qa.shape[1], qb.shape[1])
    approx = qa[:, :cols] @ qb[:, :cols].t()
    norm = float(exact.double().norm())
    return float((approx.double() - exact.double()).norm()) / norm if norm > 0 else None


def _db(signal: float, noise: float) -> float | None:
    if signal <= 0:
        return None
    return 10 * math.log10(signal / noise) if noise > 0 else math.inf


# -- gradient statistics -------------------------------------------------------------------------------------------


def concentration_ks(draws: int) -> list[int]:
    """k = 1, 2, 4, … (powers of two below ``draws``) and ``draws`` itself: log-spaced points of the curve."""
    ks, k = [], 1
    while k < draws:
        ks.append(k)
        k *= 2
    return [*ks, draws]


def loglog_slope(ks: list[int], errors: list[float]) -> float | None:
    """Least-squares slope of log(error) against log(k); None if an error is 0 (nothing to fit on a log axis)."""
    if len(ks) < 2 or any(not (e > 0) or not math.isfinite(e) for e in errors):
        return None
    xs, ys = [math.log(k) for k in ks], [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


class GradientEstimate:
    """Running statistics of K quantized estimates of one gradient ``reference`` (see the module doc).

    Holds one running sum the size of the gradient, and per draw two numbers, so any number of draws fits."""

    def __init__(self, reference: torch.Tensor, draws: int):
        if draws < 1:
            raise ValueError("draws must be >= 1")
        self.reference = reference.detach().float()
        self.ref_norm2 = float(self.reference.double().square().sum())
        self.draws = draws
        self.ks = concentration_ks(draws)
        self.total = torch.zeros_like(self.reference, dtype=torch.float64)  # exact enough for any K
        self.count = 0
        self.dots: list[float] = []  # <g_d, g>
        self.norms2: list[float] = []  # ||g_d||^2
        self.errors2: list[float] = []  # ||g_d - g||^2
        self.curve2: dict[int, float] = {}  # ||mean of the first k draws - g||^2

    def add(self, estimate: torch.Tensor) -> None:
        if self.count >= self.draws:
            raise ValueError(f"GradientEstimate got more than its {self.draws} draws")
        e = estimate.detach().float()
        if e.shape != self.reference.shape:
            raise ValueError(f"a draw of shape {tuple(e.shape)} for a gradient of shape {tuple(self.reference.shape)}")
        self.dots.append(float((e.double() * self.reference.double()).sum()))
        self.norms2.append(float(e.double().square().sum()))
        self.errors2.append(float((e.double() - self.reference.double()).square().sum()))
        self.total += e.double()
        self.count += 1
        if self.count in self.ks and self.count > 1:
            self.curve2[self.count] = float((self.total / self.count - self.reference.double()).square().sum())

    def raw(self) -> dict[str, Any]:
        """The sums every figure derives from (figures of several layers together add these up)."""
        if self.count != self.draws:
            raise ValueError(f"GradientEstimate has {self.count} of its {self.draws} draws")
        curve = {1: sum(self.errors2) / self.draws, **self.curve2}
        mean_dot = float((self.total / self.draws * self.reference.double()).sum())
        return {
            "draws": self.draws,
            "ref_norm2": self.ref_norm2,
            "dots": self.dots,
            "norms2": self.norms2,
            "curve2": [curve[k] for k in self.ks],
            "ks": self.ks,
            "mean_dot": mean_dot,
        }

    def result(self) -> dict[str, Any]:
        return gradient_figures([self.raw()])


def gradient_figures(raws: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one gradient, or of several concatenated (e.g. every layer of a model), from ``raw()`` sums."""
    draws, ks = raws[0]["draws"], raws[0]["ks"]
    ref2 = sum(r["ref_norm2"] for r in raws)
    if ref2 == 0:
        return {"gradient_norm": 0.0}
    dots = [sum(r["dots"][d] for r in raws) for d in range(draws)]
    norms2 = [sum(r["norms2"][d] for r in raws) for d in range(draws)]
    curve = [sum(r["curve2"][i] for r in raws) / ref2 for i in range(len(ks))]
    e1, ek = curve[0], curve[-1]
    variance = max(0.0, (e1 - ek) * draws / (draws - 1)) if draws > 1 else 0.0
    bias2 = max(0.0, ek - variance / draws)
    cosines = [dot / math.sqrt(n2 * ref2) if n2 > 0 else 0.0 for dot, n2 in zip(dots, norms2, strict=True)]
    return {
        "gradient_norm": math.sqrt(ref2),
        "draws": draws,
        "cosine": sum(cosines) / draws,
        "alignment": sum(r["mean_dot"] for r in raws) / ref2,
        "relative_error": math.sqrt(e1),  # ||g_q - g|| / ||g|| of one draw (root mean square over draws)
        "relative_bias": math.sqrt(bias2),
        "relative_variance": variance,
        "signal_to_noise": 1 / math.sqrt(e1) if e1 > 0 else math.inf,  # ||g|| / ||g_q - g||, against sqrt(3)
        "concentration": {"k": ks, "error": curve},
        "concentration_slope": loglog_slope(ks, curve) if draws > 1 else None,
    }


# -- the model passes ----------------------------------------------------------------------------------------------


def unconverted_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ``nvfp4.Linear`` turned back into a plain ``nn.Linear``."""
    plain = copy.deepcopy(model)
    for name, layer in quantized_layers(plain):
        _set_submodule(plain, name, _unwrap(layer))
    if hasattr(plain, "_nvfp4_report"):
        del plain._nvfp4_report
    return plain


class _ForwardOnlyQuantized(torch.autograd.Function):
    """y = the quantized forward's output; backward as the exact linear: dx = dy·W, dW = dyᵀ·x (FP32)."""

    @staticmethod
    def forward(ctx, x, weight, bias, y_quantized):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y_quantized

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dy2, x2 = dy.reshape(-1, dy.shape[-1]).float(), x.reshape(-1, x.shape[-1]).float()
        grad_x = (dy2 @ weight.float()).to(x.dtype).reshape(x.shape)
        grad_w = (dy2.t() @ x2).to(weight.dtype)
        grad_b = dy2.sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


class _QuantizedForwardExactBackward(nn.Module):
    """A quantized linear whose backward is exact: the reference that isolates what the backward pass loses."""

    def __init__(self, layer: Linear):
        super().__init__()
        self.layer = layer
        self.weight, self.bias = layer.weight, layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y = self.layer(x)
        return _ForwardOnlyQuantized.apply(x, self.weight, self.bias, y)


class _Capture:
    """Hooks on every linear of a model: its input, its weight, the gradient into its input and at its output."""

    def __init__(self, modules: dict[str, nn.Module], keep_operands: bool):
        self.keep_operands = keep_operands
        self.inputs: dict[str, torch.Tensor] = {}
        self.input_grads: dict[str, torch.Tensor] = {}
        self.output_grads: dict[str, torch.Tensor] = {}
        self.handles = []
        for name, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(self._pre(name)))
            self.handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name: str):
        def hook(module, args):
            x = args[0].view_as(args[0])  # a node of its own: its gradient is this layer's dx alone
            if self.keep_operands:
                self.inputs[name] = x.detach()
            if x.requires_grad:
                x.register_hook(lambda g: self.input_grads.__setitem__(name, g.detach()))
            return (x, *args[1:])

        return hook

    def _post(self, name: str):
        def hook(module, args, output):
            if self.keep_operands and output.requires_grad:
                output.register_hook(lambda g: self.output_grads.__setitem__(name, g.detach()))

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _block_linears(model: nn.Module) -> dict[str, nn.Module]:
    """The linears of the model's blocks (what a recipe may quantize), by name, in model order."""
    from nvfp4.convert import find_blocks

    found = find_blocks(model)
    if found is None:
        raise ValueError("the probe needs a model with a ModuleList of blocks (as nvfp4.convert finds them)")
    prefix = found[0]
    return {
        n: m
        for n, m in model.named_modules()
        if n.startswith(prefix + ".") and (type(m) is nn.Linear or isinstance(m, Linear))
    }


def _block_of(name: str, prefix: str = "blocks") -> int | None:
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == prefix and parts[1].isdigit() else None


def _pass(
    model: nn.Module,
    names: Iterable[str],
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: bool,
    keep_operands: bool = False,
) -> tuple[dict[str, torch.Tensor], _Capture]:
    """One forward + backward; returns the weight gradients of ``names`` and the captured tensors."""
    linears = {n: model.get_submodule(n) for n in names}
    capture = _Capture(linears, keep_operands)
    model.zero_grad(set_to_none=True)
    try:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            _, loss = model(x, y)
        loss.backward()
    finally:
        capture.close()
    grads = {n: m.weight.grad.detach().clone() for n, m in linears.items()}
    model.zero_grad(set_to_none=True)
    return grads, capture


def reference_pass(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], names: list[str] | None = None
) -> tuple[dict[str, torch.Tensor], _Capture]:
    """The FP32 forward + backward of the unconverted model (no autocast): the gradients every recipe is held
    against, and the operands (inputs, output gradients) its quantizers are measured on."""
    names = list(_block_linears(model)) if names is None else names
    return _pass(model, names, batch[0], batch[1], autocast=False, keep_operands=True)


def _operand_active(layer: Linear, operand: str) -> bool:
    """Whether the layer quantizes ``operand`` now (a late switch runs a whole pass in BF16)."""
    return layer.precision["forward" if operand.startswith("fprop") else "backward"] == "recipe"


def _effective_config(layer: Linear, operand: str) -> OperandConfig:
    return layer.recipe.operand(operand) if _operand_active(layer, operand) else OperandConfig("bf16", (1, 1))


def probe_recipe(
    model: nn.Module,
    recipe: str | Recipe,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    draws: int = 32,
    seed: int = 0,
    autocast: bool = True,
    backend: str = "auto",
    operands: bool = True,
    backward_only: bool = True,
    progress: Callable[[int, int], None] | None = None,
    reference: tuple[dict[str, torch.Tensor], _Capture] | None = None,
) -> dict[str, Any]:
    """Probe one recipe on an unconverted FP32 ``model`` and one (x, y) batch; returns the figures per layer.

    ``reference``: the FP32 pass (``reference_pass``), shared between recipes. ``model`` itself is not changed.
    A recipe with a late switch is probed as it trains after the switch. Without any stochastic operand every draw
    is the same gradient (a test checks it), so one pass stands for all ``draws`` (``passes`` 1 in the result)."""
    recipe = recipes.get(recipe)
    if draws < 2:
        raise ValueError(f"--draws must be at least 2 (got {draws}): bias and variance need two draws to tell apart")
    x, y = batch
    names = list(_block_linears(model))
    ref_grads, ref = reference if reference is not None else reference_pass(model, batch, names)
    quantized = copy.deepcopy(model)
    # FP32 GEMM outputs: the probe measures the formats, not the CPU's BF16-output shortcut
    nvfp4.convert(quantized, recipe.replace(exact_gemm=True), seed=seed, backend=backend)
    if recipe.switch is not None:
        nvfp4.set_precision(quantized, recipe.switch.passes, "bf16")
    treatments = {r.name: r.treatment for r in conversion_report(quantized)}
    layers = {n: quantized.get_submodule(n) for n in names}
    qlayers = {n: m for n, m in layers.items() if isinstance(m, Linear)}
    stochastic = any(_effective_config(layer, op).stochastic for layer in qlayers.values() for op in OPERANDS)
    passes = draws if stochastic else 1
    est = {
        kind: {n: GradientEstimate(ref_grads[n] if kind == "weight" else ref.input_grads[n], draws) for n in names}
        for kind in ("weight", "input")
    }
    if backward_only and qlayers:
        # the gradients of the same quantized forward with an exact backward (deterministic: one pass)
        exact_bwd = copy.deepcopy(quantized)
        for n in qlayers:
            _set_submodule(exact_bwd, n, _QuantizedForwardExactBackward(exact_bwd.get_submodule(n)))
        bwd_grads, bwd_cap = _pass(exact_bwd, names, x, y, autocast)
        del exact_bwd
        est["weight_backward_only"] = {n: GradientEstimate(bwd_grads[n], draws) for n in names}
        est["input_backward_only"] = {n: GradientEstimate(bwd_cap.input_grads[n], draws) for n in names}
    for d in range(passes):
        for layer in qlayers.values():
            layer.sr_calls = d
            layer.invalidate_weight_cache()
        grads, cap = _pass(quantized, names, x, y, autocast)
        for _ in range(draws // passes):  # a deterministic recipe: every draw is this one
            for n in names:
                for kind, estimates in est.items():
                    estimates[n].add(grads[n] if kind.startswith("weight") else cap.input_grads[n])
        if progress is not None:
            progress(d + 1, passes)
    result_layers: dict[str, Any] = {}
    for n in names:
        entry: dict[str, Any] = {
            "block": _block_of(n),
            "treatment": treatments.get(n, "bf16"),
            "quantized": n in qlayers,
        }
        for kind in ("weight", "input"):
            figures = est[kind][n].result()
            if f"{kind}_backward_only" in est:
                figures["backward_only"] = est[f"{kind}_backward_only"][n].result()
            entry[f"{kind}_grad"] = figures
        if operands and n in qlayers:
            entry.update(_operand_figures(qlayers[n], ref, n, seed, draws))
        result_layers[n] = entry
    model_figures = {}
    for kind, estimates in est.items():
        quantized_raws = [estimates[n].raw() for n in qlayers]
        model_figures[f"{kind}_grad"] = {
            "all_layers": gradient_figures([e.raw() for e in estimates.values()]),
            "quantized_layers": gradient_figures(quantized_raws) if quantized_raws else None,
        }
    return {
        "recipe": recipe.name,
        "description": recipe.description,
        "stochastic": stochastic,
        "draws": draws,
        "passes": passes,
        "quantized_layers": len(qlayers),
        "layers": result_layers,
        "model": model_figures,
    }


def _operand_figures(layer: Linear, ref: _Capture, name: str, seed: int, draws: int) -> dict[str, Any]:
    """Operand and GEMM errors on the operands of the FP32 pass, the layer's forward/backward weight gap, and each
    backward GEMM as an estimator of its exact product over ``draws`` draws (``gemm_estimates``: the bias of the
    GEMM's own rounding, free of what other layers add)."""
    x = ref.inputs[name].reshape(-1, layer.in_features).float()
    dy = ref.output_grads[name].reshape(-1, layer.out_features).float()
    w = layer.weight.detach().float()
    configs = {op: _effective_config(layer, op) for op in OPERANDS}
    offsets = {op: i for i, op in enumerate(OPERANDS)}
    sources = {op: OPERAND_SOURCES[op](x, w, dy) for op in OPERANDS}
    result: dict[str, Any] = {
        "operands": {op: operand_error(sources[op], configs[op], seed=seed, offset=offsets[op]) for op in OPERANDS},
        "gemms": {
            gemm: {
                "relative_error": gemm_error(
                    sources[a], sources[b], configs[a], configs[b], seed=seed, offsets=(offsets[a], offsets[b])
                )
            }
            for gemm, (a, b) in GEMMS.items()
        },
        "fwd_bwd_weight_difference": fwd_bwd_weight_difference(layer),
        "gemm_estimates": {
            gemm: gemm_estimate(sources[a], sources[b], configs[a], configs[b], draws, seed=seed)
            for gemm, (a, b) in GEMMS.items()
            if gemm != "fprop"
        },
    }
    return result


def gemm_estimate(
    a: torch.Tensor, b: torch.Tensor, cfg_a: OperandConfig, cfg_b: OperandConfig, draws: int, *, seed: int = 0
) -> dict[str, Any]:
    """Q(a)·Q(b)ᵀ as an estimator of a·bᵀ over ``draws`` independent SR draws (one, repeated, without SR)."""
    exact = a.float() @ b.float().t()
    estimate = GradientEstimate(exact, draws)
    stochastic = cfg_a.stochastic or cfg_b.stochastic
    product = None
    for d in range(draws):
        if product is None or stochastic:
            qa = dequantized(quantize_operand(a.contiguous(), cfg_a, seed=seed, offset=2 * d, keep_packed=True))
            qb = dequantized(quantize_operand(b.contiguous(), cfg_b, seed=seed, offset=2 * d + 1, keep_packed=True))
            cols = min(qa.shape[1], qb.shape[1])
            product = qa[:, :cols] @ qb[:, :cols].t()
        estimate.add(product)
    return estimate.result()


def fwd_bwd_weight_difference(layer: Linear) -> float:
    """‖W_fprop − W_dgrad‖ / ‖W‖ for the weights the layer's Fprop and Dgrad GEMMs really use (both undone of any
    RHT, so both stand for W in its own basis). 0 exactly when both GEMMs see the same numbers (16×16 tiles)."""
    w = layer.weight.detach().float()
    layer.invalidate_weight_cache()
    with torch.no_grad():
        fprop = _weight_values(layer, "fprop_w")[:, : layer.in_features]
        dgrad = _weight_values(layer, "dgrad_w")[: layer.in_features, : layer.out_features].t()
    layer.invalidate_weight_cache()
    norm = float(w.double().norm())
    return float((fprop.double() - dgrad.double()).norm()) / norm if norm > 0 else 0.0


def _weight_values(layer: Linear, operand: str) -> torch.Tensor:
    cfg = _effective_config(layer, operand)
    if not cfg.quantized and not cfg.hadamard:  # the GEMM reads the BF16 weight
        w = layer.weight.detach()
        return (w if operand == "fprop_w" else w.t()).to(torch.bfloat16).float()
    values = dequantized(layer._weight_operand(operand))
    if cfg.hadamard:
        values = _exact_rht(values, cfg, inverse=True)
    return values


# -- the driver: nvfp4 probe ---------------------------------------------------------------------------------------


@dataclass
class ProbeConfig:
    """``nvfp4 probe``: mechanism measurements of recipes on a model and a few fixed validation batches."""

    out: str = field(metadata={"help": "output directory: probe.json, report.md and the plots"})
    checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "an `nvfp4 train` run directory (its latest checkpoint) or checkpoint file; "
            "default: fresh weights of --model"
        },
    )
    model: str | None = field(
        default=None, metadata={"help": "model preset for fresh weights (default tiny; with --checkpoint, must match)"}
    )
    n_layer: int | None = field(default=None, metadata={"help": "fresh weights: override the preset's blocks"})
    n_head: int | None = field(default=None, metadata={"help": "fresh weights: override the preset's heads"})
    n_kv_head: int | None = field(default=None, metadata={"help": "fresh weights: override the key/value heads"})
    d_model: int | None = field(default=None, metadata={"help": "fresh weights: override the model width"})
    d_ff: int | None = field(default=None, metadata={"help": "fresh weights: override the MLP width"})
    mlp: str | None = field(default=None, metadata={"help": "fresh weights: override the MLP kind"})
    recipes: list[str] = field(default_factory=lambda: ["nvfp4"])
    draws: int = field(default=32, metadata={"help": "independent stochastic-rounding draws per recipe (>= 2)"})
    batches: int = field(default=1, metadata={"help": "fixed validation batches, probed together as one batch"})
    batch_size: int | None = field(default=None, metadata={"help": "sequences per batch (default: the run's, or 8)"})
    seq_len: int | None = field(default=None, metadata={"help": "tokens per sequence (default: the run's, or 256)"})
    seed: int = field(default=0, metadata={"help": "seeds fresh weights and the stochastic-rounding streams"})
    tokenizer: str = field(default="bpe", metadata={"help": "built-in corpus tokenizer for fresh weights"})
    data: list[str] | None = field(default=None, metadata={"help": "dataset for fresh weights (default: built-in)"})
    autocast: str = field(
        default="bf16",
        metadata={"help": "autocast of the non-quantized ops, as in training", "choices": ("bf16", "none")},
    )
    backend: str = field(default="auto", metadata={"help": "kernel backend (every backend gives the same bits)"})
    device: str = field(
        default="auto", metadata={"help": "auto (cuda if available), cpu or cuda", "choices": ("auto", "cpu", "cuda")}
    )
    operands: bool = field(default=True, metadata={"help": "measure operand and GEMM errors too"})
    overwrite: bool = field(default=False, metadata={"help": "replace the results already in --out"})

    def __post_init__(self) -> None:
        if self.draws < 2:
            raise ValueError(f"--draws must be at least 2 (got {self.draws}): bias and variance need two draws")
        if self.batches < 1:
            raise ValueError(f"--batches must be at least 1 (got {self.batches})")
        self.recipes = expand_recipes(self.recipes)


def expand_recipes(names: Iterable[str]) -> list[str]:
    """Recipe names, with suite names (paper, paper-full, main, quick) expanded; unknown names are an error."""
    from nvfp4.analysis.compare import SUITES

    out: list[str] = []
    for name in names:
        for r in SUITES.get(name, (name,)):
            recipes.get(r)  # ValueError listing the valid names
            if r not in out:
                out.append(r)
    if not out:
        raise ValueError("--recipes needs at least one recipe")
    return out


@dataclass
class ProbeSubject:
    """What is probed: an unconverted FP32 model, its fixed batch and where it came from."""

    model: nn.Module
    batch: tuple[torch.Tensor, torch.Tensor]
    info: dict[str, Any]


def load_subject(config: ProbeConfig) -> ProbeSubject:
    """The model (fresh or from a checkpoint) and the first ``batches`` validation batches of its run's data."""
    from nvfp4.data.loader import val_batches
    from nvfp4.model import config_from_dict, from_config, model_config
    from nvfp4.train import TrainConfig
    from nvfp4.train.checkpoint import resolve_checkpoint
    from nvfp4.train.trainer import load_data

    info: dict[str, Any] = {}
    state = None
    if config.checkpoint is not None:
        path, state = resolve_checkpoint(config.checkpoint)
        run = dict(state["config"])
        config_of_model = config_from_dict(state["model_config"])
        if config.model is not None and config.model != run.get("model"):
            raise ValueError(
                f"{path} holds a {run.get('model')!r} model ({config_of_model.n_layer} blocks, d_model "
                f"{config_of_model.d_model}), not --model {config.model}: drop --model to probe the checkpoint's model"
            )
        info.update(
            source="checkpoint",
            checkpoint=str(path),
            step=state["step"],
            tokens=state["tokens"],
            trained_recipe=state["recipe"]["name"],
            model=run.get("model"),
        )
        train_config = TrainConfig.from_dict({k: v for k, v in run.items() if k in TrainConfig.field_names()})
    else:
        overrides = {
            k: getattr(config, k)
            for k in ("n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "mlp")
            if getattr(config, k) is not None
        }
        train_config = TrainConfig(
            model=config.model or "tiny",
            data=config.data,
            tokenizer=config.tokenizer,
            seed=config.seed,
            seq_len=config.seq_len or 256,
            **overrides,
        )
        info.update(source="fresh", model=train_config.model, step=0, tokens=0)
    batch_size = config.batch_size or (train_config.batch_size if state is not None else 8)
    seq_len = config.seq_len or train_config.seq_len
    data = load_data(train_config)
    if state is None:
        torch.manual_seed(config.seed)
        config_of_model = model_config(train_config.model, vocab_size=data.vocab_size, **train_config.model_overrides())
    if config_of_model.vocab_size != data.vocab_size:
        raise ValueError(f"the model's vocabulary ({config_of_model.vocab_size}) is not its data's ({data.vocab_size})")
    if seq_len > config_of_model.seq_len:
        raise ValueError(f"--seq-len {seq_len} exceeds the model's seq_len {config_of_model.seq_len}")
    model = from_config(config_of_model)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            detail = str(e).splitlines()[0]
            raise ValueError(f"{config.checkpoint}: its weights do not fit its model ({detail})") from None
    model.float()
    xs, ys = zip(*val_batches(data.val, batch_size, seq_len, config.batches), strict=True)
    batch = (torch.cat(xs), torch.cat(ys))
    info.update(
        batch_sequences=int(batch[0].shape[0]),
        seq_len=seq_len,
        batch_tokens=int(batch[1].numel()),
        model_config=dataclasses.asdict(config_of_model),
    )
    return ProbeSubject(model, batch, info)


def run_probe(config: ProbeConfig, command: str | None = None) -> dict[str, Any]:
    """Probe every recipe of ``config``; writes OUT/probe.json, OUT/report.md and the plots; returns the results."""
    import json
    from pathlib import Path

    from nvfp4._io import atomic_write
    from nvfp4._provenance import git_commit, hardware
    from nvfp4.analysis.probe_report import write_probe_plots, write_probe_report

    out = Path(config.out)
    if (out / "probe.json").exists() and not config.overwrite:
        raise ValueError(f"{out / 'probe.json'} exists: choose another --out, or pass --overwrite to replace it")
    started = time.perf_counter()
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device: use --device cpu")
    device = torch.device(
        "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    subject = load_subject(config)
    subject.model.to(device)
    subject.batch = (subject.batch[0].to(device), subject.batch[1].to(device))
    ref = reference_pass(subject.model, subject.batch)
    results: dict[str, Any] = {}
    for i, name in enumerate(config.recipes, 1):
        t0 = time.perf_counter()
        show = _progress_line(f"[{i}/{len(config.recipes)}] {name}")
        results[name] = probe_recipe(
            subject.model,
            name,
            subject.batch,
            draws=config.draws,
            seed=config.seed,
            autocast=config.autocast == "bf16",
            backend=config.backend,
            operands=config.operands,
            progress=show,
            reference=ref,
        )
        results[name]["wall_time_s"] = time.perf_counter() - t0
        figures = results[name]["model"]["weight_grad"]["all_layers"]
        _end_progress(
            f"[{i}/{len(config.recipes)}] {name}: {results[name]['passes']} passes, "
            f"{results[name]['wall_time_s']:.1f} s; weight gradient cosine {figures.get('cosine', 1):.3f}, "
            f"alignment {figures.get('alignment', 1):.3f}"
        )
    meta = {
        **subject.info,
        "draws": config.draws,
        "seed": config.seed,
        "autocast": config.autocast,
        "recipes": config.recipes,
        "git_commit": git_commit(),
        "hardware": hardware(device),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_time_s": time.perf_counter() - started,
        "command": command,
    }
    probe = {"meta": meta, "recipes": results}
    atomic_write(out / "probe.json", json.dumps(_finite(probe), indent=1).encode())
    write_probe_plots(probe, out)
    write_probe_report(probe, out)
    return probe


def _finite(obj: Any) -> Any:
    """JSON without Infinity/NaN: a non-finite float (an exact operand's infinite SQNR) becomes None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _progress_line(prefix: str) -> Callable[[int, int], None]:
    tty = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        if tty:
            print(f"\r{prefix}: pass {done}/{total}", end="", file=sys.stderr, flush=True)

    return show


def _end_progress(text: str) -> None:
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr)
    print(text, flush=True)


# -- during training: nvfp4 train --probe-interval ---------------------------------------------------------------


def training_probe(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    autocast: bool = True,
    seed: int = 0,
    backend: str = "auto",
) -> dict[str, Any]:
    """Cheap per-layer statistics of a converted model as it trains, for ``metrics.jsonl``: each quantized operand's
    SQNR and underflow fraction, and the one-draw gradient noise ‖g_q − g‖/‖g‖ against the FP32 gradient on
    ``batch``. Works on copies: the model, its SR counters and every RNG are left exactly as they were, so a run
    with probes trains bit for bit like one without."""
    layers = dict(quantized_layers(model))
    plain = unconverted_copy(model).float()
    names = list(_block_linears(plain))
    quantized = copy.deepcopy(model).float()  # same recipe, SR seeds, counters and precision (a late switch)
    for layer in quantized_layers(quantized):
        layer[1].recipe = layer[1].recipe.replace(exact_gemm=True)
        layer[1].amax_reducer = None  # no collective: rank 0 probes alone
        layer[1].invalidate_weight_cache()
    for copied in (plain, quantized):
        if hasattr(copied, "activation_checkpointing"):
            copied.activation_checkpointing = False  # nothing to save memory for: no recompute, no replayed counters
    ref_grads, ref = reference_pass(plain, batch, names)
    grads, _ = _pass(quantized, names, batch[0], batch[1], autocast)
    out_layers: dict[str, Any] = {}
    raws = []
    for n in names:
        est = GradientEstimate(ref_grads[n], 1)
        est.add(grads[n])
        raws.append(est.raw())
        figures = est.result()
        entry: dict[str, Any] = {"grad_noise": figures.get("relative_error")}
        layer = layers.get(n)
        if layer is not None:
            x = ref.inputs[n].reshape(-1, layer.in_features).float()
            dy = ref.output_grads[n].reshape(-1, layer.out_features).float()
            w = plain.get_submodule(n).weight.detach().float()
            entry["sqnr_db"], entry["underflow_fraction"] = {}, {}
            for i, op in enumerate(OPERANDS):
                cfg = _effective_config(layer, op)
                if cfg.quantized:
                    e = operand_error(OPERAND_SOURCES[op](x, w, dy), cfg, seed=seed, offset=i)
                    entry["sqnr_db"][op], entry["underflow_fraction"][op] = e["sqnr_db"], e["underflow_fraction"]
        out_layers[n] = entry
    total = gradient_figures(raws)
    return {
        "grad_signal_to_noise": total.get("signal_to_noise"),
        "grad_noise": total.get("relative_error"),
        "layers": _finite(out_layers),
    }
