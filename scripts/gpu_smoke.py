"""GPU smoke checks, one per argument, each printing one ``SUMMARY:`` line (scripts/gpu_checks.sh collects them).

    PYTHONPATH=src python scripts/gpu_smoke.py operands     # every operand of every recipe: Triton == reference
    PYTHONPATH=src python scripts/gpu_smoke.py layer        # nvfp4.Linear fwd/bwd on the GPU vs the CPU emulation
    PYTHONPATH=src python scripts/gpu_smoke.py sync         # a training step under set_sync_debug_mode("error")
    PYTHONPATH=src python scripts/gpu_smoke.py compile      # torch.compile(fullgraph=True) vs eager on the GPU
    PYTHONPATH=src python scripts/gpu_smoke.py graphs       # a layer step captured in a CUDA graph, replayed

Exit status: 0 all good, 1 a check failed, 2 no CUDA device (nothing was checked).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time

import torch

import nvfp4
from nvfp4.linear import quantize_operand
from nvfp4.model import GPT
from nvfp4.recipe import OPERANDS


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    return torch.where(torch.isnan(t), torch.zeros_like(t), t).view(torch.uint8) if t.is_floating_point() else t


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


def check_operands() -> int:
    """Every quantized operand of every recipe, plain and transposed, odd shapes: the fast backend's GEMM values
    and tensor scale equal the reference's, bit for bit, on the GPU."""
    torch.manual_seed(0)
    inputs = {"random": torch.randn(272, 200, device="cuda"), "odd": torch.randn(33, 47, device="cuda") * 1e3}
    inputs["with_nan"] = inputs["random"].clone()
    inputs["with_nan"][5, 7] = float("nan")
    checked, bad = 0, []
    for name in nvfp4.recipes.names():
        recipe = nvfp4.recipes.get(name)
        for operand in OPERANDS:
            cfg = recipe.operand(operand)
            if not cfg.quantized:
                continue
            for kind, x in inputs.items():
                for transpose in (False, True):
                    for dtype in (torch.float32, torch.bfloat16):
                        args = dict(seed=7, offset=99, transpose=transpose)
                        got = quantize_operand(x.to(dtype), cfg, backend="auto", **args)
                        want = quantize_operand(x.to(dtype), cfg, backend="reference", **args)
                        checked += 1
                        if not (_same(got.values(), want.values()) and _same(got.decode_scale, want.decode_scale)):
                            bad.append(f"{name}/{operand}/{kind}/{'T' if transpose else 'N'}/{dtype}")
    print(f"SUMMARY: operands {checked - len(bad)}/{checked} bit-exact" + (f"; first bad: {bad[:3]}" if bad else ""))
    return 1 if bad else 0


def check_layer() -> int:
    """The layer on the GPU vs the same layer on the CPU (FP32 GEMMs on both): operands are bit-identical, so only
    the GEMMs' accumulation order differs."""
    worst = 0.0
    for name in ("nvfp4", "mxfp4", "fp8", "nvfp4-rht-everywhere"):
        recipe = dataclasses.replace(nvfp4.recipes.get(name), exact_gemm=True)
        torch.manual_seed(0)
        cpu = nvfp4.Linear(256, 192, bias=False, recipe=recipe, seed=3)
        gpu = nvfp4.Linear(256, 192, bias=False, recipe=recipe, seed=3, device="cuda")
        gpu.load_state_dict(cpu.state_dict())
        x = torch.randn(512, 256)
        dy = torch.randn(512, 192)
        results = []
        for layer, device in ((cpu, "cpu"), (gpu, "cuda")):
            xi = x.to(device).requires_grad_()
            y = layer(xi)
            y.backward(dy.to(device))
            results.append((y.detach().cpu(), xi.grad.cpu(), layer.weight.grad.cpu()))
        for a, b in zip(*results, strict=True):
            worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)))
    ok = worst < 1e-3
    print(f"SUMMARY: layer GPU vs CPU max relative difference {worst:.2e} ({'ok' if ok else 'TOO LARGE'})")
    return 0 if ok else 1


