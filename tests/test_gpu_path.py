"""The properties the GPU path rests on, checked on the CPU (issue #12): no host-to-device copies in a step, a
stateless autograd function that torch.compile traces whole, checkpointing that replays SR exactly, and an
inference forward that computes no backward operand."""

from __future__ import annotations

import sys

import pytest
import torch

import nvfp4
from nvfp4.linear import _Plan
from nvfp4.model import GPT

VOCAB, SEQ = 128, 32
QUANTIZED_RECIPES = [name for name in nvfp4.recipes.names() if nvfp4.recipes.get(name).quantized]


def make_model(recipe: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return nvfp4.convert(GPT.from_preset("tiny", vocab_size=VOCAB, seq_len=SEQ), recipe, seed=seed)


def batches(n: int, batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (batch, SEQ), generator=g) for _ in range(n)]


def train(model, steps: list[torch.Tensor], forward=None) -> tuple[list[float], list[torch.Tensor]]:
    """AdamW steps as the trainer takes them; returns the losses and the final parameters."""
    forward = model if forward is None else forward
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for x in steps:
        _, loss = forward(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        nvfp4.invalidate_weight_caches(model)
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


# -- item 2: nothing small is copied to the compute device during a step ------------------------------------------


class _MoveRecorder:
    """Patches Tensor.to and torch.tensor/as_tensor: records every small CPU tensor sent to a device. On a GPU each
    such call is a blocking host-to-device copy (the host cannot run ahead); on the CPU it is a no-op, which is why
    it has to be caught by recording the request, not by timing. The CPU backend (kernels/cpu.py) is exempt: it runs
    on the CPU only, where its `.to("cpu")` calls are no-ops by construction."""

    SMALL = 4096
    EXEMPT = ("nvfp4/kernels/cpu.py",)

    def __init__(self, monkeypatch) -> None:
        self.moves: list[str] = []
        to, tensor, as_tensor = torch.Tensor.to, torch.tensor, torch.as_tensor
        recorder = self

        def patched_to(t, *args, **kwargs):
            target = kwargs.get("device")
            for a in args:
                if isinstance(a, torch.device | str) or (isinstance(a, torch.Tensor) and target is None):
                    target = a
            if target is not None and t.device.type == "cpu" and t.numel() <= recorder.SMALL:
                recorder.record(f"Tensor.to of a {tuple(t.shape)} tensor")
            return to(t, *args, **kwargs)

        def creating(fn, name):
            def patched(*args, **kwargs):
                if kwargs.get("device") is not None:
                    recorder.record(f"{name}(..., device=...)")
                return fn(*args, **kwargs)

            return patched

        monkeypatch.setattr(torch.Tensor, "to", patched_to)
        monkeypatch.setattr(torch, "tensor", creating(tensor, "torch.tensor"))
        monkeypatch.setattr(torch, "as_tensor", creating(as_tensor, "torch.as_tensor"))

    def record(self, what: str) -> None:
        caller = sys._getframe(2).f_code.co_filename.replace("\\", "/")
        if not caller.endswith(self.EXEMPT):
            self.moves.append(f"{what} in {caller.rsplit('/src/', 1)[-1]}:{sys._getframe(2).f_lineno}")


@pytest.mark.parametrize("recipe", QUANTIZED_RECIPES)
def test_training_step_copies_no_small_tensor_to_the_device(monkeypatch, recipe):
    model = make_model(recipe)
    steps = batches(2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        nvfp4.invalidate_weight_caches(model)

    step(steps[0])  # warm-up: per-device constants (RHT signs, tables) are made here, once
    recorder = _MoveRecorder(monkeypatch)
    step(steps[1])
    assert recorder.moves == [], f"{recipe}: {sorted(set(recorder.moves))}"


def test_the_recorder_catches_a_constant_moved_per_call(monkeypatch):
    """The check above can fail: the pre-fix pattern (a module constant .to(device) in the hot path) is recorded."""
    constant = torch.tensor(2688.0)
    recorder = _MoveRecorder(monkeypatch)
    torch.ones(3) / constant.to(torch.device("cpu"))
    assert recorder.moves


# -- item 5: inference quantizes the Fprop operands only -----------------------------------------------------------


def _record_operands(monkeypatch) -> list[str]:
    seen: list[str] = []
    quantize = _Plan.quantize

    def recording(self, t2d, operand, *args, **kwargs):
        seen.append(operand)
        return quantize(self, t2d, operand, *args, **kwargs)

    monkeypatch.setattr(_Plan, "quantize", recording)
    return seen


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_inference_computes_no_backward_operand(monkeypatch, mode):
    layer = nvfp4.Linear(64, 32, recipe="nvfp4")
    x = torch.randn(8, 64)
    with torch.no_grad():
        expected = layer(x)  # warm the weight cache
    seen = _record_operands(monkeypatch)
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        got = layer(x)
    assert seen == ["fprop_x"]  # the weight comes from the cache; no wgrad_x (the transposed RHT operand)
    assert torch.equal(got, expected)


def test_training_forward_still_quantizes_the_saved_operand(monkeypatch):
    layer = nvfp4.Linear(64, 32, recipe="nvfp4")
    x = torch.randn(8, 64, requires_grad=True)
    seen = _record_operands(monkeypatch)
    y = layer(x)
    assert "wgrad_x" in seen
    y.sum().backward()
    assert {"dgrad_dy", "wgrad_dy"} <= set(seen)


def test_inference_output_equals_the_training_forward():
    layer = nvfp4.Linear(64, 32, recipe="nvfp4")
    x = torch.randn(8, 64)
    layer.sr_calls = 0
    train_out = layer(x.clone().requires_grad_()).detach()
    layer.sr_calls = 0
    with torch.no_grad():
        assert torch.equal(layer(x), train_out)


# -- item 4: activation checkpointing follows the same trajectory --------------------------------------------------


@pytest.mark.parametrize("recipe", ["nvfp4", "nvfp4-sr-everywhere"])
def test_activation_checkpointing_follows_the_same_trajectory(recipe):
    steps = batches(3)
    plain_losses, plain_params = train(make_model(recipe), steps)
    model = make_model(recipe)
    model.activation_checkpointing = True
    ckpt_losses, ckpt_params = train(model, steps)
    assert ckpt_losses == plain_losses
    assert all(torch.equal(a, b) for a, b in zip(ckpt_params, plain_params, strict=True))


def test_checkpointing_never_reads_a_counter_on_the_host(monkeypatch):
    """The checkpoint context saves and replays the SR counters as tensors: reading them as ints (``sr_calls``)
    would sync with a GPU once per block per step."""
    model = make_model("nvfp4")
    model.activation_checkpointing = True

    def no_host_read(self):
        raise AssertionError("an SR counter was read on the host during a step")

    monkeypatch.setattr(nvfp4.Linear, "sr_calls", property(no_host_read, nvfp4.Linear.sr_calls.fset))
    losses, _ = train(model, batches(2))
    assert all(map(torch.isfinite, map(torch.tensor, losses)))


def test_a_device_counter_gives_a_device_offset():
    """On a GPU the SR offset is a 0-d tensor on the counter's device (read by the kernel, never by the host; the
    meta device stands in for a GPU here: any host read of it would raise); on the CPU it is the int itself."""
    from nvfp4.kernels import ops

    stream = (3 << 48) | 4
    offset = ops.sr_offset(stream, torch.tensor(5, device="meta"))
    assert isinstance(offset, torch.Tensor) and offset.device.type == "meta" and offset.dtype == torch.int64
    for base, call in ((stream, 5), (stream, (1 << 62) + 3), ((1 << 64) - 2, 7)):  # wrapping past 2^63 and 2^64
        want = ops.sr_offset(base, torch.tensor(call))  # the host int
        got = ops.device_offset(base, torch.tensor(call))  # the device expression, evaluated on the CPU
        assert int(got) & ((1 << 64) - 1) == want


def test_checkpointing_without_the_sr_context_departs():
    """Why the context exists: without it the recompute advances the SR counters again and the run departs."""
    steps = batches(2)
    _, plain_params = train(make_model("nvfp4"), steps)
    model = make_model("nvfp4")
    model.activation_checkpointing = True
    model.checkpoint_context = None
    _, params = train(model, steps)
    assert not all(torch.equal(a, b) for a, b in zip(params, plain_params, strict=True))


# -- item 4: torch.compile(fullgraph=True) ------------------------------------------------------------------------


def _compiled_matches_eager(recipe: str, backend: str) -> None:
    steps = batches(3)
    eager_losses, eager_params = train(make_model(recipe), steps)
    model = make_model(recipe)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    losses, params = train(model, steps, forward=compiled)
    assert losses == eager_losses
    assert all(torch.equal(a, b) for a, b in zip(params, eager_params, strict=True))


def test_compile_fullgraph_trains_bit_identical_to_eager():
    """One graph (fullgraph=True fails on any break), no recompile across steps (the SR counter is a tensor), and
    the same bits as eager (AOTAutograd traces the same ops; the kernels are custom ops)."""
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        _compiled_matches_eager("nvfp4", "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["mxfp4", "fp8", "nvfp4-rht-everywhere", "nvfp4-sr-everywhere", "nvfp4-no-2d"])
def test_compile_fullgraph_other_recipes(recipe):
    _compiled_matches_eager(recipe, "aot_eager")


@pytest.mark.slow
def test_compile_inductor_trains_close_to_eager():
    """Inductor fuses the unquantized ops (norms, activations), so only closeness is expected there."""
    steps = batches(3)
    eager_losses, _ = train(make_model("nvfp4"), steps)
    model = make_model("nvfp4")
    torch._dynamo.reset()
    losses, _ = train(model, steps, forward=torch.compile(model, fullgraph=True))
    assert losses == pytest.approx(eager_losses, rel=2e-2)
