"""nvfp4.Linear against independent float64 references of what each GEMM must compute (SPEC §5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nvfp4
from nvfp4.formats.hadamard import random_hadamard_transform
from nvfp4.formats.nvfp4 import global_decode_scale
from nvfp4.linear import Linear, emulated_gemm, quantize_operand
from nvfp4.quantize import quantize_fp8_blockwise, quantize_mxfp4, quantize_mxfp8, quantize_nvfp4
from nvfp4.recipe import OperandConfig

QUANTIZED_RECIPES = [n for n in nvfp4.recipes.names() if nvfp4.recipes.get(n).quantized]


def _layer(recipe: str, in_f: int = 64, out_f: int = 48, bias: bool = False, seed: int = 0) -> Linear:
    torch.manual_seed(seed)
    return Linear(in_f, out_f, bias=bias, recipe=recipe, seed=1234)


def _dequant_reference(t: torch.Tensor, cfg: OperandConfig, seed: int, offset: int) -> torch.Tensor:
    """Quantize → dequantize in float64 with the public quantizers (Hadamard padding like the layer)."""
    t = t.float()
    if cfg.hadamard:
        pad = -t.shape[1] % cfg.hadamard
        signs = None if cfg.random_signs else torch.ones(cfg.hadamard)  # None = the default sign vector
        t = random_hadamard_transform(torch.nn.functional.pad(t, (0, pad)), size=cfg.hadamard, signs=signs).float()
    if cfg.format == "nvfp4":
        q = quantize_nvfp4(t, cfg.tile, cfg.stochastic, seed, offset=offset, four_over_six=cfg.four_over_six)
        return q.dequantize(torch.float64)
    if cfg.format == "mxfp4":
        return quantize_mxfp4(t, cfg.stochastic, seed, offset=offset).dequantize(torch.float64)
    if cfg.format == "fp8":
        return quantize_fp8_blockwise(t, cfg.tile).dequantize(torch.float64)
    if cfg.format == "mxfp8":
        return quantize_mxfp8(t).dequantize(torch.float64)
    return t.to(torch.bfloat16).double()


def _assert_within_bf16_rounding(got: torch.Tensor, ref64: torch.Tensor, ulps: float = 1.0) -> None:
    ulp = torch.maximum(ref64.abs(), torch.tensor(1e-30, dtype=torch.float64)) * 2.0**-8
    err = (got.double() - ref64).abs()
    assert bool((err <= ulps * ulp + 1e-6 * ref64.abs().max()).all()), f"max err/ulp {float((err / ulp).max())}"


def test_bf16_recipe_equals_nn_linear_exactly():
    torch.manual_seed(0)
    ref = nn.Linear(64, 48)
    layer = Linear.from_linear(nn.Linear(64, 48), "bf16")
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(5, 7, 64)
    for autocast in (False, True):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ya, yb = ref(xa), layer(xb)
        assert torch.equal(ya, yb)
        ya.float().sum().backward()
        yb.float().sum().backward()
        assert torch.equal(xa.grad, xb.grad)
        assert torch.equal(ref.weight.grad, layer.weight.grad)
        assert torch.equal(ref.bias.grad, layer.bias.grad)
        ref.zero_grad()
        layer.zero_grad()


def test_loads_nn_linear_checkpoint_and_keeps_state_dict_keys():
    ref = nn.Linear(32, 16)
    layer = Linear(32, 16, recipe="nvfp4")
    layer.load_state_dict(ref.state_dict())
    assert set(layer.state_dict()) == {"weight", "bias"}
    assert torch.equal(layer.weight, ref.weight)


@pytest.mark.parametrize("recipe", QUANTIZED_RECIPES)
def test_forward_equals_float64_reference(recipe):
    layer = _layer(recipe)
    r = layer.recipe
    x = torch.randn(40, 64) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    seed, offset = layer._stream("fprop_x", 0)
    xq = _dequant_reference(x, r.fprop_x, seed, offset)
    wq = _dequant_reference(layer.weight.detach(), r.fprop_w, seed, layer._stream("fprop_w", 1)[1])
    _assert_within_bf16_rounding(y, xq @ wq.t(), ulps=1.0 if r.fprop_x.format == "nvfp4" else 2.0)


def test_dgrad_reuses_the_bit_identical_2d_weight():
    layer = _layer("nvfp4")
    w_fprop = layer._weight_operand("fprop_w").values()
    w_dgrad = layer._weight_operand("dgrad_w").values()
    assert torch.equal(w_dgrad, w_fprop.t())
    # ... and equals quantizing Wᵀ with 16x16 tiles directly (SPEC §2).
    direct = quantize_nvfp4(layer.weight.detach().t().contiguous(), (16, 16)).scaled_values(torch.bfloat16)
    assert torch.equal(direct, w_dgrad)
    # FP8's 128x128 weight tiles are square too: Dgrad reuses Fprop's values, equal to quantizing Wᵀ directly
    layer = _layer("fp8", in_f=200, out_f=136)
    w_dgrad = layer._weight_operand("dgrad_w")
    assert w_dgrad.values().data_ptr() == layer._weight_operand("fprop_w").values().data_ptr()
    direct = quantize_fp8_blockwise(layer.weight.detach().t().contiguous(), (128, 128)).dequantize(torch.float32)
    assert torch.equal(direct, w_dgrad.values())


BACKWARD_RECIPES = ["nvfp4", "nvfp4-no-2d", "nvfp4-rht4", "nvfp4-rht-no-signs", "fp8", "mxfp4", "mxfp8", "nvfp4-4over6"]


@pytest.mark.parametrize("recipe", BACKWARD_RECIPES)
def test_backward_equals_float64_reference(recipe):
    layer = _layer(recipe)
    r = layer.recipe
    x = (torch.randn(48, 64) * 2).requires_grad_()
    dy = torch.randn(48, 48, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.backward(dy)
    seed = layer.sr_seed
    dyq = _dequant_reference(dy, r.dgrad_dy, seed, layer._stream("dgrad_dy", 0)[1])
    wt = layer.weight.detach().t().contiguous()
    if r.dgrad_w.tile == (16, 16) or r.dgrad_w.tile == (128, 128):
        wq_t = _dequant_reference(layer.weight.detach(), r.dgrad_w, seed, 0).t()
    else:
        wq_t = _dequant_reference(wt, r.dgrad_w, seed, 0)
    _assert_within_bf16_rounding(x.grad, dyq @ wq_t.t(), ulps=2.0)
    # Wgrad: both operands along tokens (RHT'd where the recipe says), FP32 output.
    dytq = _dequant_reference(dy.t().contiguous(), r.wgrad_dy, seed, layer._stream("wgrad_dy", 0)[1])
    xtq = _dequant_reference(x.detach().t().contiguous(), r.wgrad_x, seed, layer._stream("wgrad_x", 0)[1])
    ref = dytq @ xtq.t()
    assert layer.weight.grad.dtype == torch.float32
    # CPU default: BF16-rounded FP32 accumulator (see nvfp4.linear docstring) → within 1 bf16 ulp.
    _assert_within_bf16_rounding(layer.weight.grad, ref, ulps=1.0 if r.wgrad_x.format != "fp8" else 2.0)


def test_exact_gemm_gives_fp32_weight_gradient():
    layer = _layer("nvfp4")
    layer.recipe = layer.recipe.replace(exact_gemm=True)
    x = torch.randn(32, 64).requires_grad_()
    dy = torch.randn(32, 48)
    layer(x).backward(dy)
    r, seed = layer.recipe, layer.sr_seed
    dytq = _dequant_reference(dy.t().contiguous(), r.wgrad_dy, seed, layer._stream("wgrad_dy", 0)[1])
    xtq = _dequant_reference(x.detach().t().contiguous(), r.wgrad_x, seed, layer._stream("wgrad_x", 0)[1])
    ref = dytq @ xtq.t()
    rel = (layer.weight.grad.double() - ref).abs().max() / ref.abs().max()
    assert rel < 1e-6  # FP32 accumulation only, no BF16 output rounding


@pytest.mark.parametrize("size", [2, 4, 16, 32, 128])
@pytest.mark.parametrize("random_signs", [True, False])
@pytest.mark.parametrize("transpose", [False, True])
def test_rht_operand_of_any_size_equals_transform_then_reference_quantizer(size, random_signs, transpose):
    """The fused route (RHT16 in the kernel, other sizes transformed first) gives the bits of the plain pipeline:
    pad, RHT to BF16, then the reference NVFP4 quantizer; codes, scales and SR bits, packed or as GEMM values."""
    g = torch.Generator().manual_seed(size)
    t = torch.randn(24, 70, generator=g) * torch.logspace(-3, 3, 70)  # K = 70: padded to the transform size
    t[3] = 0.0
    cfg = OperandConfig("nvfp4", (1, 16), "stochastic", hadamard=size, random_signs=random_signs)
    pad = -t.shape[1] % size
    signs = None if random_signs else torch.ones(size)
    h = random_hadamard_transform(torch.nn.functional.pad(t, (0, pad)), size=size, signs=signs)
    ref = quantize_nvfp4(h, (1, 16), True, 7, offset=99, backend="reference")
    source = t.t().contiguous() if transpose else t
    for keep_packed in (False, True):
        for backend in ("auto", "reference"):
            got = quantize_operand(
                source, cfg, seed=7, offset=99, backend=backend, transpose=transpose, keep_packed=keep_packed
            )
            assert got.cols == t.shape[1] + pad
            assert torch.equal(got.values(), ref.scaled_values(torch.bfloat16, padded=True)[:, : got.cols])
            assert torch.equal(got.decode_scale, ref.decode_scale)
            if keep_packed:
                assert torch.equal(got.data.packed, ref.packed) and torch.equal(got.data.scales, ref.scales)


def test_rht_cancels_in_wgrad_in_exact_arithmetic():
    """Quantization off, RHT on: dW equals the plain dW exactly (values chosen so every step is exact)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (64, 32), generator=g).float()
    dy = torch.randint(-2, 3, (64, 24), generator=g).float()
    rht = OperandConfig("bf16", (1, 1), hadamard=16)
    plain = OperandConfig("bf16", (1, 1))
    a = quantize_operand(dy.t().contiguous(), rht)
    b = quantize_operand(x.t().contiguous(), rht)
    assert not torch.equal(a.values().float(), dy.t())  # the transform did change the operands
    with_rht = emulated_gemm(a, b, torch.float32, exact=True)
    without = emulated_gemm(
        quantize_operand(dy.t().contiguous(), plain),
        quantize_operand(x.t().contiguous(), plain),
        torch.float32,
        exact=True,
    )
    assert torch.equal(with_rht, without)
    assert torch.equal(without, dy.t() @ x)