def _tiny(recipe: str, device: str = "cuda") -> GPT:
    torch.manual_seed(0)
    return nvfp4.convert(GPT.from_preset("tiny", seq_len=128).to(device), recipe)


def check_sync() -> int:
    """No host<->device synchronisation in a training step (forward, backward, clip, fused AdamW)."""
    failures = []
    for name in ("nvfp4", "mxfp4", "fp8"):
        model = _tiny(name)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        x = torch.randint(0, model.config.vocab_size, (4, 128), device="cuda")

        def step(model=model, opt=opt, x=x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = model(x, x)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            nvfp4.invalidate_weight_caches(model)

        step()  # warm-up: compilation, per-device constants
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        except RuntimeError as e:
            failures.append(f"{name}: {str(e).splitlines()[0][:120]}")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    print(f"SUMMARY: sync-free step {'ok' if not failures else 'SYNCS: ' + '; '.join(failures)}")
    return 1 if failures else 0


def check_compile() -> int:
    """torch.compile(fullgraph=True) of a converted GPT on the GPU: trains, close to eager, compile time."""
    x = torch.randint(0, 8192, (4, 128), device="cuda")
    losses = {}
    for mode in ("eager", "compiled"):
        model = _tiny("nvfp4")
        forward = torch.compile(model, fullgraph=True) if mode == "compiled" else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        start = time.perf_counter()
        run = []
        for _ in range(3):
            _, loss = forward(x, x)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            nvfp4.invalidate_weight_caches(model)
            run.append(float(loss))
        losses[mode] = (run, time.perf_counter() - start)
    diff = max(abs(a - b) / abs(b) for a, b in zip(losses["compiled"][0], losses["eager"][0], strict=True))
    ok = diff < 2e-2
    print(
        f"SUMMARY: compile fullgraph ok, 3 steps {losses['compiled'][1]:.1f} s (eager {losses['eager'][1]:.1f} s), "
        f"max loss rel diff {diff:.1e} ({'ok' if ok else 'TOO LARGE'})"
    )
    return 0 if ok else 1


def check_graphs() -> int:
    """An nvfp4.Linear fwd+bwd captured in a CUDA graph and replayed: the SR counter lives on the GPU and the kernels
    read the offset from it, so each replay draws the next call's bits, equal to an eager step at that call."""
    torch.manual_seed(0)
    layer = nvfp4.Linear(512, 512, recipe="nvfp4").cuda()
    ref = copy.deepcopy(layer)
    x = torch.randn(256, 512, device="cuda", requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    dy = torch.randn(256, 512, device="cuda")

    def step(lin, inp):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = lin(inp)
        y.backward(dy)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graph requires
        for _ in range(2):
            step(layer, x)
    torch.cuda.current_stream().wait_stream(side)
    x.grad = layer.weight.grad = layer.bias.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(layer, x)
    failures, grads = [], []
    for replay in range(3):
        graph.replay()
        torch.cuda.synchronize()
        x_ref.grad = ref.weight.grad = ref.bias.grad = None
        ref.sr_calls = 2 + replay  # the call this replay made: 2 warm-up calls, then one per replay
        step(ref, x_ref)
        if not (_same(x.grad, x_ref.grad) and _same(layer.weight.grad, ref.weight.grad)):
            failures.append(f"replay {replay} differs from eager call {2 + replay}")
        grads.append(x.grad.clone())
    if _same(grads[0], grads[1]):
        failures.append("replays drew the same SR bits (the counter did not advance)")
    verdict = "ok: bit-exact with eager, SR advancing" if not failures else "; ".join(failures)
    print(f"SUMMARY: cuda graph replay {verdict}")
    return 1 if failures else 0


CHECKS = {
    "operands": check_operands,
    "layer": check_layer,
    "sync": check_sync,
    "compile": check_compile,
    "graphs": check_graphs,
}


def main(argv: list[str]) -> int:
    if not torch.cuda.is_available():
        print("SUMMARY: no CUDA device: nothing checked")
        return 2
    names = argv or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")
        return 2
    return max(CHECKS[n]() for n in names)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