def test_stochastic_rounding_gradients_are_unbiased():
    torch.manual_seed(0)
    x = torch.randn(64, 32)
    w = torch.randn(16, 32) * 0.1
    dy = torch.randn(64, 16)
    exact_dw = dy.double().t() @ x.double()
    exact_dx = dy.double() @ w.double()
    recipe = nvfp4.recipes.get("nvfp4").replace(exact_gemm=True)
    dws, dxs = [], []
    for seed in range(48):
        layer = Linear(32, 16, bias=False, recipe=recipe, seed=seed)
        with torch.no_grad():
            layer.weight.copy_(w)
        xi = x.clone().requires_grad_()
        layer(xi).backward(dy)
        dws.append(layer.weight.grad.double())
        dxs.append(xi.grad.double())

    def err(a, ref):
        return float((a - ref).norm() / ref.norm())

    # dW: SR'd operand is RHT(dyᵀ) (unbiased around its BF16 value); xᵀ is RN-quantized, so the mean
    # converges to RHT(dyᵀ) · Q(RHT(xᵀ))ᵀ, which itself is close to the exact gradient.
    cfg = recipe.wgrad_x
    xtq = _dequant_reference(x.t().contiguous(), cfg, 0, 0)
    target_dw = random_hadamard_transform(dy.t().contiguous()).double() @ xtq.t()
    single_dw, mean_dw = err(dws[0], target_dw), err(torch.stack(dws).mean(0), target_dw)
    assert mean_dw < single_dw / 3, (single_dw, mean_dw)
    assert err(torch.stack(dws).mean(0), exact_dw) < 0.15  # what remains is the RN error of x (~10%)
    # dx: the weight is RN-quantized (deterministic), so the mean converges to dy·Q(W), not dy·W.
    wq = quantize_nvfp4(w, (16, 16)).dequantize(torch.float64)
    target_dx = dy.double() @ wq
    single_dx, mean_dx = err(dxs[0], target_dx), err(torch.stack(dxs).mean(0), target_dx)
    assert mean_dx < single_dx / 3, (single_dx, mean_dx)
    assert err(torch.stack(dxs).mean(0), exact_dx) < 0.15  # the RN error of W (~10%) remains


def test_weight_quantized_once_per_step_and_invalidated_by_optimizer():
    layer = _layer("nvfp4")
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(16, 64)
    layer(x).sum().backward()
    first = layer._weight_operand("fprop_w")
    layer(x).sum().backward()  # second micro-batch: same cached weight object
    assert layer._weight_operand("fprop_w") is first
    opt.step()
    assert layer._weight_operand("fprop_w") is not first


def saved_activation_bytes(layer, x: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
    """What a forward saves for backward besides the weight and its cached quantized copy, as saved-tensor hooks
    (activation checkpointing, CPU offloading) see it."""
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    weights = {layer.weight.untyped_storage().data_ptr()}
    for operand in ("fprop_w", "dgrad_w"):
        weights.add(layer._weight_operand(operand).values().untyped_storage().data_ptr())
    activation = [t for t in saved if t.untyped_storage().data_ptr() not in weights and t.numel() > 1]
    return sum(t.nbytes for t in activation), activation


def test_saved_activation_is_quantized_and_smaller():
    layer = _layer("nvfp4", in_f=256, out_f=64)
    x = torch.randn(512, 256, requires_grad=True)
    nbytes, activation = saved_activation_bytes(layer, x)
    assert any(t.dtype == torch.uint8 for t in activation)  # the packed codes go through save_for_backward
    assert 0 < nbytes < x.numel() * 2 / 3  # ~4.5 bits per element instead of 16


def test_nonfinite_gradients_reach_the_optimizer_as_nonfinite():
    layer = _layer("nvfp4")
    x = torch.randn(32, 64, requires_grad=True)
    dy = torch.randn(32, 48)
    dy[3, 5] = float("nan")
    layer(x).backward(dy)
    assert not bool(torch.isfinite(layer.weight.grad).all())
    assert not bool(torch.isfinite(x.grad).all())
    x2 = torch.randn(32, 64)
    x2[0, 0] = float("inf")
    assert not bool(torch.isfinite(layer(x2)).all())


def test_precision_switch_changes_only_the_named_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64, bias=False))
    nvfp4.convert(model, nvfp4.recipes.get("nvfp4-all-fp4"))
    layer = model[0]
    x = torch.randn(32, 64)
    dy = torch.randn(32, 64)

    def run():
        layer.sr_calls = 0
        xi = x.clone().requires_grad_()
        layer.weight.grad = None
        y = layer(xi)
        y.backward(dy)
        return y.detach(), xi.grad, layer.weight.grad.clone()

    y_q, dx_q, dw_q = run()
    nvfp4.set_precision(model, ("forward",), "bf16")
    y_f, dx_f, dw_f = run()
    assert torch.equal(y_f, (x.bfloat16() @ layer.weight.detach().bfloat16().t()).float())
    assert not torch.equal(y_f, y_q)
    assert torch.equal(dx_f, dx_q) and torch.equal(dw_f, dw_q)  # backward untouched
    nvfp4.set_precision(model, ("forward",), "recipe")
    nvfp4.set_precision(model, ("backward",), "bf16")
    y_b, dx_b, dw_b = run()
    assert torch.equal(y_b, y_q)
    assert torch.equal(dx_b, (dy.bfloat16() @ layer.weight.detach().bfloat16()).float())
    assert not torch.equal(dw_b, dw_q)


@pytest.mark.parametrize("recipe", nvfp4.recipes.names())
def test_every_preset_trains_a_small_mlp(recipe):
    torch.manual_seed(0)
    blocks = nn.ModuleList(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)) for _ in range(4))
    model = nn.Module()
    model.blocks = blocks
    model.head = nn.Linear(32, 8)
    nvfp4.convert(model, recipe)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(64, 32)
    target = torch.randint(0, 8, (64,))
    losses = []
    for _ in range(12):
        h = x
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for b in model.blocks:
                h = h + b(h)
            loss = nn.functional.cross_entropy(model.head(h).float(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_gradient_accumulation_matches_one_big_batch_for_bf16_parts():
    """Two micro-batches accumulate into .grad; the cached weight is reused for both."""
    layer = _layer("nvfp4")
    x = torch.randn(64, 64)
    layer(x[:32]).sum().backward()
    layer(x[32:]).sum().backward()
    assert layer.sr_calls == 2
    assert torch.isfinite(layer.weight.grad).all()


def test_works_with_torch_compile():
    layer = _layer("nvfp4")
    compiled = torch.compile(layer, backend="eager")
    x = torch.randn(16, 64)
    layer.sr_calls = 0
    y_eager = layer(x)
    layer.sr_calls = 0
    y_compiled = compiled(x)
    assert torch.equal(y_eager, y_compiled)


def test_amax_reducer_is_used_for_weights():
    layer = _layer("nvfp4")
    seen = []

    def reducer(amax: torch.Tensor) -> torch.Tensor:
        seen.append(float(amax))
        return amax * 2  # as if another shard held a larger value

    layer.amax_reducer = reducer
    layer(torch.randn(8, 64))
    assert seen and seen[0] == float(layer.weight.detach().abs().max())
    q = layer._weight_operand("fprop_w")
    expected = global_decode_scale(torch.tensor(2 * seen[0], dtype=torch.float32))
    assert float(q.decode_scale) == float(expected)


def test_bad_input_shape_is_a_clear_error():
    layer = _layer("nvfp4")
    with pytest.raises(ValueError, match="expects 64"):
        layer(torch.randn(4, 63))


def test_sr_rank_changes_gradient_noise_but_not_the_weight():
    x = torch.randn(32, 64)
    dy = torch.randn(32, 48)
    grads, weights = [], []
    for rank in (0, 1):
        layer = _layer("nvfp4-sr-everywhere")
        layer.sr_rank = rank
        xi = x.clone().requires_grad_()
        layer(xi).backward(dy)
        grads.append(xi.grad)
        weights.append(layer._weight_operand("fprop_w").values())
    assert not torch.equal(grads[0], grads[1])  # SR on dy differs per rank
    assert torch.equal(weights[0], weights[1])  # every rank quantizes W identically


def test_invalidate_weight_cache_forces_requantization():
    layer = _layer("nvfp4")
    first = layer._weight_operand("fprop_w")
    assert layer._weight_operand("fprop_w") is first
    nvfp4.invalidate_weight_caches(nn.Sequential(layer))
    assert layer._weight_operand("fprop_w") is not first


@pytest.mark.parametrize("recipe", QUANTIZED_RECIPES)
def test_fast_backend_trains_bit_identically_to_the_reference(recipe):
    """The fused kernels (NVFP4 and MXFP4, RHT included) change no bit of a training step, odd sizes included."""
    params = []
    for backend in ("auto", "reference"):
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(40, 72), nn.GELU(), nn.Linear(72, 24))
        nvfp4.convert(model, recipe, seed=5, backend=backend, exclude=[], verbose=False)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        torch.manual_seed(4)
        for _ in range(3):
            x = torch.randn(2, 37, 40)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x).float().square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
        params.append([p.detach().clone() for p in model.parameters()])
    for fast, ref in zip(*params, strict=True):
        assert torch.equal(fast, ref)


def test_edges_behave_like_nn_linear():
    """Integer input raises (as nn.Linear does, instead of silently truncated integers); an empty batch gives an
    empty output and zero-size gradients, as nn.Linear does."""
    layer = nvfp4.Linear(32, 16, recipe="nvfp4")
    with pytest.raises(RuntimeError, match="floating-point input"):
        layer(torch.ones(2, 32, dtype=torch.long))
    with pytest.raises(RuntimeError):
        nn.Linear(32, 16)(torch.ones(2, 32, dtype=torch.long))
    x = torch.zeros(0, 32, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 16) == nn.Linear(32, 16)(x).shape
    y.sum().backward()
    assert x.grad.shape == (0, 32) and layer.weight.grad is not None and not layer.weight.grad.any()
